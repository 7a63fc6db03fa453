"""The dispatcher: claim due deliveries, re-check the policy, render, send, record.

Exactly-once, as far as a provider allows it:

- A batch is claimed with ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`` and
  committed as ``sending`` with a lease *before* any provider is called, so two workers
  never hold the same delivery.
- The send policy is re-checked in that same transaction, one customer at a time across
  workers, so a delivery committed as ``sending`` has passed it and counts towards the
  frequency cap of whoever re-checks that customer next.
- Outcomes are recorded with ``WHERE status = 'sending'``: a worker that outlived its lease
  cannot overwrite what another worker settled.
- A delivery still ``sending`` after its lease expired belonged to a worker that died
  mid-batch. Before it is sent again, its provider is asked whether it already accepted it
  (``Provider.lookup``: the sandbox by delivery id, Twilio by recipient, body and time);
  if so it is recorded as sent with that id, otherwise it is sent. Providers that cannot
  answer (SMTP, push) get the same idempotency key again (Message-ID, push collapse key),
  which makes a resend at-least-once, limited to the messages in flight at the crash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from customers.services.profiles import devices_remove

from .links import email_finish, links_in, links_store, message_links
from .models import Campaign, DeliveryStatus, SuppressionReason
from .personalisation import TemplateProblem, compile_content, customer_context, with_opt_out
from .policy import (
    CAP_LOCK_SQL,
    RECENT_SQL,
    ZONES_SQL,
    PolicySettings,
    defer_sql,
    joins_sql,
    local_zone_sql,
    reason_sql,
)
from .providers import OutgoingMessage, SendResult, provider_for
from .transitions import deliveries_transition

logger = logging.getLogger(__name__)

SENDING, PLANNED = DeliveryStatus.SENDING, DeliveryStatus.PLANNED
# What a claim changes besides the status: the lease, and the attempt it starts.
CLAIM_SETS = {"lease_until": "%(lease)s", "attempts": "d.attempts + 1"}


def _lease() -> timedelta:
    return timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)


def _rows(columns: str) -> str:
    """A transition source reading the ``rows`` parameter: a JSON array of objects."""
    return f"SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({columns})"


def dispatch_soon() -> None:
    """Ask the workers to send now rather than at the next minute's sweep."""
    from django_q.tasks import async_task

    for _ in range(max(1, settings.Q_CLUSTER.get("workers", 1))):
        async_task("campaigns.tasks.dispatch", task_name="dispatch", group="dispatch")


# --- Claiming ----------------------------------------------------------------------------------


def claim(*, limit: int, now: datetime) -> list[int]:
    """Claim up to ``limit`` due deliveries for this worker; committed before returning.

    The claimed deliveries are re-checked against the policy before the commit (see
    :func:`recheck`); returns the ids still to send.
    """
    return _claim(limit=limit, now=now)[1]


