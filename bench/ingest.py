"""Event ingestion through the API against a raw COPY of the same rows.

1. A fresh database with 20,000 customers, created by SQL COPY so that the measured part
   is event ingestion alone.
2. 200,000 events in 200 batches of 1,000, sent to ``POST /api/v1/events`` of the real
   server (uvicorn) over 4 concurrent keep-alive connections. Bodies are serialised
   before the clock starts.
3. Checks: 200,000 rows stored; re-sending a batch adds nothing (idempotency).
4. Baseline: the event table is emptied and the same 200,000 rows are written by one
   COPY (pre-formatted too), so both runs fill the same table with the same indexes.

Target: at least 20,000 events/s through the API, and API/COPY at least 0.15.
Run with ``make bench`` (or ``make bench BENCH_ARGS=ingest``). For a look inside:
``BENCH_INGEST_EVENTS`` (fewer events), ``BENCH_CONCURRENCY`` (client connections),
``BENCH_WORKERS`` (server workers), ``BENCH_PROFILE=/tmp/ingest.prof`` (cProfile of a
one-worker server).
"""

from __future__ import annotations

import json
import os
import queue
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

NAME = "ingest"
EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", 200_000))
BATCH = 1_000
CUSTOMERS = 20_000
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", 4))
SOURCE = "api"  # the endpoint's default source
TARGET_RATE = 20_000
TARGET_RATIO = 0.15

PRODUCTS = [(f"SKU-{1000 + i}", name, price) for i, (name, price) in enumerate([
    ("Trail running shoes", 120.0), ("Merino base layer", 75.0), ("Waterproof jacket", 210.0),
    ("Insulated bottle", 32.0), ("Headlamp", 45.0), ("Day pack 22L", 95.0), ("Camp stove", 60.0),
    ("Ultralight tent", 420.0),
])]
CURRENCIES = ("USD", "EUR", "GBP", "BRL", "INR", "JPY")
OFFSETS = [timezone(timedelta(hours=h)) for h in (-8, -5, -3, 0, 1, 2, 5.5, 9)]


def external_id(n: int) -> str:
    return f"bench-{n:05d}"


def make_events(rng: random.Random, now: datetime) -> list[dict]:
    """Realistic events over the last 30 days, each with an idempotency key."""
    events = []
    for n in range(EVENTS):
        kind = rng.random()
        sku, product, price = rng.choice(PRODUCTS)
        currency = rng.choice(CURRENCIES)
        if kind < 0.45:
            name, properties = "page_viewed", {
                "url": f"https://shop.example.com/products/{sku.lower()}?utm_source=newsletter",
                "title": product, "referrer": "https://www.example.org/",
            }
        elif kind < 0.70:
            name, properties = "product_viewed", {"sku": sku, "product_name": product, "price": price,
                                                   "currency": currency, "category": "outdoor"}
        elif kind < 0.82:
            name, properties = "added_to_cart", {"sku": sku, "quantity": rng.randint(1, 3), "price": price,
                                                  "currency": currency}
        elif kind < 0.90:
            items = rng.randint(1, 4)
            name, properties = "order_completed", {"order_id": f"ORD-{n:07d}", "total": round(price * items, 2),
                                                    "currency": currency, "items": items, "coupon": None}
        else:
            name, properties = "app_opened", {"platform": rng.choice(("ios", "android")), "app_version": "4.2.0"}
        occurred = (now - timedelta(seconds=rng.uniform(60, 30 * 86400))).astimezone(rng.choice(OFFSETS))
        events.append({
            "customer": {"external_id": external_id(rng.randrange(CUSTOMERS))},
            "name": name,
            "properties": properties,
            "occurred_at": occurred.isoformat(timespec="milliseconds"),
            "idempotency_key": f"evt-{n:07d}-{rng.getrandbits(32):08x}",
        })
    return events


def create_customers(url: str, now: datetime) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY customers_customer (external_id, email, phone, first_name, last_name, locale, timezone, "
            "lifecycle_stage, attributes, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(CUSTOMERS):
                copy.write_row((external_id(n), f"bench{n}@example.com", "", "", "", "", "", "customer",
                                '{"plan": "pro"}', now, now))
        conn.execute("ANALYZE customers_customer")
        return dict(conn.execute("SELECT external_id, id FROM customers_customer").fetchall())


def send_all(base: str, key: str, bodies: list[bytes]) -> tuple[float, list[dict], list[float]]:
    """POST every body over CONCURRENCY keep-alive connections; returns (seconds, responses, latencies)."""
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    responses, latencies, errors = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(CONCURRENCY + 1)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def worker():
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            start.wait()
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                sent = time.perf_counter()
                response = client.post("/api/v1/events", content=body)
                elapsed = time.perf_counter() - sent
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:500]}")
                    else:
                        responses.append(response.json())
                        latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} batches failed; first: {errors[0]}")
    return seconds, responses, latencies


