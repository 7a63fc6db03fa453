"""Outgoing webhooks of journey steps: where they may go, and the worker that sends them.

A webhook node's step writes a :class:`~journeys.models.WebhookCall` (the outbox row, with
its idempotency key) in the executor's transaction; :func:`send_due` sends the calls that are
due and moves each enrollment on by ``ok`` or ``failed``.

**Destinations** are checked by :mod:`core.outbound`, shared with the outgoing webhooks of
the event stream: :func:`url_problem` refuses internal hosts unless ``WEBHOOK_ALLOWED_HOSTS``
lists them, and the request goes to the address that was checked (see that module).

**The request.** ``POST`` of the call's payload as JSON, with the headers

- ``Content-Type: application/json``, ``User-Agent: Switchboard-Journeys``;
- ``Idempotency-Key``: the call's key, the same on every retry: receivers drop repeats;
- ``X-Switchboard-Timestamp``: Unix seconds when this attempt was made;
- ``X-Switchboard-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the
  signing secret, of ``"{timestamp}.{body}"`` (the body exactly as received).

A receiver verifies it like this (Python; any language with HMAC-SHA256 works)::

    import hashlib, hmac, time

    def verified(secret: str, headers, body: bytes, tolerance: int = 300) -> bool:
        timestamp = headers["X-Switchboard-Timestamp"]
        if abs(time.time() - int(timestamp)) > tolerance:
            return False  # an old request replayed
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest("sha256=" + expected, headers["X-Switchboard-Signature"])

The secret is ``JOURNEY_WEBHOOK_SECRET``; when it is empty, a secret derived from
``SECRET_KEY`` (stable for the installation, changing if SECRET_KEY is rotated) is used.
Print it for a receiver with ``python manage.py shell -c "from journeys.webhooks import
signing_secret; print(signing_secret())"``.

**Outcomes.** A 2xx answer: ``sent``; a JSON object in the answer is kept on the call and,
when the node has ``store_as``, merged into the journey context under that key; the
enrollment leaves by ``ok``. A timeout, a network error, 5xx or 429: tried again later,
30 s × 2^(attempt − 1) with jitter, at most an hour (longer if ``Retry-After`` asks), up to
the node's ``retries`` (3 by default) after the first attempt. Any other answer (3xx, 4xx),
a refused destination, or the last retry failing: ``failed``, leaving by ``failed``. The
node's ``timeout_seconds`` (``JOURNEY_WEBHOOK_TIMEOUT_SECONDS`` by default) limits each wait
on the network, and reading the answer stops once that much time has passed since the
request began.

**Exactly once, as far as HTTP allows.** Calls are claimed with ``UPDATE … WHERE id IN
(SELECT … FOR UPDATE SKIP LOCKED)``, which counts the attempt and sets a lease, and the claim
is committed before any request. Each outcome is recorded with ``WHERE status = 'pending'
AND attempts = <the attempt claimed>``, in the same transaction as the move of the
enrollment, so a worker that outlived its lease cannot overwrite the result of the worker
that took the call over. A worker killed mid-request leaves the call to be claimed again
when its lease ends: that repeat carries the same ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import outbound
from core.outbound import MAX_RESPONSE_BYTES, Answer, Clients, Refused

from .graph import nodes_by_id
from .models import Enrollment, WebhookCall

logger = logging.getLogger(__name__)

# Graph validation checks a node's URL with this when it is saved.
url_problem = outbound.url_problem

TABLE = WebhookCall._meta.db_table
PENDING, SENT, FAILED = WebhookCall.Status.PENDING, WebhookCall.Status.SENT, WebhookCall.Status.FAILED

DEFAULT_RETRIES = 3
# The first retry waits this long; each further one twice as long, up to BACKOFF_CAP.
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
# Requests of one batch in flight at once (they are I/O; the database is written afterwards).
CONCURRENCY = 16
# The longest node timeout graph validation accepts.
MAX_TIMEOUT_SECONDS = 30
USER_AGENT = "Switchboard-Journeys"
SECRET_LABEL = b"switchboard.journeys.webhook-signing-secret"



# --- Signing ----------------------------------------------------------------------------------------


def signing_secret() -> str:
    """The secret receivers verify ``X-Switchboard-Signature`` with: ``JOURNEY_WEBHOOK_SECRET``,
    or one derived from ``SECRET_KEY`` for this installation."""
    configured = settings.JOURNEY_WEBHOOK_SECRET
    if configured:
        return configured
    return hmac.new(settings.SECRET_KEY.encode(), SECRET_LABEL, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Switchboard-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def encode(payload) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# --- Claiming -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    enrollment_id: int
    node: str
    seq: int
    url: str
    payload: object
    attempt: int
    idempotency_key: str


def _lease(limit: int) -> timedelta:
    """Long enough for a batch of ``limit`` calls with the slowest allowed timeouts."""
    slowest = max(MAX_TIMEOUT_SECONDS, float(settings.JOURNEY_WEBHOOK_TIMEOUT_SECONDS))
    rounds = math.ceil(max(limit, 1) / CONCURRENCY)
    return timedelta(seconds=rounds * (3 * slowest + 5) + 30)


def claim(*, limit: int, now: datetime) -> list[Claimed]:
    """Claim up to ``limit`` due calls for this worker (counting the attempt, setting a lease)
    and commit the claim before returning. Call outside a transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {TABLE} c SET lease_until = %(lease)s, attempts = c.attempts + 1
            WHERE c.id IN (
                SELECT id FROM {TABLE}
                WHERE status = %(pending)s AND next_attempt_at <= %(now)s
                  AND (lease_until IS NULL OR lease_until < %(now)s)
                ORDER BY next_attempt_at, id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            )
            RETURNING c.id, c.enrollment_id, c.node, c.seq, c.url, c.payload, c.attempts, c.idempotency_key
            """,
            {"lease": now + _lease(limit), "pending": PENDING, "now": now, "limit": limit},
        )
        rows = cursor.fetchall()
    calls = []
    for id_, enrollment_id, node, seq, url, payload, attempts, key in rows:
        if isinstance(payload, str):
            payload = json.loads(payload)
        calls.append(Claimed(id_, enrollment_id, node, seq, url, payload, attempts, key))
    return sorted(calls, key=lambda call: call.id)


# --- Sending ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSettings:
    store_as: str = ""
    retries: int = DEFAULT_RETRIES
    timeout: float = 5.0


@dataclass
class Outcome:
    """What became of one attempt, as :func:`record` writes it."""

    call: Claimed
    status: str
    port: str | None = None  # "ok" or "failed" once the call is settled
    response_status: int | None = None
    response: dict | None = None
    error: str = ""
    next_attempt_at: datetime | None = None
    context: dict | None = None


def _node_settings(calls: list[Claimed]) -> tuple[dict[int, NodeSettings], set[int]]:
    """Each call's node settings, read from its enrollment's version; and the calls whose
    enrollment has left the journey."""
    enrollments = {
        row["id"]: row
        for row in Enrollment.objects.filter(id__in={call.enrollment_id for call in calls}).values(
            "id", "version_id", "ended_at"
        )
    }
    from .executor import version_graph

    default_timeout = float(settings.JOURNEY_WEBHOOK_TIMEOUT_SECONDS)
    found: dict[int, NodeSettings] = {}
    gone: set[int] = set()
    for call in calls:
        enrollment = enrollments.get(call.enrollment_id)
        if enrollment is None or enrollment["ended_at"] is not None:
            gone.add(call.id)
        graph = version_graph(enrollment["version_id"]) if enrollment else {}
        config = (nodes_by_id(graph).get(call.node) or {}).get("config") or {}
        retries, timeout = config.get("retries"), config.get("timeout_seconds")
        found[call.id] = NodeSettings(
            store_as=config.get("store_as") or "",
            retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else DEFAULT_RETRIES,
            timeout=float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
            else default_timeout,
        )
    return found, gone


def backoff(attempt: int, *, retry_after: float | None = None) -> timedelta:
    """How long to wait after failed attempt number ``attempt`` (1 for the first)."""
    base = min(BACKOFF_BASE * (2 ** max(attempt - 1, 0)), BACKOFF_CAP)
    # Jitter spreads the retries of calls that failed together (an outage) over time.
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    return min(delay, BACKOFF_CAP)


def _retry_after(value: str | None, *, now: datetime) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max((parsedate_to_datetime(value) - now).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def post(call: Claimed, *, timeout: float, clients: Clients) -> Answer:
    """POST ``call`` to the address its host resolved to when checked. Raises :class:`Refused`,
    ``OSError`` (name resolution) or ``httpx.HTTPError`` (timeouts, network errors)."""
    body = encode(call.payload)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": call.idempotency_key,
        "X-Switchboard-Timestamp": timestamp,
        "X-Switchboard-Signature": signature(signing_secret(), timestamp, body),
    }
    return outbound.post(call.url, body=body, headers=headers, timeout=timeout, clients=clients)


def _json_object(answer: Answer) -> dict | None:
    if answer.truncated or not answer.body:
        return None
    try:
        value = json.loads(answer.body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _describe(error: BaseException, *, timeout: float) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"No answer within {timeout:g} s ({type(error).__name__})."
    if isinstance(error, OSError):
        return f"Could not resolve the host: {error}."
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def attempt(call: Claimed, node: NodeSettings, *, now: datetime, clients: Clients) -> Outcome:
    """Send one claimed call and decide what becomes of it (nothing is written here)."""

    def retry_or_fail(error: str, status: int | None = None, retry_after: float | None = None) -> Outcome:
        if call.attempt <= node.retries:
            return Outcome(call, PENDING, response_status=status, error=error,
                           next_attempt_at=now + backoff(call.attempt, retry_after=retry_after))
        tries = f"{call.attempt} attempt{'s' if call.attempt != 1 else ''}"
        return Outcome(call, FAILED, port="failed", response_status=status, error=f"{error} Gave up after {tries}.")

    try:
        answer = post(call, timeout=node.timeout, clients=clients)
    except Refused as refused:
        return Outcome(call, FAILED, port="failed", error=str(refused))
    except (httpx.HTTPError, OSError) as error:
        return retry_or_fail(_describe(error, timeout=node.timeout))
    except Exception as error:  # noqa: BLE001 - recorded on the call, and retried a bounded number of times
        logger.exception("webhook call %s failed unexpectedly", call.id)
        return retry_or_fail(_describe(error, timeout=node.timeout))
    status = answer.status
    if 200 <= status < 300:
        response = _json_object(answer)
        context = {node.store_as: response} if node.store_as else None
        note = f"The answer was larger than {MAX_RESPONSE_BYTES // 1024} KB and was not kept." if answer.truncated else ""
        return Outcome(call, SENT, port="ok", response_status=status, response=response, error=note, context=context)
    snippet = answer.body[:300].decode("utf-8", "replace").strip()
    error = f"HTTP {status}" + (f": {snippet}" if snippet else "") + "."
    if status == 429 or status >= 500:
        return retry_or_fail(error, status, _retry_after(answer.headers.get("Retry-After"), now=now))
    if 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed (the new address was not checked)."
    return Outcome(call, FAILED, port="failed", response_status=status, error=error)


# --- Recording ----------------------------------------------------------------------------------------


def _resumes(outcomes: list[Outcome]) -> list:
    from .executor import Resume

    return [
        Resume(enrollment_id=o.call.enrollment_id, seq=o.call.seq, node=o.call.node, port=o.port, context=o.context)
        for o in outcomes
        if o.port
    ]


def _write(outcomes: list[Outcome], *, now: datetime) -> set[int]:
    """Write the outcomes still fenced by their attempt; returns the ids written."""
    rows = [
        {
            "id": o.call.id,
            "attempts": o.call.attempt,
            "status": o.status,
            "response_status": o.response_status,
            "response": o.response,
            "last_error": o.error,
            "next_attempt_at": o.next_attempt_at.isoformat() if o.next_attempt_at else None,
            "finished_at": now.isoformat() if o.status != PENDING else None,
        }
        for o in outcomes
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {TABLE} c SET
                status = r.status, response_status = r.response_status, response = r.response,
                last_error = r.last_error, next_attempt_at = coalesce(r.next_attempt_at, c.next_attempt_at),
                finished_at = r.finished_at, lease_until = NULL
            FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
                id bigint, attempts int, status text, response_status int, response jsonb, last_error text,
                next_attempt_at timestamptz, finished_at timestamptz)
            WHERE c.id = r.id AND c.status = %(pending)s AND c.attempts = r.attempts
            RETURNING c.id
            """,
            {"rows": json.dumps(rows), "pending": PENDING},
        )
        return {row[0] for row in cursor.fetchall()}


