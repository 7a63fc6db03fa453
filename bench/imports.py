"""Customer import from CSV against a raw COPY of the same file.

1. A fresh database with two topics; a CSV of 1,000,000 rows is written to a temporary file
   (external id, email, first and last name, 3 attributes, 2 subscriptions).
2. Baseline: the file is COPYed, as it is, into a bare table of text columns (one connection,
   1 MB chunks): the fastest way into PostgreSQL.
3. The import, as a user gets it: upload (the file streamed into its staging table), the
   mapping started, then the background task run in this process, as a worker runs it,
   until the import says done — validation, and the apply in chunks with every timeline row
   and the signal after each chunk (with ``BENCH_IMPORT_SEGMENTS`` dynamic segments listening).
4. Checks: 1,000,000 customers created with their subscriptions and timeline rows; the same
   file imported again creates and updates nothing (timed too).

Target: import rate / COPY rate >= 0.2. Run with ``make bench BENCH_ARGS=imports``, or
``DATABASE_URL=… python bench/imports.py``. ``BENCH_IMPORT_ROWS`` sets the size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

NAME = "imports"
ROWS = int(os.environ.get("BENCH_IMPORT_ROWS", 1_000_000))
SEGMENTS = int(os.environ.get("BENCH_IMPORT_SEGMENTS", 2))
TARGET_RATIO = 0.2
HEADER = "external_id,email,first_name,last_name,plan,score,signup_date,newsletter_email,coupons_sms\n"
FIRST = ("Ada", "Grace", "Alan", "Barbara", "Claude", "Edsger", "Frances", "Donald")
LAST = ("Lovelace", "Hopper", "Turing", "Liskov", "Shannon", "Dijkstra", "Allen", "Knuth")
PLANS = ("free", "pro", "team", "enterprise")
MAPPING = {
    "external_id": {"to": "external_id"},
    "email": {"to": "email"},
    "first_name": {"to": "first_name"},
    "last_name": {"to": "last_name"},
    "plan": {"to": "attribute", "key": "plan", "type": "text"},
    "score": {"to": "attribute", "key": "score", "type": "number"},
    "signup_date": {"to": "attribute", "key": "signup_date", "type": "date"},
    "newsletter_email": {"to": "subscription", "topic": "newsletter", "channel": "email"},
    "coupons_sms": {"to": "subscription", "topic": "coupons", "channel": "sms"},
}


def write_csv(path: Path) -> int:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        block = []
        for n in range(ROWS):
            block.append(
                f"crm-{n:07d},person{n}@example.com,{FIRST[n % 8]},{LAST[(n // 8) % 8]},{PLANS[n % 4]},"
                f"{n % 1000},20{10 + n % 15}-{1 + n % 12:02d}-{1 + n % 28:02d},{'yes' if n % 3 else 'no'},"
                f"{'subscribed' if n % 5 else 'unsubscribed'}\n"
            )
            if len(block) == 10_000:
                out.write("".join(block))
                block = []
        out.write("".join(block))
    return path.stat().st_size


def copy_baseline(url: str, path: Path) -> float:
    columns = ", ".join(f"{name} text" for name in HEADER.strip().split(","))
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE bench_copy ({columns})")
        conn.commit()
        common.checkpoint(conn)
        began = time.perf_counter()
        with conn.cursor().copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER true)") as copy, path.open("rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - began
        copied = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    assert copied == ROWS, copied
    return seconds


def run_import(path: Path) -> tuple[float, object]:
    """Upload, start and run the import to its end, as the user waits for it; returns the
    seconds and the finished import."""
    from customers.imports import services
    from customers.imports.models import CustomerImport
    from django_q.models import OrmQ

    began = time.perf_counter()
    with path.open("rb") as f:
        customer_import = services.import_upload(file=f, filename=path.name, actor="bench")
    services.import_start(customer_import=customer_import, mapping_spec=MAPPING, match_on="external_id",
                          update_existing=True, actor="bench")
    # What a worker does with the queued task (and with the tasks it queues to carry on).
    while True:
        OrmQ.objects.all().delete()
        status = services.import_run(import_id=customer_import.pk)
        if status != CustomerImport.Status.APPLYING:
            break
    seconds = time.perf_counter() - began
    customer_import.refresh_from_db()
    return seconds, customer_import


def main() -> None:
    with common.bench_database("switchboard_bench_imports") as url, tempfile.TemporaryDirectory() as tmp:
        common.migrate(url)
        common.setup_django(url)
        from customers.models import Customer, Event, Subscription, Topic
        from segments.services import segment_create

        Topic.objects.create(key="newsletter", name="Newsletter")
        Topic.objects.create(key="coupons", name="Coupons")
        rules = [{"attr": "attributes.plan", "op": "eq", "value": "pro"},
                 {"subscribed": {"topic": "coupons", "channel": "sms"}}]
        for n in range(SEGMENTS):
            segment_create(name=f"Listening {n}", rules=rules[n % 2], actor="bench")

        path = Path(tmp) / "customers.csv"
        started = time.perf_counter()
        size = write_csv(path)
        common.log(f"CSV: {ROWS:,} rows, {size / 1e6:.0f} MB, written in {time.perf_counter() - started:.1f} s; "
                   f"{SEGMENTS} dynamic segment(s) listening")

        copy_seconds = copy_baseline(url, path)
        copy_rate = common.rate(ROWS, copy_seconds)
        common.log(f"COPY:   {ROWS:,} rows in {copy_seconds:.2f} s = {copy_rate:,.0f} rows/s (bare text table)")

        with psycopg.connect(url) as conn:
            common.checkpoint(conn)
        import_seconds, first = run_import(path)
        import_rate = common.rate(ROWS, import_seconds)
        phases = first.phase_seconds
        common.log(f"import: {ROWS:,} rows in {import_seconds:.2f} s = {import_rate:,.0f} rows/s "
                   f"(staging {phases.get('staging')} s, validating {phases.get('validating')} s, "
                   f"applying {phases.get('applying')} s); created {first.created_count:,}, "
                   f"updated {first.updated_count:,}, unchanged {first.unchanged_count:,}, "
                   f"rejected {first.rejected_count:,}")
        customers = Customer.objects.count()
        subscriptions = Subscription.objects.count()
        events = Event.objects.count()
        common.log(f"check: {customers:,} customers, {subscriptions:,} subscriptions, {events:,} timeline rows")

        again_seconds, again = run_import(path)
        events_after = Event.objects.count()
        common.log(f"again:  the same file in {again_seconds:.2f} s: created {again.created_count:,}, "
                   f"updated {again.updated_count:,}, unchanged {again.unchanged_count:,}; "
                   f"timeline rows added {events_after - events:,}")
        correct = (first.status == "done" and first.created_count == ROWS and first.rejected_count == 0
                   and customers == ROWS and subscriptions == 2 * ROWS and events == 3 * ROWS
                   and again.status == "done" and again.created_count == 0 and again.updated_count == 0
                   and again.unchanged_count == ROWS and events_after == events)

    ratio = import_rate / copy_rate
    met = correct and ratio >= TARGET_RATIO
    common.log(f"import/COPY = {ratio:.3f}; correct: {correct}")
    common.report(
        NAME,
        {
            "rows": ROWS,
            "copy_rows_per_s": round(copy_rate),
            "import_rows_per_s": round(import_rate),
            "copy_seconds": round(copy_seconds, 2),
            "import_seconds": round(import_seconds, 2),
            "staging_seconds": phases.get("staging"),
            "validating_seconds": phases.get("validating"),
            "applying_seconds": phases.get("applying"),
            "rerun_seconds": round(again_seconds, 2),
            "segments_listening": SEGMENTS,
            "correct": correct,
        },
        ratio,
        f"import rows/s / COPY rows/s >= {TARGET_RATIO}",
        met,
    )


if __name__ == "__main__":
    main()