def warm_up(base: str, key: str, workers: int, customer_id: int) -> None:
    """Let every worker import, connect and authenticate, without writing events."""
    headers = {"Authorization": f"Bearer {key}"}

    def read(_):
        with httpx.Client(base_url=base, headers=headers) as client:
            for _ in range(4):
                client.get(f"/api/v1/customers/{customer_id}").raise_for_status()

    with ThreadPoolExecutor(2 * workers) as pool:
        list(pool.map(read, range(2 * workers)))
    paths = httpx.get(f"{base}/api/openapi.json").json().get("paths", {})
    if "post" not in paths.get("/api/v1/events", {}):
        raise SystemExit("The API has no POST /api/v1/events yet (see /api/openapi.json).")


def copy_text(events: list[dict], ids: dict[str, int], received: datetime) -> bytes:
    """The rows as COPY text, formatted before the clock starts, like the API bodies."""

    def field(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    stamp = received.isoformat()
    lines = []
    for event in events:
        lines.append("\t".join((
            str(ids[event["customer"]["external_id"]]), event["name"], "event", "",
            field(json.dumps(event["properties"], separators=(",", ":"))), event["occurred_at"], stamp, SOURCE,
            field(event["idempotency_key"]), "",
        )))
    return ("\n".join(lines) + "\n").encode()


def copy_baseline(url: str, data: bytes) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE customers_event")
        conn.commit()
        common.checkpoint(conn)
        began = time.perf_counter()
        with conn.cursor().copy(
            "COPY customers_event (customer_id, name, category, channel, properties, occurred_at, received_at, "
            "source, idempotency_key, actor) FROM STDIN"
        ) as copy:
            view = memoryview(data)
            for offset in range(0, len(view), 1 << 20):
                copy.write(view[offset:offset + (1 << 20)])
        conn.commit()
        return time.perf_counter() - began


def count_events(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM customers_event WHERE category = 'event'").fetchone()[0]


def main() -> None:
    rng = random.Random(20_000)
    now = datetime.now(timezone.utc)
    with common.bench_database("switchboard_bench_ingest") as url:
        common.migrate(url)
        common.setup_django(url)
        key = common.create_api_key("bench-ingest")
        ids = create_customers(url, now)
        events = make_events(rng, now)
        bodies = [
            json.dumps({"events": events[i:i + BATCH]}, separators=(",", ":")).encode()
            for i in range(0, EVENTS, BATCH)
        ]
        megabytes = sum(map(len, bodies)) / 1e6
        common.log(f"{CUSTOMERS:,} customers created by SQL COPY; {EVENTS:,} events in {len(bodies)} bodies "
                   f"of {BATCH:,} ({megabytes:.1f} MB of JSON), {CONCURRENCY} connections")

        with psycopg.connect(url) as conn:
            common.checkpoint(conn)
        workers = common.server_workers()
        with common.run_server(url, workers=workers) as base:
            warm_up(base, key, workers, ids[external_id(0)])
            api_seconds, responses, latencies = send_all(base, key, bodies)
            accepted = sum(r["accepted"] for r in responses)
            duplicates = sum(r["duplicates"] for r in responses)
            created = sum(r["customers_created"] for r in responses)
            stored = count_events(url)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "application/json"}) as client:
                resent = client.post("/api/v1/events", content=bodies[0], timeout=60).json()
            stored_after_resend = count_events(url)

        api_rate = common.rate(EVENTS, api_seconds)
        common.log(f"API:  {EVENTS:,} events in {api_seconds:.2f} s = {api_rate:,.0f} events/s "
                   f"(batch latency p50 {common.percentile(latencies, 0.5) * 1000:.0f} ms, "
                   f"p95 {common.percentile(latencies, 0.95) * 1000:.0f} ms); accepted {accepted:,}, "
                   f"duplicates {duplicates:,}, customers created {created:,}")
        common.log(f"check: {stored:,} rows stored; re-sent batch -> {resent}, rows after: {stored_after_resend:,}")
        correct = (
            stored == EVENTS and accepted == EVENTS and duplicates == 0 and created == 0
            and resent.get("accepted") == 0 and resent.get("duplicates") == BATCH and stored_after_resend == EVENTS
        )

        data = copy_text(events, ids, now)
        copy_seconds = copy_baseline(url, data)
        copied = count_events(url)
        copy_rate = common.rate(EVENTS, copy_seconds)
        common.log(f"COPY: {copied:,} events in {copy_seconds:.2f} s = {copy_rate:,.0f} events/s (one connection)")
        correct = correct and copied == EVENTS

    ratio = api_rate / copy_rate
    met = correct and api_rate >= TARGET_RATE and ratio >= TARGET_RATIO
    common.log(f"API/COPY = {ratio:.3f}; correct: {correct}")
    common.report(
        NAME,
        {
            "api_events_per_s": round(api_rate),
            "copy_events_per_s": round(copy_rate),
            "api_seconds": round(api_seconds, 2),
            "copy_seconds": round(copy_seconds, 2),
            "events": EVENTS,
            "batch_size": BATCH,
            "connections": CONCURRENCY,
            "server_workers": workers,
            "customers": CUSTOMERS,
            "customers_created_by": "SQL COPY before timing",
            "batch_p50_ms": round(common.percentile(latencies, 0.5) * 1000),
            "batch_p95_ms": round(common.percentile(latencies, 0.95) * 1000),
            "correct": correct,
        },
        ratio,
        f">= {TARGET_RATE:,} events/s through the API and API/COPY >= {TARGET_RATIO}",
        met,
    )


if __name__ == "__main__":
    main()