def _write_and_resume(outcomes: list[Outcome], *, now: datetime) -> int:
    from .executor import resume_many

    with transaction.atomic():
        written = _write(outcomes, now=now)
        resumes = _resumes([o for o in outcomes if o.call.id in written])
        if resumes:
            resume_many(resumes, now=now)
    return len(written)


def record(outcomes: list[Outcome], *, now: datetime) -> int:
    """Write ``outcomes`` and move on the enrollments of settled calls, in one transaction.

    An outcome whose call was claimed again since (its lease ran out) is dropped. If moving
    the enrollments fails, each outcome is recorded on its own; one whose enrollment still
    cannot move is settled anyway (so the call is not sent again and again) and the
    enrollment stays waiting at the node. Returns how many outcomes were written."""
    if not outcomes:
        return 0
    try:
        return _write_and_resume(outcomes, now=now)
    except Exception:
        logger.exception("recording %d webhook outcomes failed; recording them one by one", len(outcomes))
    count = 0
    for outcome in outcomes:
        try:
            count += _write_and_resume([outcome], now=now)
        except Exception as error:  # noqa: BLE001 - logged; the call is settled below
            logger.exception("webhook call %s: the enrollment could not move on", outcome.call.id)
            outcome.error = f"{outcome.error} The journey could not move on: {error}".strip()
            outcome.port = None
            with transaction.atomic():
                count += len(_write([outcome], now=now))
    return count


