"""Campaign dispatch through the Twilio adapter against a bare HTTP client, and crash safety.

1. A fresh database with 50,000 customers, each with an SMS subscription, in a static
   segment: written set-based (``INSERT … SELECT generate_series``), then a campaign is
   created and launched through the services (the audience snapshot is one statement).
2. A fake Twilio (``tests/fakes/twilio.py``) runs as its own process and answers every
   request after 2 ms, like a nearby API.
3. Ours: N worker processes run the real dispatcher (``campaigns.dispatch.dispatch``: claim,
   policy re-check, render, send through ``TwilioSMS``, record) until every delivery is
   sent. The clock runs from "go" (every worker imported and connected) to the moment the
   last delivery is recorded as sent.
4. Bare: the same number of processes, each with the same number of threads sharing one
   httpx client, POST exactly the form bodies ours sent (To, From, Body, StatusCallback),
   with no database at all.
5. Crash run: another campaign to the same 50,000, with a 5 s lease; a worker is killed
   with SIGKILL twice mid-send (a new one is started each time), and the expired leases are
   settled by the others through Twilio's message list. Checked from the fake's own log:
   duplicates (a (to, body) pair accepted twice: every customer gets one SMS per campaign)
   and losses (a delivery whose message the fake never accepted).

Target: ours/bare throughput ≥ 0.7 with 0 duplicates and 0 losses.
Knobs: BENCH_DISPATCH_MESSAGES (fewer messages), BENCH_DISPATCH_WORKERS (processes, default
2 for 2 cores), BENCH_CONCURRENCY (threads per process, default DELIVERY_CONCURRENCY's 16).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench import common  # noqa: E402

NAME = "dispatch"
MESSAGES = int(os.environ.get("BENCH_DISPATCH_MESSAGES", 50_000))
WORKERS = int(os.environ.get("BENCH_DISPATCH_WORKERS", 2))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", 16))
LATENCY_MS = 2
SMS_FROM = "+15005550006"
SITE_URL = "https://switchboard.example.com"
# The crash run: leases short enough to expire during the run, batches small enough that a
# live worker always finishes one well within its lease (renewed while a batch is unrecorded).
CRASH_LEASE_SECONDS = 5
CRASH_BATCH_SIZE = 100
KILL_AT = (0.3, 0.6)
TARGET_RATIO = 0.7


# --- Processes ----------------------------------------------------------------------------------


def start_fake() -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [common.PYTHON, "-m", "tests.fakes.twilio", "--latency-ms", str(LATENCY_MS)],
        cwd=common.ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    info = json.loads(process.stdout.readline())
    return process, info


def worker_env(database_url: str, fake: dict, **extra: str) -> dict[str, str]:
    return {
        **common.django_env(database_url),
        "PYTHONPATH": str(common.ROOT),
        "SMS_PROVIDER": "twilio",
        "TWILIO_API_BASE": fake["url"],
        "TWILIO_ACCOUNT_SID": fake["account_sid"],
        "TWILIO_AUTH_TOKEN": fake["auth_token"],
        "TWILIO_SMS_FROM": SMS_FROM,
        "SITE_URL": SITE_URL,
        "DELIVERY_CONCURRENCY": str(CONCURRENCY),
        # The benchmark measures sending, not the policy's calendar: no quiet hours, no cap.
        "QUIET_HOURS": "00:00-23:59:59.999999",
        "FREQUENCY_CAP_MESSAGES": "1000",
        **extra,
    }


def spawn(role: str, env: dict, go: Path, *args: str) -> subprocess.Popen:
    """A worker process that prints "ready" once set up, then waits for the ``go`` file."""
    process = subprocess.Popen(
        [common.PYTHON, str(Path(__file__).resolve()), role, str(go), *args],
        cwd=common.ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"a {role} process did not start")
    return process


def wait_for_go(go: Path) -> None:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)


def dispatcher_main(go: Path) -> None:
    """``--dispatcher``: run the real dispatcher until no delivery is planned or sending."""
    import django

    django.setup()
    from django.db import connection

    from campaigns.dispatch import dispatch

    connection.ensure_connection()
    wait_for_go(go)
    while True:
        if dispatch(budget_seconds=30):
            continue
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM campaigns_delivery WHERE status IN ('planned', 'sending')")
            if cursor.fetchone()[0] == 0:
                return
        # Work left is leased by another worker (or a dead one, until its lease expires).
        time.sleep(0.1)


def bare_main(go: Path, bodies_file: str, part: str) -> None:
    """``--bare``: POST this process's share of the bodies; print the wall time of the last answer."""
    index, parts = (int(x) for x in part.split("/"))
    spec = json.loads(Path(bodies_file).read_text())
    forms = spec["forms"][index::parts]
    path = f"/2010-04-01/Accounts/{spec['account_sid']}/Messages.json"
    client = httpx.Client(
        base_url=spec["url"], auth=(spec["account_sid"], spec["auth_token"]), timeout=20,
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
    )
    client.get("/_fake/stats")
    errors = []

    def post(form):
        response = client.post(path, data=form)
        if response.status_code != 201:
            errors.append(response.status_code)

    pool = ThreadPoolExecutor(CONCURRENCY)
    wait_for_go(go)
    list(pool.map(post, forms))
    print(json.dumps({"finished": time.time(), "errors": len(errors)}), flush=True)