def _claim(*, limit: int, now: datetime) -> tuple[int, list[int]]:
    """:func:`claim`, also returning how many were claimed (re-checked away or not)."""
    lease_until = now + _lease()
    active = [Campaign.Status.SENDING, Campaign.Status.TESTING]
    ids: list[int] = []
    with transaction.atomic(), connection.cursor() as cursor:
        # Throttled campaigns first, each within what is left of its per-minute allowance.
        cursor.execute(
            """
            SELECT c.id, c.throttle_per_minute - (
                SELECT count(*) FROM campaigns_delivery d
                WHERE d.campaign_id = c.id AND (d.sent_at > %(now)s - interval '1 minute' OR d.status = %(sending)s))
            FROM campaigns_campaign c
            WHERE c.status = ANY(%(active)s) AND c.throttle_per_minute IS NOT NULL
            """,
            {"now": now, "sending": SENDING, "active": active},
        )
        allowances = [(campaign_id, left) for campaign_id, left in cursor.fetchall() if left > 0]
        for campaign_id, left in allowances:
            if len(ids) >= limit:
                break
            ids += deliveries_transition(
                to=SENDING, only_from=[PLANNED], sets=CLAIM_SETS, now=now, return_ids=True,
                source="""
                    SELECT id FROM campaigns_delivery
                    WHERE status = %(planned)s AND due_at <= %(now)s AND campaign_id = %(campaign)s
                    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
                params={"lease": lease_until, "planned": PLANNED, "campaign": campaign_id,
                        "limit": min(left, limit - len(ids))},
            ).ids
        if len(ids) < limit:
            ids += deliveries_transition(
                to=SENDING, only_from=[PLANNED], sets=CLAIM_SETS, now=now, return_ids=True,
                source="""
                    SELECT q.id FROM campaigns_delivery q
                    LEFT JOIN campaigns_campaign c ON c.id = q.campaign_id
                    WHERE q.status = %(planned)s AND q.due_at <= %(now)s
                      AND (q.campaign_id IS NULL OR (c.status = ANY(%(active)s) AND c.throttle_per_minute IS NULL))
                    ORDER BY q.due_at LIMIT %(limit)s
                    FOR UPDATE OF q SKIP LOCKED""",
                params={"lease": lease_until, "planned": PLANNED, "active": active, "limit": limit - len(ids)},
            ).ids
        return len(ids), recheck(ids, now=now)


def claim_expired(*, limit: int, now: datetime) -> list[int]:
    """Take over deliveries whose worker died while sending them (their lease expired).

    Re-checked like :func:`claim`; returns the ids still to send.
    """
    with transaction.atomic():
        # Still sending, so no status change: the takeover renews the lease and keeps
        # updated_at, the moment of the claim that provider lookups search from.
        taken = deliveries_transition(
            to=SENDING, only_from=[SENDING], sets={"lease_until": "%(lease)s"}, touch=False, now=now,
            return_ids=True,
            source="""
                SELECT id FROM campaigns_delivery
                WHERE status = %(sending)s AND lease_until < %(now)s
                ORDER BY lease_until LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
            params={"lease": now + _lease(), "sending": SENDING, "limit": limit},
        )
        return recheck(taken.ids, now=now)


# --- The policy, again, just before sending ---------------------------------------------------


