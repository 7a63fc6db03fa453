"""Live dashboards under load: 200 sockets on one campaign while opens arrive at 1,000 a second.

1. A fresh database with 50,000 customers subscribed to a newsletter by email (set-based
   INSERT … SELECT), a static segment of all of them, and an email campaign made with
   ``campaign_create``, launched with ``campaign_launch`` and dispatched through the
   sandbox provider, so every delivery is really sent and has a signed open pixel.
2. The real server: ``uvicorn config.asgi:application`` with 2 workers, its channel layer on
   Redis (``REDIS_URL``) and, with ``--layers redis,postgres``, again on channels-postgres.
3. 200 websocket clients (a separate process, the ``websockets`` library), each with a
   session of its own for a marketer and the page's Origin, on the campaign's dashboard.
   Every HTML frame is parsed for ``data-stat="opened">N · M<``. Like the page, a client
   reconnects when its socket drops; every drop is counted. The clients first sit 8 s
   with nothing happening: a quiet dashboard must stay connected too.
4. Open-pixel GETs for distinct deliveries at a steady 1,000/s for 20 s from an async HTTP
   client, aiohttp (see :func:`fire` for why not httpx), open loop: a slow server does not
   slow the schedule down. Every first open
   adds one, so once k pixel requests have returned the counter is at least base + k.
5. Latency of hit k at client c: arrival of the first frame on c showing N ≥ base + k,
   minus the time the k-th pixel response returned (0 when c already showed it).

Target: p95 ≤ 300 ms over all (hit, client) pairs at 1,000 hits/s with 200 clients, every
client ends on the final count, and no socket drops. The ratio printed is p95 / 300 ms
(≤ 1 is good). Before the run the pixel endpoint is profiled (time per request over HTTP,
PostgreSQL connections opened per request) and so is one dashboard render; during the run
the CPU time of each party and PostgreSQL's lock waits are recorded, so a missed target says
what ran out.

The opens go through the tracking route, which queues them and answers; the web processes'
drainers apply the queue. Beside the web server run ``--task-workers`` qcluster worker
processes (2 by default) on the broker REDIS_URL selects: with ``--layers redis`` (the
default) that is production's shape, Redis as channel layer and broker, two web processes
and two worker processes. The counts are read once the queue has drained.

    python -m config.localdb --throwaway -- python bench/realtime.py            # or make bench
    ... bench/realtime.py --clients 20 --rate 100 --seconds 5 --customers 5000  # a quick look
    ... bench/realtime.py --layers redis,postgres                              # both channel layers
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402

from bench import common  # noqa: E402

NAME = "realtime"
TARGET_P95_MS = 300.0
REDIS_URL = "redis://127.0.0.1:6379/0"
WARM_UP_HITS = 300
QUIET_SECONDS = 8.0  # longer than the 5 s a blocking channel-layer read may wait
PROFILE_HITS = 200
OPENED = re.compile(r'data-stat="opened">([\d,]+) · ([\d,]+)<')
CONTENT = {
    "subject": "The spring sale, {{ first_name|default:'friend' }}",
    "html": "<p>Hi {{ first_name }},</p><p>Up to 40% off this week.</p>"
            "<p><a href='https://shop.example.com/sale'>Shop the sale</a></p>",
    "text": "",
}


# --- The server, with its log kept aside ------------------------------------------------------------


@contextlib.contextmanager
def server(conninfo: str, workers: int, log_name: str):
    """``common.run_server`` with the server's stderr in a file: errors are summarised, not streamed."""
    path = Path(tempfile.gettempdir()) / f"switchboard-realtime-{log_name}.log"
    saved = os.dup(2)
    with open(path, "wb") as log:
        os.dup2(log.fileno(), 2)
        try:
            stack = contextlib.ExitStack()
            base = stack.enter_context(common.run_server(conninfo, workers=workers))
        finally:
            # The server (and the workers it spawns) keep the file; this process gets its stderr back.
            os.dup2(saved, 2)
            os.close(saved)
    with stack:
        yield base
    errors = server_errors(path)
    if errors:
        common.log(f"server log {path}: " + "; ".join(f"{count} × {line}" for line, count in errors.most_common(6)))
    else:
        common.log(f"server log {path}: no errors")


EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Disconnected|Timeout)\w*)(:.*)?$")


def server_errors(path: Path) -> collections.Counter:
    """Exceptions in a server log, by their last line (type and message, cut short)."""
    errors: collections.Counter = collections.Counter()
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        # A chained cause is followed by the exception it caused; count each incident once.
        chained = following.startswith(("The above exception", "During handling"))
        if (EXCEPTION_LINE.match(line) and not chained) or line.startswith("could not record"):
            line = re.sub(r"\d+", "N", line)
            errors[line if len(line) <= 120 else f"{line[:60]} … {line[-55:]}"] += 1
    return errors


# --- The data ---------------------------------------------------------------------------------------


def generate(conninfo: str, customers: int) -> None:
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO customers_customer (external_id, email, phone, first_name, last_name, locale, timezone,
                                            lifecycle_stage, attributes, created_at, updated_at)
            SELECT 'reader-' || i, 'reader' || i || '@example.com', '',
                   (ARRAY['Ada', 'Bo', 'Chen', 'Dara', 'Eli', 'Femi', 'Gus', 'Hana', 'Ivo', 'Jun'])[1 + i %% 10],
                   (ARRAY['Ng', 'Silva', 'Okafor', 'Martin', 'Kumar', 'Sato', 'Brown'])[1 + i %% 7],
                   'en', 'UTC', 'customer', '{}'::jsonb, now(), now()
            FROM generate_series(1, %(n)s) AS i
            """,
            {"n": customers},
        )
        topic = conn.execute(
            "INSERT INTO customers_topic (key, name, description, is_transactional, created_at) "
            "VALUES ('newsletter', 'Newsletter', '', false, now()) RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO customers_subscription (customer_id, topic_id, channel, subscribed, source, updated_at) "
            "SELECT id, %s, 'email', true, 'import', now() FROM customers_customer",
            [topic],
        )
        conn.execute("VACUUM ANALYZE")
    seconds = time.perf_counter() - started
    common.log(f"{customers:,} customers subscribed by email, written set-based in {seconds:.1f} s")


def launched_campaign(conninfo: str):
    """An email campaign to every customer (a static segment of them all), launched through
    the services; the campaign and the seconds the launch took."""
    from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
    from campaigns.services.lifecycle import campaign_launch
    from segments.services import segment_create

    segment = segment_create(name="Everyone", static=True, actor="bench")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        size = conn.execute(
            "INSERT INTO segments_segmentmembership (segment_id, customer_id, entered_at) "
            "SELECT %s, id, now() FROM customers_customer", [segment.pk],
        ).rowcount
        conn.execute("UPDATE segments_segment SET member_count = %s WHERE id = %s", [size, segment.pk])
    campaign = campaign_create(
        data=CampaignInput(
            name="Spring sale", topic="newsletter", channels=["email"], segment_ids=[segment.pk], strategy="all",
            variants=[VariantInput(key="A", content={"email": CONTENT})],
        ),
        actor="bench",
    )
    started = time.perf_counter()
    campaign_launch(campaign=campaign, actor="bench")
    return campaign, time.perf_counter() - started


def sent_ids(conninfo: str, campaign_id: int) -> list[int]:
    """The campaign's sent deliveries, in id order; the tables analysed for what comes next."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(
            "SELECT id FROM campaigns_delivery WHERE campaign_id = %s AND status = 'sent' ORDER BY id", [campaign_id]
        )]
        conn.execute("VACUUM ANALYZE")
    return ids


def sent_campaign(conninfo: str) -> tuple[int, list[int]]:
    """An email campaign to everyone, launched and dispatched through the sandbox; its sent delivery ids."""
    from campaigns import dispatch

    campaign, launched = launched_campaign(conninfo)
    started = time.perf_counter()
    totals = dispatch.dispatch(budget_seconds=900)
    ids = sent_ids(conninfo, campaign.pk)
    common.log(f"campaign {campaign.pk}: launched in {launched:.1f} s, {len(ids):,} emails sent through the sandbox "
               f"in {time.perf_counter() - started:.1f} s ({totals})")
    return campaign.pk, ids


def pixel_paths(delivery_ids: list[int]) -> list[str]:
    from campaigns import links

    return [urlsplit(links.open_url(pk)).path for pk in delivery_ids]