# --- Data -----------------------------------------------------------------------------------------


def create_audience(database_url: str) -> tuple[int, int]:
    """Customers, SMS subscriptions and a static segment, set-based; returns (topic id, segment id)."""
    from customers.models import Topic
    from segments.services import segment_create, static_members_change

    topic = Topic.objects.create(key="bench-news", name="Bench news")
    started = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        conn.execute(
            """
            INSERT INTO customers_customer (external_id, email, phone, first_name, last_name, locale, timezone,
                                            lifecycle_stage, attributes, created_at, updated_at)
            SELECT 'bench-' || n, 'bench' || n || '@example.com', '+1555' || lpad(n::text, 7, '0'),
                   'Name' || n, 'Bench', 'en', 'UTC', 'customer', '{}'::jsonb, now(), now()
            FROM generate_series(1, %s) AS n
            """,
            [MESSAGES],
        )
        conn.execute(
            """
            INSERT INTO customers_subscription (customer_id, topic_id, channel, subscribed, source, updated_at)
            SELECT id, %s, 'sms', true, 'bench', now() FROM customers_customer
            """,
            [topic.pk],
        )
        conn.execute("ANALYZE customers_customer")
        conn.execute("ANALYZE customers_subscription")
        ids = [row[0] for row in conn.execute("SELECT id FROM customers_customer ORDER BY id")]
    segment = segment_create(name="Bench audience", static=True, actor="bench")
    static_members_change(segment=segment, add=True, ids=ids, actor="bench")
    common.log(f"{MESSAGES:,} customers, SMS subscriptions and a static segment in "
               f"{time.perf_counter() - started:.1f} s (INSERT … SELECT)")
    return topic.pk, segment.pk


def launch(segment_id: int, name: str, text: str) -> int:
    from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
    from campaigns.services.lifecycle import campaign_launch

    data = CampaignInput(
        name=name, topic="bench-news", channels=["sms"], segment_ids=[segment_id],
        variants=[VariantInput(key="A", content={"sms": {"body": text}})],
    )
    campaign = campaign_create(data=data, actor="bench")
    started = time.perf_counter()
    campaign_launch(campaign=campaign, actor="bench")
    common.log(f"launched '{name}': {MESSAGES:,} deliveries planned in {time.perf_counter() - started:.1f} s")
    return campaign.pk