def recheck(ids: list[int], *, now: datetime) -> list[int]:
    """Apply the send policy to claimed deliveries as things stand now.

    Suppresses what may no longer be sent (an unsubscribe since launch, the frequency cap
    counting what was sent meanwhile and what other workers are sending), puts back what
    quiet hours now forbid, and returns the ids still to send. Call it in the transaction
    that claimed ``ids``: what it lets through must stay ``sending`` from the moment it
    counted, so that the next worker to re-check the same customer counts it.
    """
    if not ids:
        return []
    params = {**PolicySettings.current().params(), "now": now, "ids": ids, "rechecking": ids, "sending": SENDING}
    judged = f"""
        WITH {ZONES_SQL}, {RECENT_SQL},
        cand AS (
            SELECT d.id, d.customer_id, d.channel, d.topic_id,
                   row_number() OVER (PARTITION BY d.customer_id ORDER BY d.id) - 1 AS earlier
            FROM campaigns_delivery d WHERE d.id = ANY(%(ids)s) AND d.status = %(sending)s
        )
        SELECT cand.id, {reason_sql(cap_counts="(coalesce(recent.sent, 0) + cand.earlier)")} AS reason,
               CASE WHEN t.is_transactional THEN %(now)s ELSE {defer_sql("%(now)s", local_zone_sql())} END AS due
        FROM cand {joins_sql()}
        LEFT JOIN recent ON recent.customer_id = cand.customer_id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CAP_LOCK_SQL, {"ids": ids})
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS dispatch_judged (id bigint, reason text, due timestamptz)")
        cursor.execute("TRUNCATE dispatch_judged")
        cursor.execute(f"INSERT INTO dispatch_judged {judged}", params)
        # Quiet hours: back to the queue until they end, as if never claimed.
        deliveries_transition(
            to=PLANNED, only_from=[SENDING], now=now,
            source="SELECT id, due FROM dispatch_judged WHERE reason IS NULL AND due > %(now)s",
            sets={"due_at": "src.due", "lease_until": "NULL", "attempts": "d.attempts - 1"},
        )
        deliveries_transition(
            to=DeliveryStatus.SUPPRESSED, only_from=[SENDING], now=now, reason="src.reason",
            source="SELECT id, reason FROM dispatch_judged WHERE reason IS NOT NULL",
            sets={"reason": "src.reason", "lease_until": "NULL"},
        )
        cursor.execute("SELECT id FROM dispatch_judged WHERE reason IS NULL AND due <= %s ORDER BY id", [now])
        return [row[0] for row in cursor.fetchall()]


# --- Building messages --------------------------------------------------------------------------


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class RenderFailure:
    """A claimed delivery whose content cannot be rendered for its customer: it is suppressed
    with the reason ``render_failed`` and the error, never sent half-made."""

    delivery_id: int
    error: str


def build(ids: list[int]) -> tuple[list[OutgoingMessage], list[SendResult | RenderFailure]]:
    """Render the claimed deliveries (each template compiled once per batch).

    A delivery whose content cannot be rendered comes back as a :class:`RenderFailure`; one
    that cannot be sent at all (no push device left) as a permanent :class:`SendResult`.
    """
    if not ids:
        return [], []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.id, d.customer_id, d.channel, d.variant_id, d.payload, ct.body, t.is_transactional,
                   c.external_id, c.email, c.phone, c.first_name, c.last_name, c.locale, c.timezone,
                   c.lifecycle_stage, c.attributes, d.updated_at, d.provider
            FROM campaigns_delivery d
            JOIN customers_customer c ON c.id = d.customer_id
            JOIN customers_topic t ON t.id = d.topic_id
            LEFT JOIN campaigns_content ct ON ct.variant_id = d.variant_id AND ct.channel = d.channel
            WHERE d.id = ANY(%s) ORDER BY d.id
            """,
            [ids],
        )
        rows = cursor.fetchall()
        push_customers = [row[1] for row in rows if row[2] == "push"]
        devices = defaultdict(list)
        if push_customers:
            cursor.execute(
                "SELECT customer_id, id, kind, token FROM customers_device WHERE customer_id = ANY(%s) ORDER BY id",
                [push_customers],
            )
            for customer_id, device_id, kind, token in cursor.fetchall():
                devices[customer_id].append((device_id, kind, token))

    compiled: dict = {}
    messages, failures, pending_email = [], [], []
    for (delivery_id, customer_id, channel, variant_id, payload, content_body, transactional,
         external_id, email, phone, first_name, last_name, locale, tz_name, stage, attributes, claimed_at,
         pinned) in rows:
        # Django's cursor hands jsonb back as text.
        content_body, payload, attributes = (_json(content_body), _json(payload), _json(attributes))
        body = content_body if content_body is not None else (payload or {}).get(channel)
        key = (variant_id, channel) if content_body is not None else json.dumps(body, sort_keys=True)
        marketing = not transactional
        try:
            if body is None:
                raise TemplateProblem("content", f"no {channel} content")
            if key not in compiled:
                try:
                    compiled[key] = compile_content(channel, body)
                except TemplateProblem as problem:
                    compiled[key] = problem  # the same answer for the rest of the batch
            if isinstance(compiled[key], TemplateProblem):
                raise compiled[key]
            links = message_links(delivery_id=delivery_id, customer_id=customer_id, lazy=channel != "email")
            customer = {
                "id": customer_id, "external_id": external_id, "email": email, "phone": phone,
                "first_name": first_name, "last_name": last_name, "locale": locale, "timezone": tz_name,
                "lifecycle_stage": stage, "attributes": attributes,
            }
            content = compiled[key].render(customer_context(customer, links=links))
            content = with_opt_out(channel, content, marketing=marketing)
        except TemplateProblem as problem:
            failures.append(RenderFailure(delivery_id, f"{channel} {problem}"))
            continue
        to = {"email": email, "push": str(customer_id)}.get(channel, phone)
        message = OutgoingMessage(
            delivery_id=delivery_id, customer_id=customer_id, channel=channel, to=to, content=content,
            idempotency_key=f"switchboard-delivery-{delivery_id}", devices=devices.get(customer_id, []),
            marketing=marketing, claimed_at=claimed_at, provider=pinned,
        )
        if channel == "email":
            pending_email.append((message, links))
        if channel == "push" and not message.devices:
            failures.append(SendResult(delivery_id, False, error="no push device left", permanent=True))
            continue
        messages.append(message)
    if pending_email:
        urls = {url for message, _ in pending_email for url in links_in(message.content.get("html", ""))}
        link_ids = links_store(urls)
        for message, links in pending_email:
            message.content = email_finish(
                message.content, delivery_id=message.delivery_id, link_ids=link_ids, links=links,
                marketing=message.marketing,
            )
            message.headers = message.content.pop("headers", {})
    return messages, failures