def marketer_sessions(count: int) -> list[str]:
    """A marketer and ``count`` signed-in sessions of theirs (one per dashboard tab)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore

    from customers.roles import MARKETER

    user = User.objects.create_user("bench-marketer", "marketer@example.com", "correct horse battery staple")
    user.groups.add(Group.objects.get(name=MARKETER))
    keys = []
    for _ in range(count):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


def opened_count(campaign_id: int) -> int:
    """What the dashboard's tile shows: the counters' total of first opens."""
    from campaigns.queries import campaign_results

    return campaign_results([campaign_id])[campaign_id].totals.get("opened", 0)


def opened_deliveries(conninfo: str, campaign_id: int) -> int:
    """The same figure counted from the deliveries themselves, to check the counters against."""
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT count(*) FROM campaigns_delivery WHERE campaign_id = %s AND opened_at IS NOT NULL", [campaign_id]
        ).fetchone()[0]


# --- The pixel endpoint, request by request ------------------------------------------------------------


def pg_sessions(conninfo: str) -> int:
    """Connections ever opened to this database (PostgreSQL ≥ 14)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def profile_pixel(conninfo: str, base: str, paths: list[str]) -> dict:
    """Time per open, one at a time over HTTP, and PostgreSQL connections opened per request."""
    before = pg_sessions(conninfo)
    latencies = []
    with httpx.Client(base_url=base) as http:
        for path in paths:
            sent = time.perf_counter()
            assert http.get(path).status_code == 200
            latencies.append((time.perf_counter() - sent) * 1000)
    connections = (pg_sessions(conninfo) - before) / len(paths)
    profile = {
        "http_sequential_p50_ms": round(common.percentile(latencies, 0.5), 2),
        "http_sequential_p95_ms": round(common.percentile(latencies, 0.95), 2),
        "pg_connections_per_open": round(connections, 2),
    }
    common.log(f"pixel endpoint, one first open at a time over HTTP: p50 {profile['http_sequential_p50_ms']} ms, "
               f"p95 {profile['http_sequential_p95_ms']} ms; {connections:.2f} PostgreSQL connections opened per "
               "request (bench/tracking.py measures its throughput)")
    return profile


def profile_render(campaign_id: int) -> dict:
    """One dashboard update as the consumers build it (queries, plotly figure, templates)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dashboards import live

    live.campaign_update(campaign_id)
    with CaptureQueriesContext(connection) as captured:
        live.campaign_update(campaign_id)
    started = time.perf_counter()
    for _ in range(20):
        live.campaign_update(campaign_id)
    ms = (time.perf_counter() - started) * 1000 / 20
    common.log(f"dashboard update render: {ms:.1f} ms and {len(captured.captured_queries)} queries each "
               f"(one per group per worker per push interval is shared by every socket)")
    return {"render_ms": round(ms, 1), "render_queries": len(captured.captured_queries)}


# --- The websocket clients (a process of their own) ----------------------------------------------------


def clients_main(pipe, ws_url: str, origin: str, sessions: list[str]) -> None:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_clients(pipe, ws_url, origin, sessions))


async def _clients(pipe, ws_url: str, origin: str, sessions: list[str]) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    count = len(sessions)
    arrivals: list[list[tuple[float, int]]] = [[] for _ in range(count)]
    latest = [-1] * count
    json_frames = [0] * count
    sizes = {"html": 0, "json": 0}
    problems: list[str] = []
    changed = asyncio.Event()

    drops = [0] * count

    async def client(index: int) -> None:
        """One dashboard tab: like htmx's websocket extension, it reconnects after a drop."""
        while True:
            try:
                async with connect(
                    ws_url, origin=origin, additional_headers={"Cookie": f"sessionid={sessions[index]}"},
                    max_size=None, open_timeout=60, ping_interval=None, compression=None,
                ) as socket:
                    async for message in socket:
                        now = time.monotonic()
                        if message[:1] == "{":
                            json_frames[index] += 1
                            sizes["json"] = len(message)
                            continue
                        sizes["html"] = len(message)
                        match = OPENED.search(message)
                        if match is None:
                            problems.append(f"client {index}: a frame without the opened tile")
                            continue
                        opened = int(match.group(1).replace(",", ""))
                        arrivals[index].append((now, opened))
                        if opened > latest[index]:
                            latest[index] = opened
                            changed.set()
                    code = socket.close_code
                problems.append(f"client {index}: the server closed the socket ({code})")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reported, not raised: a dropped client is a finding
                problems.append(f"client {index}: {type(exc).__name__}: {str(exc)[:120]}")
            drops[index] += 1
            changed.set()
            await asyncio.sleep(0.5)

    async def wait_for(value: int, timeout: float) -> int:
        """Until every client shows at least ``value`` (or the timeout); how many do."""
        deadline = time.monotonic() + timeout
        while True:
            behind = sum(1 for n in latest if n < value)
            if not behind or time.monotonic() > deadline:
                return count - behind
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pass

    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(client(index)))
        if index % 20 == 19:
            await asyncio.sleep(0.05)  # a page load's pace, not a SYN flood
    connected = await wait_for(0, 60)
    pipe.send(("ready", connected, problems[:5]))
    while True:
        command, value, timeout = await loop.run_in_executor(None, pipe.recv)
        if command == "drops":
            pipe.send(("drops", sum(1 for n in drops if n), problems[:3]))
        elif command == "sync":
            pipe.send(("synced", await wait_for(value, timeout)))
        elif command == "final":
            caught_up = await wait_for(value, timeout)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pipe.send(("result", {"arrivals": arrivals, "json_frames": json_frames, "caught_up": caught_up,
                                  "latest": latest, "problems": problems, "sizes": sizes, "drops": sum(drops)}))
            return


