"""The open pixel and click redirect at the physical limit of the server stack.

1. A fresh database with 400,000 customers subscribed by email, an email campaign to all of
   them made with ``campaign_create`` and launched with ``campaign_launch``; its deliveries are
   marked sent through the one transitions path (``deliveries_transition``), so every delivery
   has a signed open pixel and a signed click link to a stored ``Link``.
2. The limit: a minimal ASGI application answering the same 43-byte GIF, on the same uvicorn
   configuration (2 workers, no access log, lifespan off) as Switchboard.
3. The load: ``wrk`` (Debian's package: compiled, so the client does not take the CPU being
   measured), 2 threads and 32 connections, with a Lua script that sends every request to
   the next distinct token of a list, spread across the threads; its ``done`` hook prints
   the figures as JSON, including how many requests each thread issued.
4. Phases of ``--seconds`` each against Switchboard: first opens (distinct deliveries),
   repeat opens (the same tokens again), first clicks, and pixels whose token fails
   verification; the minimal application gets the first-open token list.
5. After each phase the queue is drained and checked from the database: every answered
   first open (click) counted exactly once: issued ≥ counted ≥ answered, the counters equal
   the deliveries' own stamps, and repeats changed nothing.

Target: first opens and first clicks each at least 0.25× the minimal application's rate,
0 errors, p99 at most 4× the minimal application's, every count exact. The ratio printed is
the lower of the two rates over the minimal application's.

    python -m config.localdb --throwaway -- python bench/tracking.py          # or make bench
    ... bench/tracking.py --customers 50000 --seconds 5                      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import common  # noqa: E402

NAME = "tracking"
TARGET_RATIO = 0.25
TARGET_P99_FACTOR = 4.0
THREADS, CONNECTIONS = 2, 32

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_MINIMAL_HEADERS = [
    (b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL)).encode()),
    (b"cache-control", b"max-age=0, no-cache, no-store, must-revalidate, private"),
]


async def minimal_app(scope, receive, send):
    """The physical limit: answer every request with the GIF and do nothing else."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _MINIMAL_HEADERS})
    await send({"type": "http.response.body", "body": PIXEL})


# Every request goes to the next token of this thread's share of the list; done() prints JSON.
LUA = r"""
local paths = {}
local threads = {}
local count = 0

function setup(thread)
  thread:set("id", count)
  thread:set("nthreads", 0)
  table.insert(threads, thread)
  count = count + 1
end

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  issued = 0
end

function request()
  local index = (issued * nthreads + id) % #paths + 1
  issued = issued + 1
  return wrk.format("GET", paths[index])
end

function done(summary, latency, requests)
  local issued = {}
  for _, thread in ipairs(threads) do issued[#issued + 1] = thread:get("issued") end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d, "issued": [%s]}\n',
    summary.requests, summary.duration / 1e6, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(issued, ", ")))
end
"""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: 'apt-get install wrk' (make bench installs it where it can)")
    return found


def load(base: str, conninfo: str, paths: list[str], seconds: float, label: str, workdir: Path) -> dict:
    """Run wrk against ``paths`` for ``seconds``; its figures plus the server's CPU use."""
    path_file, script = workdir / f"{label}.paths", workdir / "spread.lua"
    path_file.write_text("\n".join(paths) + "\n")
    script.write_text(LUA.replace('thread:set("nthreads", 0)', f'thread:set("nthreads", {THREADS})'))
    # wrk runs only while measured; its CPU is in "other", with the kernel's.
    meter = common.CpuMeter(conninfo)
    meter.start()
    output = subprocess.run(
        [wrk_binary(), f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{round(seconds)}s", "--timeout", "10s", "-s", str(script),
         base + "/", "--", str(path_file)],
        capture_output=True, text=True, check=True,
    ).stdout
    cores = meter.stop()
    figures = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    figures["rate"] = round(figures["requests"] / figures["seconds"])
    figures["errors"] = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    figures["issued_total"] = sum(figures["issued"])
    figures["distinct"] = len(used(paths, figures))
    figures["cores"] = cores
    figures["server_cpu_us_per_request"] = round(meter.seconds["server"] * 1e6 / max(1, figures["requests"]), 1)
    figures["postgres_cpu_us_per_request"] = round(meter.seconds["postgres"] * 1e6 / max(1, figures["requests"]), 1)
    common.log(
        f"  {label}: {figures['requests']:,} answered in {figures['seconds']:.1f} s = {figures['rate']:,}/s; "
        f"{figures['errors']} errors; latency p50 {figures['p50_us'] / 1000:.2f} ms, p99 {figures['p99_us'] / 1000:.2f} ms, "
        f"max {figures['max_us'] / 1000:.1f} ms; CPU per request: server {figures['server_cpu_us_per_request']} µs, "
        f"PostgreSQL {figures['postgres_cpu_us_per_request']} µs; cores busy {cores}"
    )
    return figures