# --- Recording outcomes -----------------------------------------------------------------------


def _backoff(attempts: int, retry_after: float | None) -> timedelta:
    seconds = max(retry_after or 0, min(30 * 2 ** max(attempts - 1, 0), 3600))
    return timedelta(seconds=seconds)


def record(results: list[SendResult | RenderFailure], *, provider_names: dict[int, str], now: datetime) -> dict[str, int]:
    """Record provider outcomes and render failures for deliveries still ``sending``;
    returns counts by outcome."""
    unrendered = [
        {"id": r.delivery_id, "reason": f"{SuppressionReason.RENDER_FAILED}: {r.error}"[:255]}
        for r in results if isinstance(r, RenderFailure)
    ]
    results = [r for r in results if not isinstance(r, RenderFailure)]
    sent = [
        {"id": r.delivery_id, "provider": provider_names.get(r.delivery_id, ""), "pid": r.provider_message_id}
        for r in results if r.ok
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, attempts FROM campaigns_delivery WHERE id = ANY(%s)",
            [[r.delivery_id for r in results if not r.ok]],
        )
        attempts = dict(cursor.fetchall())
    failed, retry = [], []
    for r in results:
        if r.ok:
            continue
        tries = attempts.get(r.delivery_id, 1)
        if r.permanent or tries >= settings.DELIVERY_MAX_ATTEMPTS:
            reason = r.error if r.permanent else f"gave up after {tries} attempts: {r.error}"
            failed.append({"id": r.delivery_id, "reason": reason[:255], "provider": provider_names.get(r.delivery_id, "")})
        else:
            retry.append({"id": r.delivery_id, "reason": r.error[:255], "due": (now + _backoff(tries, r.retry_after)).isoformat()})
    dead = sorted({device for r in results for device in r.dead_devices})
    with transaction.atomic():
        if sent:
            deliveries_transition(
                to=DeliveryStatus.SENT, only_from=[SENDING], now=now, params={"rows": json.dumps(sent)},
                source=_rows("id bigint, provider text, pid text"),
                sets={"sent_at": "%(now)s", "provider": "src.provider", "provider_message_id": "src.pid",
                      "lease_until": "NULL", "reason": "''"},
            )
        if failed:
            deliveries_transition(
                to=DeliveryStatus.FAILED, only_from=[SENDING], now=now, params={"rows": json.dumps(failed)},
                source=_rows("id bigint, reason text, provider text"), reason="src.reason",
                sets={"failed_at": "%(now)s", "reason": "src.reason", "provider": "src.provider", "lease_until": "NULL"},
            )
        if unrendered:
            deliveries_transition(
                to=DeliveryStatus.SUPPRESSED, only_from=[SENDING], now=now, params={"rows": json.dumps(unrendered)},
                source=_rows("id bigint, reason text"), reason="src.reason",
                sets={"reason": "src.reason", "lease_until": "NULL"},
            )
        if retry:
            deliveries_transition(
                to=PLANNED, only_from=[SENDING], now=now, params={"rows": json.dumps(retry)},
                source=_rows("id bigint, reason text, due timestamptz"),
                sets={"due_at": "src.due", "reason": "src.reason", "lease_until": "NULL"},
            )
        if dead:
            # The customer can no longer be reached on that device: the removal goes on their
            # timeline, and segments that read reachability hear of it.
            devices_remove(device_ids=dead, reason="the push service no longer accepts this token", source="delivery")
    return {"sent": len(sent), "failed": len(failed), "retry": len(retry), "suppressed": len(unrendered)}