class Clients:
    def __init__(self, ws_url: str, origin: str, sessions: list[str]):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=clients_main, args=(child, ws_url, origin, sessions), daemon=True)
        self.process.start()

    def receive(self, timeout: float):
        if not self.pipe.poll(timeout):
            raise SystemExit("the websocket clients did not answer in time")
        return self.pipe.recv()

    def close(self) -> None:
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


# --- The hits ------------------------------------------------------------------------------------------


async def fire(base: str, paths: list[str], rate: float, connections: int) -> dict:
    """GET every path, the k-th at start + k / rate whatever the server's pace; completion times.

    aiohttp rather than httpx: on this machine httpx's async client spent 2.7 ms of CPU per
    request and topped out near 330 requests/s against a server that does nothing, so it
    would have measured itself; aiohttp spent 0.4 ms and kept 1,000/s.
    """
    import aiohttp

    completions: list[float] = []
    latencies: list[float] = []
    failures: list[str] = []
    # Requests that find every connection busy wait on the semaphore; latency still counts
    # from the scheduled time, so a server that falls behind shows it.
    slots = asyncio.Semaphore(connections)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def hit(path: str, due: float) -> None:
            try:
                async with slots, session.get(path) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            done = time.monotonic()
            if status != 200:
                failures.append(f"HTTP {status}")
                return
            completions.append(done)
            latencies.append(done - due)

        tasks = []
        start = time.monotonic() + 0.05
        for k, path in enumerate(paths):
            due = start + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(hit(path, due)))
        issued = time.monotonic()
        await asyncio.gather(*tasks)
    return {"start": start, "issued": issued, "completions": sorted(completions), "latencies": latencies,
            "failures": failures}


def run_hits(base: str, paths: list[str], rate: float, connections: int) -> dict:
    try:
        import uvloop

        return uvloop.run(fire(base, paths, rate, connections))
    except ImportError:
        return asyncio.run(fire(base, paths, rate, connections))


# --- Who used the CPU -------------------------------------------------------------------------------


class LockWatch:
    """Samples pg_stat_activity while the hits run: how many backends wait, and on what."""

    def __init__(self, conninfo: str):
        self.conninfo = conninfo
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(0.1):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).fetchall()
                self.samples.append({
                    "active": sum(1 for state, _, _ in rows if state == "active"),
                    "lock": sum(1 for _, kind, _ in rows if kind == "Lock"),
                    "io": sum(1 for state, kind, _ in rows if state == "active" and kind == "IO"),
                    "connections": len(rows),
                })

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return {}
        count = len(self.samples)
        return {
            "active_backends_mean": round(sum(s["active"] for s in self.samples) / count, 1),
            "waiting_on_locks_mean": round(sum(s["lock"] for s in self.samples) / count, 1),
            "waiting_on_io_mean": round(sum(s["io"] for s in self.samples) / count, 1),
            "connections_max": max(s["connections"] for s in self.samples),
        }