# --- The data --------------------------------------------------------------------------------------


def sent_campaign(conninfo: str, customers: int) -> tuple[int, list[int], int]:
    """An email campaign to every customer, launched and marked sent; (campaign, deliveries, link)."""
    from django.db import transaction
    from django.utils import timezone

    from bench import realtime
    from campaigns import links
    from campaigns.models import DeliveryStatus
    from campaigns.transitions import deliveries_transition

    realtime.generate(conninfo, customers)
    started = time.perf_counter()
    campaign, _ = realtime.launched_campaign(conninfo)
    with transaction.atomic():
        now = timezone.now()
        sent = deliveries_transition(
            to=DeliveryStatus.SENT, only_from=[DeliveryStatus.PLANNED], now=now,
            source="SELECT id FROM campaigns_delivery WHERE campaign_id = %(campaign)s",
            params={"campaign": campaign.pk}, sets={"sent_at": "%(now)s", "provider": "'sandbox'"},
        ).changed
    link_id = links.links_store({"https://shop.example.com/sale"})["https://shop.example.com/sale"]
    ids = realtime.sent_ids(conninfo, campaign.pk)
    common.log(f"campaign {campaign.pk}: {sent:,} deliveries launched and marked sent in "
               f"{time.perf_counter() - started:.1f} s; link {link_id}")
    return campaign.pk, ids, link_id


def tokens(delivery_ids: list[int], link_id: int) -> tuple[list[str], list[str], list[str]]:
    """Open-pixel paths, click paths and pixel paths whose signature fails, one per delivery."""
    from campaigns import links

    opens = [urlsplit(links.open_url(pk)).path for pk in delivery_ids]
    clicks = [urlsplit(links.click_url(pk, link_id)).path for pk in delivery_ids]
    forged = [path[:-5] + ("A" if path[-5] != "A" else "B") + path[-4:] for path in opens]
    return opens, clicks, forged


def used(paths: list[str], run: dict) -> list[str]:
    """The paths a load sent requests to: thread t took t, t + threads, t + 2 × threads, …"""
    indexes = {(k * THREADS + t) % len(paths) for t, issued in enumerate(run["issued"]) for k in range(issued)}
    return [paths[i] for i in sorted(indexes)]


def counts(conninfo: str, campaign_id: int) -> dict:
    """What the dashboards show (the counters) and the deliveries' own stamps, after the queue drained."""
    from campaigns.queries import campaign_results

    deadline = time.monotonic() + 300
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM campaigns_engagementhit").fetchone()[0]:
            if time.monotonic() > deadline:
                raise SystemExit("the engagement queue did not drain within 5 minutes")
            time.sleep(0.2)
        opened, clicked = conn.execute(
            "SELECT count(opened_at), count(clicked_at) FROM campaigns_delivery WHERE campaign_id = %s", [campaign_id]
        ).fetchone()
        events = dict(conn.execute(
            "SELECT name, count(*) FROM customers_event WHERE name IN ('message.opened', 'message.clicked') GROUP BY 1"
        ).fetchall())
    totals = campaign_results([campaign_id])[campaign_id].totals
    return {
        "opened": opened, "clicked": clicked,
        "counter_opened": totals.get("opened", 0), "counter_clicked": totals.get("clicked", 0),
        "events_opened": events.get("message.opened", 0), "events_clicked": events.get("message.clicked", 0),
    }