def expected_forms(database_url: str, campaign_id: int) -> list[dict]:
    """The form bodies the adapter will POST: the template filled in, plus the opt-out line."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.phone, c.first_name FROM campaigns_delivery d JOIN customers_customer c ON c.id = d.customer_id "
            "WHERE d.campaign_id = %s AND d.status = 'planned' ORDER BY d.id", [campaign_id]
        ).fetchall()
    callback = SITE_URL + "/webhooks/twilio/status"
    return [{"To": phone, "From": SMS_FROM, "Body": f"Hi {name}, the spring sale starts today\nReply STOP to opt out",
             "StatusCallback": callback} for phone, name in rows]


def fake_log(fake: dict) -> list[dict]:
    return httpx.get(f"{fake['url']}/_fake/messages", timeout=120).json()["messages"]


def fake_stats(fake: dict) -> dict:
    return httpx.get(f"{fake['url']}/_fake/stats", timeout=30).json()


def check(database_url: str, campaign_id: int, fake: dict) -> dict:
    """Duplicates and losses, from the fake's log against the deliveries."""
    log = fake_log(fake)
    pairs = Counter((m["to"], m["body"]) for m in log)
    per_number = Counter(m["to"] for m in log)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT c.phone, d.status, d.provider_message_id FROM campaigns_delivery d
            JOIN customers_customer c ON c.id = d.customer_id WHERE d.campaign_id = %s
            """,
            [campaign_id],
        ).fetchall()
    sids = {m["sid"]: m["to"] for m in log}
    lost = [phone for phone, _, _ in rows if per_number[phone] == 0]
    wrong_id = [phone for phone, _, sid in rows if sids.get(sid) != phone]
    return {
        "accepted": len(log),
        "duplicates": sum(n - 1 for n in pairs.values() if n > 1),
        "losses": len(lost),
        "not_sent": sum(1 for _, status, _ in rows if status != "sent"),
        "wrong_provider_id": len(wrong_id),
    }


# --- Runs -------------------------------------------------------------------------------------------


def run_ours(env: dict, database_url: str, campaign_id: int, *, kills: int = 0, fake: dict | None = None) -> dict:
    """Dispatch the campaign with WORKERS processes; optionally SIGKILL one ``kills`` times."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        workers = [spawn("--dispatcher", env, go) for _ in range(WORKERS)]
        in_flight: list[dict] = []
        began = time.perf_counter()
        go.touch()
        killed = 0
        with psycopg.connect(database_url, autocommit=True) as conn:
            while True:
                sent, active = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status IN "
                    "('planned', 'sending')) FROM campaigns_delivery WHERE campaign_id = %s", [campaign_id]
                ).fetchone()
                if active == 0:
                    break
                if killed < kills and sent >= KILL_AT[killed] * MESSAGES:
                    victim = workers[killed % len(workers)]
                    wait_until_sending(victim.pid, fake)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    kill_time = time.time()
                    leases = sending_leases(conn, campaign_id)
                    in_flight.append(orphans(conn, leases, fake, kill_time))
                    workers[killed % len(workers)] = spawn("--dispatcher", env, go)
                    killed += 1
                    continue
                time.sleep(0.05)
        seconds = time.perf_counter() - began
        for worker in workers:
            worker.wait(timeout=60)
    return {"seconds": seconds, "in_flight": in_flight}


def client_ports(pid: int) -> set[int]:
    """Local TCP ports of ``pid``'s sockets (from /proc; empty where there is no /proc)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_until_sending(pid: int, fake: dict, timeout: float = 5.0) -> bool:
    """Wait until one of ``pid``'s connections has just sent the fake a request: kill it then,
    and it dies with requests in flight and a claimed batch unrecorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = set(httpx.get(f"{fake['url']}/_fake/active", timeout=5).json()["ports"])
        if active & client_ports(pid):
            return True
        time.sleep(0.005)
    return False


def sending_leases(conn, campaign_id: int) -> dict:
    return dict(conn.execute(
        "SELECT id, lease_until FROM campaigns_delivery WHERE campaign_id = %s AND status = 'sending'", [campaign_id]
    ).fetchall())


def orphans(conn, before: dict, fake: dict, kill_time: float) -> dict:
    """What the killed worker held: of the deliveries ``sending`` at the kill, those still
    ``sending`` under the same lease once the live workers have recorded their own batches
    (and before that lease expires), and how many of those Twilio had already accepted."""
    time.sleep(max(0.0, kill_time + 2.5 - time.time()))
    after = conn.execute(
        """
        SELECT d.id, d.lease_until, c.phone FROM campaigns_delivery d JOIN customers_customer c ON c.id = d.customer_id
        WHERE d.id = ANY(%s) AND d.status = 'sending'
        """,
        [list(before)],
    ).fetchall()
    held = {phone for delivery_id, lease, phone in after if before.get(delivery_id) == lease}
    accepted = {m["to"] for m in fake_log(fake) if m["created"] <= kill_time}
    return {"held_by_killed_worker": len(held), "already_accepted": len(held & accepted)}


