"""Delivering each endpoint's outbox, strictly in order.

One sender at a time per endpoint: :func:`deliver_endpoint` takes the endpoint's lease
(``UPDATE … WHERE lease_until < now``, committed before any request) under a token of its
own, and renews it with each outcome it records. A worker killed mid-request leaves the
lease to run out (``WEBHOOK_LEASE_SECONDS``), and the next sender takes the endpoint over,
sending the same message again with the same ``webhook-id``, which receivers dedupe on.

The head of the outbox (the endpoint's lowest pending message id) must be delivered before
the next message is sent. A 2xx answer delivers it; a timeout, a network error or any other
answer is a failure, retried after the next wait of ``WEBHOOK_RETRY_SCHEDULE``; while it
waits, the endpoint's later messages wait behind it. A message that fails after the last
wait is given up, and its endpoint disabled with the reason: enabling it again resumes
from that message. Every attempt is logged (:class:`~webhooks.models.Attempt`).

Outcomes are fenced: a message is updated only while it is pending with the attempt count
its sender read, and only by the sender still holding the lease.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.audit import audit
from core.outbound import Clients, Refused, post

from . import signing
from .models import Attempt, Endpoint, Message

logger = logging.getLogger(__name__)

USER_AGENT = "Switchboard-Webhooks"
# Enough of an answer to see what a receiver said; the log keeps this many characters.
EXCERPT_CHARS = 500
# A queued kick older than this is taken as lost (a worker died with it): kick again.
KICK_STALE = timedelta(minutes=5)
# Endpoints delivered at once by one task (each is I/O bound and strictly sequential).
CONCURRENCY = 8
ENDPOINTS = Endpoint._meta.db_table
MESSAGES = Message._meta.db_table


@dataclass
class Outcome:
    ok: bool
    status_code: int | None = None
    latency_ms: int | None = None
    response: str = ""
    error: str = ""
    at: datetime | None = None  # when the request began


# --- The lease --------------------------------------------------------------------------------------


def _lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)


def claim(endpoint_id: int, token: uuid.UUID) -> bool:
    """Take the endpoint for this sender, unless another holds it (or it is disabled).
    Commits at once (call outside a transaction)."""
    now = timezone.now()
    return bool(
        Endpoint.objects.filter(pk=endpoint_id, status=Endpoint.Status.ENABLED)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_token=token, lease_until=_lease_end(now))
    )


def release(endpoint_id: int, token: uuid.UUID) -> None:
    Endpoint.objects.filter(pk=endpoint_id, lease_token=token).update(lease_token=None, lease_until=None)


# --- One attempt ------------------------------------------------------------------------------------


def secrets_for(endpoint: Endpoint, now: datetime) -> list[str]:
    """The secrets to sign with: the current one, and the previous one during its grace period."""
    found = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        found.append(endpoint.previous_secret)
    return found


def _excerpt(body: bytes) -> str:
    return body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS].replace("\x00", "")


def attempt(endpoint: Endpoint, message: Message, *, clients: Clients) -> Outcome:
    """Send ``message`` once (nothing is written here)."""
    body = signing.encode(message.payload)
    began = timezone.now()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signatures(
            secrets_for(endpoint, timezone.now()), msg_id=message.webhook_id, timestamp=timestamp, body=body),
    }
    timeout = float(settings.WEBHOOK_TIMEOUT_SECONDS)
    outcome = _attempt(endpoint.url, body, headers, timeout=timeout, clients=clients, message=message)
    outcome.at = began
    return outcome


def _attempt(url: str, body: bytes, headers: dict, *, timeout: float, clients: Clients, message: Message) -> Outcome:
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        answer = post(url, body=body, headers=headers, timeout=timeout, clients=clients,
                      max_bytes=EXCERPT_CHARS * 4)
    except Refused as refused:
        return Outcome(False, latency_ms=elapsed(), error=str(refused))
    except httpx.TimeoutException as error:
        return Outcome(False, latency_ms=elapsed(), error=f"No answer within {timeout:g} s ({type(error).__name__}).")
    except OSError as error:
        return Outcome(False, latency_ms=elapsed(), error=f"Could not resolve the host: {error}.")
    except httpx.HTTPError as error:
        return Outcome(False, latency_ms=elapsed(), error=f"{type(error).__name__}: {error}".rstrip(": "))
    except Exception as error:  # noqa: BLE001 - logged, and retried like any failure
        logger.exception("webhook message %s failed unexpectedly", message.pk)
        return Outcome(False, latency_ms=elapsed(), error=f"{type(error).__name__}: {error}".rstrip(": "))
    ok = 200 <= answer.status < 300
    return Outcome(ok, status_code=answer.status, latency_ms=elapsed(), response=_excerpt(answer.body),
                   error="" if ok else f"HTTP {answer.status}")


# --- Recording --------------------------------------------------------------------------------------


def _describe_wait(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def record(endpoint: Endpoint, message: Message, outcome: Outcome, *, token: uuid.UUID) -> bool:
    """Log the attempt and settle or reschedule the message, in one transaction; give the
    message up and disable the endpoint after the last retry. Returns False when this
    sender no longer holds the endpoint (the message is left to the one that does)."""
    schedule = list(settings.WEBHOOK_RETRY_SCHEDULE)
    now = timezone.now()
    with transaction.atomic():
        held = Endpoint.objects.filter(pk=endpoint.pk, lease_token=token).update(lease_until=_lease_end(now))
        Attempt.objects.create(
            message_id=message.pk, endpoint_id=endpoint.pk, attempted_at=outcome.at or now, succeeded=outcome.ok,
            status_code=outcome.status_code, latency_ms=outcome.latency_ms, response=outcome.response,
            error=outcome.error,
        )
        if not held:
            return False
        fence = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING, attempts=message.attempts)
        common = {
            "attempts": F("attempts") + 1, "last_attempt_at": now, "last_status_code": outcome.status_code,
            "last_latency_ms": outcome.latency_ms, "last_response": outcome.response, "last_error": outcome.error,
        }
        if outcome.ok:
            if fence.update(status=Message.Status.DELIVERED, delivered_at=now, failures=0, **common):
                Endpoint.objects.filter(pk=endpoint.pk).update(last_delivery_at=now)
            return True
        failures = message.failures + 1
        if failures <= len(schedule):
            fence.update(failures=failures, next_attempt_at=now + timedelta(seconds=schedule[failures - 1]), **common)
            return True
        if fence.update(status=Message.Status.FAILED, failures=failures, **common):
            reason = (
                f"Disabled automatically: message {message.webhook_id} ({message.event_type}) failed "
                f"{failures} times in a row over {_describe_wait(sum(schedule))}; last error: {outcome.error}"
            )
            if Endpoint.objects.filter(pk=endpoint.pk, status=Endpoint.Status.ENABLED).update(
                status=Endpoint.Status.DISABLED, disabled_reason=reason, disabled_at=now, updated_at=now,
            ):
                audit(actor="system", action="webhook.auto_disable", object_type="webhook_endpoint",
                      object_id=endpoint.pk, details={"reason": reason, "message": message.pk})
        return True


# --- Delivering an endpoint ------------------------------------------------------------------------


def _head(endpoint_id: int) -> Message | None:
    return Message.objects.filter(endpoint_id=endpoint_id, status=Message.Status.PENDING).order_by("id").first()


def deliver_endpoint(endpoint_id: int, *, budget_seconds: float = 40, clients: Clients | None = None) -> dict:
    """Deliver the endpoint's due messages in order until its head must wait, the outbox is
    empty or the time budget is spent. Does nothing while another sender holds it. Safe to
    run in parallel and twice. Call outside a transaction."""
    totals = {"delivered": 0, "failed": 0}
    token = uuid.uuid4()
    own_clients = clients is None
    clients = clients or Clients()
    started = time.monotonic()
    try:
        while claim(endpoint_id, token):
            try:
                more = _deliver_held(endpoint_id, token, totals, started=started, budget_seconds=budget_seconds,
                                     clients=clients)
            finally:
                release(endpoint_id, token)
            # A message enqueued after the last look, whose kick found the lease taken, is
            # sent now rather than at the next minute.
            if not more or time.monotonic() - started >= budget_seconds:
                break
            head = _head(endpoint_id)
            if head is None or head.next_attempt_at > timezone.now():
                break
    finally:
        if own_clients:
            clients.close()
    return totals


def _deliver_held(endpoint_id: int, token: uuid.UUID, totals: dict, *, started: float, budget_seconds: float,
                  clients: Clients) -> bool:
    """The loop while holding the lease; returns whether the outbox may have more that is due."""
    while time.monotonic() - started < budget_seconds:
        endpoint = Endpoint.objects.filter(pk=endpoint_id, lease_token=token,
                                           status=Endpoint.Status.ENABLED).first()
        if endpoint is None:
            return False
        message = _head(endpoint_id)
        if message is None:
            return True
        if message.next_attempt_at > timezone.now():
            return False
        outcome = attempt(endpoint, message, clients=clients)
        if not record(endpoint, message, outcome, token=token):
            return False
        totals["delivered" if outcome.ok else "failed"] += 1
        if not outcome.ok:
            return False
    return False


def due_endpoints(*, now: datetime | None = None) -> list[int]:
    """Enabled endpoints no sender holds whose outbox head is due."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT w.id FROM {ENDPOINTS} w
            WHERE w.status = %(enabled)s AND (w.lease_until IS NULL OR w.lease_until < %(now)s)
              AND (SELECT m.next_attempt_at FROM {MESSAGES} m
                   WHERE m.endpoint_id = w.id AND m.status = %(pending)s ORDER BY m.id LIMIT 1) <= %(now)s
            ORDER BY w.id
            """,
            {"enabled": Endpoint.Status.ENABLED, "pending": Message.Status.PENDING, "now": now},
        )
        return [row[0] for row in cursor.fetchall()]


def _in_thread(endpoint_id: int, budget_seconds: float) -> dict:
    try:
        return deliver_endpoint(endpoint_id, budget_seconds=budget_seconds)
    finally:
        connection.close()  # each thread has a connection of its own


def deliver_due(*, budget_seconds: float = 40) -> dict:
    """Deliver every endpoint that has something due, several at once (the minute's catch-up:
    retries that fell due, kicks that were lost)."""
    ids = due_endpoints()
    totals = {"endpoints": len(ids), "delivered": 0, "failed": 0}
    if not ids:
        return totals
    with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(ids))) as pool:
        for result in pool.map(lambda pk: _in_thread(pk, budget_seconds), ids):
            totals["delivered"] += result["delivered"]
            totals["failed"] += result["failed"]
    return totals


# --- Kicks ------------------------------------------------------------------------------------------


def kick(endpoint_ids) -> list[int]:
    """Queue a task to deliver each endpoint now, unless one is already queued for it (one
    task sends all of an endpoint's due messages). Call after the messages are committed."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {ENDPOINTS} SET kicked_at = %(now)s
            WHERE id = ANY(%(ids)s::bigint[]) AND status = %(enabled)s
              AND (kicked_at IS NULL OR kicked_at < %(stale)s)
            RETURNING id
            """,
            {"now": now, "ids": sorted(set(endpoint_ids)), "enabled": Endpoint.Status.ENABLED,
             "stale": now - KICK_STALE},
        )
        kicked = sorted(row[0] for row in cursor.fetchall())
    from django_q.tasks import async_task

    for endpoint_id in kicked:
        async_task("webhooks.tasks.send", endpoint_id, task_name=f"webhooks-{endpoint_id}", group="webhooks")
    return kicked