# --- The worker -------------------------------------------------------------------------------------


def send_due(*, limit: int = 100, now: datetime | None = None) -> dict[str, int]:
    """Claim up to ``limit`` due calls, send them, record each outcome and move each settled
    enrollment on. Safe to run in parallel and twice. Call outside a transaction.

    ``now`` (for tests) fixes the clock: what is due, and when retries fall due; otherwise
    retries are scheduled from when each answer came."""
    fixed = now
    now = now or timezone.now()
    calls = claim(limit=limit, now=now)
    totals = {"claimed": len(calls), "sent": 0, "retrying": 0, "failed": 0, "recorded": 0}
    if not calls:
        return totals
    nodes, gone = _node_settings(calls)
    outcomes: list[Outcome] = []
    to_send = []
    for call in calls:
        if call.id in gone:
            # The journey no longer waits for it (stopped, exited, converted): do not call out.
            outcomes.append(Outcome(call, FAILED, error="Not sent: the customer had left the journey."))
        else:
            to_send.append(call)
    clients = Clients()
    try:
        with ThreadPoolExecutor(max_workers=min(CONCURRENCY, max(len(to_send), 1))) as pool:
            outcomes += pool.map(
                lambda call: attempt(call, nodes[call.id], now=fixed or timezone.now(), clients=clients), to_send
            )
    finally:
        clients.close()
    for outcome in outcomes:
        key = {SENT: "sent", FAILED: "failed", PENDING: "retrying"}[outcome.status]
        totals[key] += 1
    totals["recorded"] = record(outcomes, now=fixed or timezone.now())
    return totals


def send_pending(*, budget_seconds: float = 40, limit: int = 100) -> dict[str, int]:
    """Run :func:`send_due` until nothing is due or the time budget is spent (the minute tick
    and :func:`send_soon`'s task call this)."""
    started = time.monotonic()
    totals: dict[str, int] = {}
    while time.monotonic() - started < budget_seconds:
        result = send_due(limit=limit)
        for key, value in result.items():
            totals[key] = totals.get(key, 0) + value
        if result["claimed"] < limit:
            break
    return totals


def send_soon() -> None:
    """Ask a worker to send due webhook calls now rather than at the next minute's tick.

    The executor registers it with ``transaction.on_commit`` after writing calls."""
    from django_q.tasks import async_task

    async_task("journeys.tasks.webhooks_send", task_name="journey-webhooks", group="journey-webhooks")