def run_bare(fake: dict, forms: list[dict]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.json"
        bodies.write_text(json.dumps({**fake, "forms": forms}))
        go = Path(tmp) / "go"
        env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
        processes = [spawn("--bare", env, go, str(bodies), f"{i}/{WORKERS}") for i in range(WORKERS)]
        began_wall, began = time.time(), time.perf_counter()
        go.touch()
        results = [json.loads(p.stdout.readline()) for p in processes]
        for process in processes:
            process.wait(timeout=60)
    seconds = max(r["finished"] for r in results) - began_wall
    return {"seconds": seconds, "errors": sum(r["errors"] for r in results), "wall": time.perf_counter() - began}


def main() -> None:
    with common.bench_database("switchboard_bench_dispatch") as url:
        common.migrate(url)
        fake_process, fake = start_fake()
        try:
            os.environ.update(worker_env(url, fake))
            common.setup_django(url)
            _, segment_id = create_audience(url)
            common.log(f"fake Twilio at {fake['url']} answering after {LATENCY_MS} ms; {WORKERS} processes × "
                       f"{CONCURRENCY} concurrent requests on each side")

            text = "Hi {{ first_name }}, the spring sale starts today"
            first = launch(segment_id, "Spring sale", text)
            forms = expected_forms(url, first)

            # Bare, ours, bare again: load from other work on the machine weighs on both sides.
            bare_runs = [run_bare(fake, forms)]
            httpx.post(f"{fake['url']}/_fake/reset")
            ours = run_ours(worker_env(url, fake), url, first)
            ours_stats, ours_check = fake_stats(fake), check(url, first, fake)
            same_bodies = sorted((m["to"], m["body"]) for m in fake_log(fake)) == sorted(
                (f["To"], f["Body"]) for f in forms)
            httpx.post(f"{fake['url']}/_fake/reset")
            bare_runs.append(run_bare(fake, forms))
            httpx.post(f"{fake['url']}/_fake/reset")
            ours_rate = common.rate(MESSAGES, ours["seconds"])
            bare_rates = [common.rate(len(forms), run["seconds"]) for run in bare_runs]
            bare_rate = sum(bare_rates) / len(bare_rates)
            bare = {"errors": sum(run["errors"] for run in bare_runs)}
            common.log(f"bare: {len(forms):,} POSTs of the same form bodies, no database: "
                       f"{' and '.join(f'{r:,.0f}/s' for r in bare_rates)} (before and after ours), "
                       f"errors {bare['errors']}")
            common.log(f"ours: {MESSAGES:,} SMS dispatched in {ours['seconds']:.2f} s = {ours_rate:,.0f}/s "
                       f"(claim, policy re-check, render, POST, record); fake saw {ours_stats['creates']:,} creates; "
                       f"same bodies as bare: {same_bodies}; check {ours_check}")

            # 3. Crash run.
            httpx.post(f"{fake['url']}/_fake/reset")
            second = launch(segment_id, "Last day", "{{ first_name }}, the spring sale ends tonight")
            crash_env = worker_env(url, fake, DELIVERY_LEASE_SECONDS=str(CRASH_LEASE_SECONDS),
                                   DELIVERY_BATCH_SIZE=str(CRASH_BATCH_SIZE))
            crash = run_ours(crash_env, url, second, kills=len(KILL_AT), fake=fake)
            crash_stats, crash_check = fake_stats(fake), check(url, second, fake)
            common.log(f"crash run: {len(crash['in_flight'])} workers killed with SIGKILL mid-send, lease "
                       f"{CRASH_LEASE_SECONDS} s, batches of {CRASH_BATCH_SIZE}; in flight at each kill: "
                       f"{crash['in_flight']}")
            common.log(f"crash run: {MESSAGES:,} deliveries in {crash['seconds']:.2f} s; fake saw "
                       f"{crash_stats['creates']:,} creates and {crash_stats['lists']:,} list requests; "
                       f"check {crash_check}")
        finally:
            fake_process.terminate()
            fake_process.wait(timeout=10)

    ratio = ours_rate / bare_rate
    correct = (
        ours_check["duplicates"] == 0 and ours_check["losses"] == 0 and ours_check["not_sent"] == 0
        and ours_check["wrong_provider_id"] == 0 and bare["errors"] == 0 and len(forms) == MESSAGES and same_bodies
    )
    crash_ok = (
        crash_check["duplicates"] == 0 and crash_check["losses"] == 0 and crash_check["not_sent"] == 0
        and crash_check["wrong_provider_id"] == 0
    )
    met = correct and crash_ok and ratio >= TARGET_RATIO
    common.log(f"ours/bare = {ratio:.3f}; first run correct: {correct}; crash run: "
               f"{crash_check['duplicates']} duplicates, {crash_check['losses']} losses")
    common.report(
        NAME,
        {
            "messages": MESSAGES,
            "ours_per_s": round(ours_rate),
            "bare_per_s": round(bare_rate),
            "ours_seconds": round(ours["seconds"], 2),
            "bare_per_s_before_and_after": [round(r) for r in bare_rates],
            "processes": WORKERS,
            "concurrency_per_process": CONCURRENCY,
            "fake_latency_ms": LATENCY_MS,
            "first_run_correct": correct,
            "crash_kills": len(crash["in_flight"]),
            "crash_in_flight": crash["in_flight"],
            "crash_duplicates": crash_check["duplicates"],
            "crash_losses": crash_check["losses"],
            "crash_not_sent": crash_check["not_sent"],
            "crash_lookups": crash_stats["lists"],
            "crash_seconds": round(crash["seconds"], 2),
        },
        ratio,
        f"ours/bare >= {TARGET_RATIO} with 0 duplicates and 0 losses after {len(KILL_AT)} SIGKILLs",
        met,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--dispatcher":
        dispatcher_main(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--bare":
        bare_main(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