# --- One run ------------------------------------------------------------------------------------------


def latencies_of(result: dict, completions: list[float], base: int, hits: int) -> tuple[list[float], list[float], int]:
    """(every (hit, client) latency, the slowest client's latency per hit, pairs never seen) in seconds."""
    pairs: list[float] = []
    slowest = [0.0] * hits
    unseen = 0
    for arrivals in result["arrivals"]:
        times = [t for t, _ in arrivals]
        shown, highest = [], -1
        for _, n in arrivals:
            highest = max(highest, n)
            shown.append(highest)
        position = 0
        for k in range(1, hits + 1):
            position = bisect.bisect_left(shown, base + k, lo=position)
            if position == len(shown):
                unseen += hits - k + 1
                break
            latency = max(0.0, times[position] - completions[k - 1])
            pairs.append(latency)
            slowest[k - 1] = max(slowest[k - 1], latency)
    return pairs, slowest, unseen


@contextlib.contextmanager
def task_workers(conninfo: str, count: int, log_name: str):
    """``manage.py qcluster`` with ``count`` worker processes (the broker follows REDIS_URL)."""
    if count <= 0:
        yield None
        return
    path = Path(tempfile.gettempdir()) / f"switchboard-realtime-{log_name}-qcluster.log"
    env = {**common.django_env(conninfo), "Q_WORKERS": str(count)}
    with open(path, "wb") as log:
        process = subprocess.Popen([common.PYTHON, "manage.py", "qcluster"], cwd=common.ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    common.log(f"task workers: manage.py qcluster with {count} worker processes, broker "
               f"{'Redis' if os.environ.get('REDIS_URL') else 'PostgreSQL (django-q2 ORM)'}")
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        errors = server_errors(path)
        common.log(f"task workers log {path}: " + ("; ".join(f"{n} × {line}" for line, n in errors.most_common(6))
                                                    if errors else "no errors"))


def queue_drained(conninfo: str, timeout: float = 120) -> float:
    """Wait until every answered open has been applied; seconds it took."""
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM campaigns_engagementhit").fetchone()[0]:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"answered opens were still queued after {timeout:.0f} s")
            time.sleep(0.02)
    return time.monotonic() - started


def run_layer(layer: str, conninfo: str, campaign_id: int, paths: list[str], sessions: list[str], args) -> dict:
    if layer == "redis":
        os.environ["REDIS_URL"] = args.redis_url
    else:
        os.environ.pop("REDIS_URL", None)
    hits = int(args.rate * args.seconds)
    warm, measured = paths[:WARM_UP_HITS], paths[WARM_UP_HITS:WARM_UP_HITS + hits]
    common.log(f"\n--- channel layer: {layer} ({args.redis_url if layer == 'redis' else 'channels-postgres'}) ---")
    with server(conninfo, args.workers, layer) as base, task_workers(conninfo, args.task_workers, layer):
        port = urlsplit(base).port
        clients = Clients(f"ws://127.0.0.1:{port}/ws/dashboards/campaigns/{campaign_id}/", base, sessions)
        try:
            _, connected, problems = clients.receive(120)
            common.log(f"{connected} of {len(sessions)} websocket clients connected and got their first push"
                       + (f"; problems: {problems}" if problems else ""))
            # A dashboard nobody is opening mail for must stay connected too.
            time.sleep(QUIET_SECONDS)
            clients.pipe.send(("drops", 0, 0))
            _, dropped_when_quiet, quiet_problems = clients.receive(30)
            common.log(f"quiet for {QUIET_SECONDS:.0f} s: {dropped_when_quiet} of {len(sessions)} clients lost their "
                       f"socket" + (f" ({quiet_problems[0]})" if quiet_problems else ""))
            # Warm-up: every worker imports, connects and renders before the clock starts.
            run_hits(base, warm, min(args.rate, 200), args.connections)
            time.sleep(1)
            start_count = opened_count(campaign_id)
            clients.pipe.send(("sync", start_count, 30))
            _, synced = clients.receive(60)
            common.log(f"warm-up: {len(warm)} opens; counter at {start_count:,}; {synced} clients show it")

            # What the machine is doing before the load starts: others' work shares the 2 cores.
            busy_before = round(psutil.cpu_percent(interval=1.0) * psutil.cpu_count() / 100, 2)
            meter = common.CpuMeter(conninfo, {
                "hits (aiohttp)": lambda: [psutil.Process()],
                "websocket clients": lambda: [psutil.Process(clients.process.pid)],
            })
            watch = LockWatch(conninfo)
            sessions_before = pg_sessions(conninfo)
            meter.start()
            watch.start()
            fired = run_hits(base, measured, args.rate, args.connections)
            cpu, waits = meter.stop(), watch.stop()
            sessions_opened = pg_sessions(conninfo) - sessions_before
            drained_s = queue_drained(conninfo)
            final = opened_count(campaign_id)
            opened_rows = opened_deliveries(conninfo, campaign_id)
            clients.pipe.send(("final", final, 20))
            _, result = clients.receive(90)
        finally:
            clients.close()

    completions = fired["completions"]
    window = completions[-1] - fired["start"] if completions else float("nan")
    achieved = common.rate(len(completions), window)
    recorded = final - start_count
    counted = min(len(completions), recorded)
    pairs, slowest, unseen = latencies_of(result, completions, start_count, counted)
    in_window = [
        sum(1 for t, _ in arrivals if fired["start"] <= t <= completions[-1]) / window
        for arrivals in result["arrivals"]
    ] if completions else [0.0]
    left_behind = len(sessions) - result["caught_up"]
    figures = {
        "layer": layer,
        "clients": len(sessions),
        "connected": connected,
        "hits": hits,
        "hits_ok": len(completions),
        "hits_failed": len(fired["failures"]),
        "opens_recorded": recorded,
        "counter_matches_deliveries": final == opened_rows,
        "target_rate": args.rate,
        "achieved_rate": round(achieved),
        "issue_seconds": round(fired["issued"] - fired["start"], 2),
        "hit_p50_ms": round(common.percentile(fired["latencies"], 0.5) * 1000, 1),
        "hit_p95_ms": round(common.percentile(fired["latencies"], 0.95) * 1000, 1),
        "update_p50_ms": round(common.percentile(pairs, 0.5) * 1000, 1),
        "update_p95_ms": round(common.percentile(pairs, 0.95) * 1000, 1),
        "update_max_ms": round(max(pairs, default=float("nan")) * 1000, 1),
        "all_clients_p95_ms": round(common.percentile(slowest, 0.95) * 1000, 1),
        "pairs": len(pairs),
        # Hit k is matched to count base + k: only sound when every returned hit was recorded.
        "latency_valid": recorded == len(completions),
        "pairs_never_seen": unseen,
        "pushes_per_s_per_client": round(sum(in_window) / len(in_window), 2),
        "pushes_per_s_min": round(min(in_window), 2),
        "pushes_per_s_max": round(max(in_window), 2),
        "html_frame_bytes": result["sizes"]["html"],
        "json_frame_bytes": result["sizes"]["json"],
        "clients_on_final_count": result["caught_up"],
        "left_behind": left_behind,
        "pg_connections_per_hit": round(sessions_opened / max(1, len(completions)), 2),
        "queue_drained_after_s": round(drained_s, 2),
        "task_workers": args.task_workers,
        "cpu_cores": cpu,
        "machine_busy_before_cores": busy_before,
        "postgres_waits": waits,
        "dropped_when_quiet": dropped_when_quiet,
        "socket_drops": result["drops"],
    }
    common.log(
        f"hits: {len(completions):,} of {hits:,} ok ({len(fired['failures'])} failed) in {window:.1f} s = "
        f"{achieved:,.0f}/s (target {args.rate:,.0f}/s; issuing took {figures['issue_seconds']} s); "
        f"pixel response p50 {figures['hit_p50_ms']} ms, p95 {figures['hit_p95_ms']} ms; "
        f"{recorded:,} opens recorded; counter {final:,}, deliveries opened {opened_rows:,}"
    )
    if recorded != len(completions):
        common.log(f"NOTE: {len(completions) - recorded:,} returned hits were not recorded, so hit k no longer makes "
                   f"the count base + k: the latency figures below are not meaningful")
    common.log(
        f"update latency over {len(pairs):,} (hit, client) pairs: p50 {figures['update_p50_ms']} ms, "
        f"p95 {figures['update_p95_ms']} ms, max {figures['update_max_ms']} ms; "
        f"p95 of the slowest client per hit {figures['all_clients_p95_ms']} ms; {unseen} pairs never seen"
    )
    common.log(
        f"pushes per client: {figures['pushes_per_s_per_client']}/s (min {figures['pushes_per_s_min']}, "
        f"max {figures['pushes_per_s_max']}); frames {figures['html_frame_bytes']:,} B HTML + "
        f"{figures['json_frame_bytes']:,} B JSON; {result['caught_up']} of {len(sessions)} clients on the final count "
        f"{final:,} ({left_behind} left behind)"
    )
    common.log(f"CPU (cores busy on average) during the hits: {cpu}; before them: {busy_before} cores busy")
    common.log(f"PostgreSQL during the hits: {waits}; {sessions_opened:,} connections opened "
               f"({sessions_opened / max(1, len(completions)):.2f} per hit)")
    if fired["failures"]:
        common.log(f"first failures: {fired['failures'][:3]}")
    if result["problems"]:
        common.log(f"{result['drops']} socket drops (the client reconnected after each); first: "
                   f"{result['problems'][:3]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-pixel hits per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=common.DEFAULT_WORKERS)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the hit client")
    parser.add_argument("--layers", default="redis", help="comma-separated: redis, postgres")
    parser.add_argument("--redis-url", default=REDIS_URL, help="REDIS_URL for the server's channel layer")
    parser.add_argument("--task-workers", type=int, default=2,
                        help="qcluster worker processes beside the web server (0 for none)")
    args = parser.parse_args()
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    per_layer = WARM_UP_HITS + int(args.rate * args.seconds)
    if args.customers < PROFILE_HITS + per_layer * len(layers):
        raise SystemExit(f"--customers must be at least {PROFILE_HITS + per_layer * len(layers):,} for these runs")

    # Every customer's local time is inside the allowed hours, whenever this runs.
    os.environ["QUIET_HOURS"] = "00:00-23:59:59.999999"
    os.environ.pop("REDIS_URL", None)
    with common.bench_database("switchboard_bench_realtime") as url:
        common.migrate(url)
        common.setup_django(url)
        generate(url, args.customers)
        campaign_id, delivery_ids = sent_campaign(url)
        paths = pixel_paths(delivery_ids)
        sessions = marketer_sessions(args.clients)
        common.log(f"{args.clients} marketer sessions; {len(paths):,} signed open pixels")

        profile_paths, paths = paths[:PROFILE_HITS], paths[PROFILE_HITS:]
        with server(url, 1, "profile") as base:
            profile = profile_pixel(url, base, profile_paths)
        profile.update(profile_render(campaign_id))

        runs = []
        for index, layer in enumerate(layers):
            runs.append(run_layer(layer, url, campaign_id, paths[index * per_layer:(index + 1) * per_layer],
                                  sessions, args))

    main_run = runs[0]
    p95 = main_run["update_p95_ms"]
    ratio = p95 / TARGET_P95_MS
    met = (
        p95 <= TARGET_P95_MS
        and main_run["achieved_rate"] >= 0.95 * args.rate
        and main_run["left_behind"] == 0
        and main_run["connected"] == args.clients
        and main_run["hits_failed"] == 0
        and main_run["pairs_never_seen"] == 0
        and main_run["latency_valid"]
        and main_run["socket_drops"] == 0
    )
    common.log(f"\np95 / {TARGET_P95_MS:.0f} ms = {ratio:.3f} ({main_run['layer']} layer); "
               f"achieved {main_run['achieved_rate']:,}/s of {args.rate:,.0f}/s; "
               f"{main_run['left_behind']} clients left behind; met: {met}")
    figures = {"pixel_profile": profile, **{f"{run['layer']}": run for run in runs}}
    common.report(
        NAME, figures, ratio,
        f"p95 ≤ {TARGET_P95_MS:.0f} ms at {args.rate:,.0f} hits/s with {args.clients} clients, none left behind",
        met,
    )


if __name__ == "__main__":
    main()