def drained_after(conninfo: str, started: float) -> float:
    """Seconds from the end of a load until its last hit was applied."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM campaigns_engagementhit").fetchone()[0]:
            time.sleep(0.05)
    return time.monotonic() - started


def exact(label: str, before: dict, after: dict, kind: str, run: dict | None, allowed: int = 0) -> bool:
    """Every answered first hit counted once: issued ≥ counted ≥ answered; stamps, counters and
    timeline agree. For repeats (run is None) nothing may change but the ``allowed`` tokens
    issued and never answered before."""
    delta = after[kind] - before[kind]
    agree = (after[kind] == after[f"counter_{kind}"] == after[f"events_{kind}"])
    if run is None:
        ok = delta <= allowed and agree
        common.log(f"  {label}: {delta} new {kind} (at most {allowed}, the tokens issued as the first phase ended "
                   f"and never answered); stamps = counters = timeline: {agree}")
        return ok
    # When a load outran the token list it came round to tokens it had used: those repeats
    # are answered and rightly not counted.
    distinct, repeats = run["distinct"], run["issued_total"] - run["distinct"]
    bounds = distinct >= delta >= run["requests"] - repeats
    common.log(f"  {label}: {distinct:,} distinct tokens issued ≥ {delta:,} counted ≥ {run['requests']:,} answered"
               + (f" − {repeats:,} repeats" if repeats else "") + f": {bounds}; stamps {after[kind]:,} = counters "
               f"{after[f'counter_{kind}']:,} = timeline {after[f'events_{kind}']:,}: {agree}")
    return bounds and agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=400_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=common.DEFAULT_WORKERS)
    args = parser.parse_args()
    os.environ["QUIET_HOURS"] = "00:00-23:59:59.999999"
    os.environ.pop("REDIS_URL", None)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-tracking-"))
    with common.bench_database("switchboard_bench_tracking") as url:
        common.migrate(url)
        common.setup_django(url)
        campaign_id, delivery_ids, link_id = sent_campaign(url, args.customers)
        opens, clicks, forged = tokens(delivery_ids, link_id)
        common.log(f"{len(opens):,} signed open pixels and click links; wrk {THREADS} threads, {CONNECTIONS} connections, "
                   f"{args.seconds:.0f} s per phase; uvicorn with {args.workers} workers")

        common.log("\nminimal ASGI application (the limit):")
        with common.run_server(url, workers=args.workers, app="bench.tracking:minimal_app") as base:
            load(base, url, opens[:1000], 2, "warm-up", workdir)
            limit = load(base, url, opens, args.seconds, "minimal", workdir)

        common.log("\nSwitchboard (config.asgi:application):")
        runs, checks = {}, {}
        with common.run_server(url, workers=args.workers) as base:
            load(base, url, forged[:2000], 2, "warm-up", workdir)
            before = counts(url, campaign_id)
            runs["first_opens"] = load(base, url, opens, args.seconds, "first opens", workdir)
            runs["first_opens"]["applied_after_s"] = round(drained_after(url, time.monotonic()), 2)
            after = counts(url, campaign_id)
            checks["first_opens"] = exact("first opens", before, after, "opened", runs["first_opens"])

            runs["repeat_opens"] = load(base, url, used(opens, runs["first_opens"]), args.seconds, "repeat opens", workdir)
            repeat = counts(url, campaign_id)
            # A request wrk issued as the first phase ended may never have reached the server:
            # its token is still a first open.
            unanswered = runs["first_opens"]["issued_total"] - (after["opened"] - before["opened"])
            checks["repeat_opens"] = exact("repeat opens", after, repeat, "opened", None, allowed=unanswered)

            runs["first_clicks"] = load(base, url, clicks, args.seconds, "first clicks", workdir)
            runs["first_clicks"]["applied_after_s"] = round(drained_after(url, time.monotonic()), 2)
            clicked = counts(url, campaign_id)
            checks["first_clicks"] = exact("first clicks", repeat, clicked, "clicked", runs["first_clicks"])

            runs["forged_opens"] = load(base, url, forged, args.seconds, "forged pixel tokens", workdir)
            forged_after = counts(url, campaign_id)
            checks["forged_opens"] = forged_after == clicked
            common.log(f"  forged pixel tokens: nothing recorded: {checks['forged_opens']}")
    shutil.rmtree(workdir, ignore_errors=True)

    ratios = {name: runs[name]["rate"] / limit["rate"] for name in ("first_opens", "first_clicks")}
    ratio = min(ratios.values())
    p99_limit = TARGET_P99_FACTOR * limit["p99_us"]
    worst_p99 = max(run["p99_us"] for run in runs.values())
    errors = sum(run["errors"] for run in runs.values())
    met = ratio >= TARGET_RATIO and errors == 0 and worst_p99 <= p99_limit and all(checks.values())
    common.log(
        f"\nfirst opens {runs['first_opens']['rate']:,}/s and first clicks {runs['first_clicks']['rate']:,}/s "
        f"against the minimal application's {limit['rate']:,}/s: ratio {ratio:.3f} (target ≥ {TARGET_RATIO}); "
        f"repeats {runs['repeat_opens']['rate']:,}/s, forged tokens {runs['forged_opens']['rate']:,}/s; "
        f"worst p99 {worst_p99 / 1000:.2f} ms vs limit {p99_limit / 1000:.2f} ms (4× {limit['p99_us'] / 1000:.2f} ms); "
        f"{errors} errors; counts exact: {all(checks.values())}"
    )
    figures = {
        "limit": limit, **runs, "ratios": {k: round(v, 3) for k, v in ratios.items()}, "checks": checks,
    }
    common.report(
        NAME, figures, round(ratio, 3),
        f"first opens and clicks ≥ {TARGET_RATIO}× a minimal ASGI app, p99 ≤ {TARGET_P99_FACTOR:.0f}×, 0 errors, "
        "every count exact", met,
    )


if __name__ == "__main__":
    main()