# --- The loop -----------------------------------------------------------------------------------


def _send(messages: list[OutgoingMessage], *, settle: bool) -> tuple[list[SendResult], dict[int, str]]:
    """Send ``messages`` grouped by channel; with ``settle``, first ask providers what they already have."""
    results: list[SendResult] = []
    provider_names: dict[int, str] = {}
    by_channel = defaultdict(list)
    for message in messages:
        by_channel[(message.channel, message.provider)].append(message)
    for (channel, pinned), group in by_channel.items():
        provider = provider_for(channel, pinned or None)
        try:
            for message in group:
                provider_names[message.delivery_id] = provider.name
            if settle and provider.supports_lookup:
                try:
                    already = provider.lookup(group)
                except Exception:
                    # Unknown whether they went out: leave them sending, to be settled again
                    # when this lease expires, rather than risk a second send.
                    logger.exception("%s lookup failed; %d deliveries wait for the next try", provider.name, len(group))
                    continue
                results += [SendResult(d, True, provider_message_id=pid) for d, pid in already.items()]
                group = [m for m in group if m.delivery_id not in already]
            if group:
                try:
                    results += provider.send_batch(group)
                except Exception as exc:  # a provider bug or outage: retry later, never lose the rows
                    logger.exception("%s provider failed on a batch of %d", provider.name, len(group))
                    results += [SendResult(m.delivery_id, False, error=f"provider error: {exc}") for m in group]
        finally:
            provider.close()
    return results, provider_names


class LeaseKeeper(threading.Thread):
    """Extends the lease of deliveries while a slow batch is with the providers.

    Without it a batch that outlives its lease (a slow provider, a loaded machine) would be
    taken over and sent a second time by another worker. Uses its own connection, and
    skips rows another transaction holds, so it never waits on anyone.
    """

    def __init__(self, ids: list[int]):
        super().__init__(name="lease-keeper", daemon=True)
        self.ids = ids
        self.done = threading.Event()

    def run(self) -> None:
        from django.db import connections

        seconds = settings.DELIVERY_LEASE_SECONDS
        try:
            while not self.done.wait(max(seconds / 3, 0.5)):
                with connection.cursor() as cursor:
                    cursor.execute(
                        """
                        UPDATE campaigns_delivery SET lease_until = now() + make_interval(secs => %s)
                        WHERE id IN (SELECT id FROM campaigns_delivery
                                     WHERE id = ANY(%s) AND status = %s FOR UPDATE SKIP LOCKED)
                        """,
                        [seconds, self.ids, SENDING],
                    )
        except Exception:
            logger.exception("could not extend the lease of %d deliveries", len(self.ids))
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def process(ids: list[int], *, settle: bool = False) -> dict[str, int]:
    """Render, send and record claimed (and re-checked) deliveries."""
    messages, failures = build(ids)
    keeper = LeaseKeeper([m.delivery_id for m in messages])
    keeper.start()
    try:
        results, provider_names = _send(messages, settle=settle)
    finally:
        keeper.stop()
    return record(failures + results, provider_names=provider_names, now=timezone.now())


def dispatch(*, budget_seconds: float = 50, batch_size: int | None = None) -> dict[str, int]:
    """Send what is due until nothing is left or the time budget is spent. Safe to run in parallel."""
    batch_size = batch_size or settings.DELIVERY_BATCH_SIZE
    started = time.monotonic()
    totals = defaultdict(int)
    while time.monotonic() - started < budget_seconds:
        now = timezone.now()
        expired = claim_expired(limit=batch_size, now=now)
        if expired:
            for key, value in process(expired, settle=True).items():
                totals[key] += value
            continue
        claimed, ids = _claim(limit=batch_size, now=now)
        if not claimed:
            break
        for key, value in process(ids).items():
            totals[key] += value
    return dict(totals)
