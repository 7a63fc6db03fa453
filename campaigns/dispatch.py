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
- A worker holds at most two batches unrecorded: one with the providers, and the next one,
  claimed and rendered meanwhile (and already queued behind it for a provider that sends in
  the background). Both are leased, and the lease renewed, until recorded; a provider that
  sends on the dispatcher's own thread starts a batch only once the one before is recorded.
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
from functools import partial
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.functional import lazy

from customers.services.profiles import devices_remove

from .links import email_finish, links_in, links_store, message_links, preferences_url, unsubscribe_url
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
from .providers import OutgoingMessage, Provider, SendResult, provider_for
from .transitions import deliveries_transition

logger = logging.getLogger(__name__)

SENDING, PLANNED = DeliveryStatus.SENDING, DeliveryStatus.PLANNED
# What a claim changes besides the status: the lease, and the attempt it starts.
CLAIM_SETS = {"lease_until": "%(lease)s", "attempts": "d.attempts + 1"}


def _lease() -> timedelta:
    return timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)


# Links signed only if a template uses them. Made once: ``lazy()`` builds a proxy class per
# call, and building two per message cost more than rendering the message.
_lazy_unsubscribe_url = lazy(unsubscribe_url, str)
_lazy_preferences_url = lazy(preferences_url, str)


def _message_links(delivery_id: int, customer_id: int, channel: str) -> dict:
    """The message's own links: signed now for email (they are tracked and go in the footer),
    on first use for the other channels."""
    if channel == "email":
        return message_links(delivery_id=delivery_id, customer_id=customer_id)
    return {"unsubscribe_url": _lazy_unsubscribe_url(delivery_id), "preferences_url": _lazy_preferences_url(customer_id)}


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
                    WHERE q.status = %(planned)s AND q.due_at <= %(now)s
                      AND (q.campaign_id IS NULL OR EXISTS (
                          SELECT FROM campaigns_campaign c WHERE c.id = q.campaign_id
                            AND c.status = ANY(%(active)s) AND c.throttle_per_minute IS NULL))
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
               CASE WHEN t.is_transactional THEN %(now)s ELSE {defer_sql("%(now)s", "lz.zone")} END AS due
        FROM cand {joins_sql()}
        -- The zone looked up in one place: named once, the zone list is read by its key; named
        -- in each branch of the deferral, it is copied out whole and scanned row by row.
        CROSS JOIN LATERAL (SELECT {local_zone_sql()} AS zone) lz
        -- Counted for the batch's customers only (the array is computed once, before the
        -- count): joined on its own, the count covers every delivery sent in the window.
        LEFT JOIN (SELECT * FROM recent WHERE recent.customer_id = ANY(ARRAY(SELECT customer_id FROM cand))) recent
            ON recent.customer_id = cand.customer_id
    """
    # No savepoint: called inside the claim's transaction, it succeeds or rolls back with it.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
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


def _twice(make):
    """``make()``, tried once more if it raises :class:`TemplateProblem`.

    A render has a wall-clock allowance, and this thread shares the interpreter with the
    threads sending the batch before it: on a busy machine a render can be cut short for
    want of a turn, and a message suppressed for that would be lost for nothing. A template
    that really fails fails again (at most one more allowance).
    """
    try:
        return make()
    except TemplateProblem:
        return make()


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
            -- Lateral (and kept apart by OFFSET 0): the batch's customers by primary key. As a
            -- join, the planner hashes every customer, once per batch, for a few hundred rows.
            CROSS JOIN LATERAL (SELECT * FROM customers_customer c WHERE c.id = d.customer_id OFFSET 0) c
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
                    compiled[key] = _twice(lambda: compile_content(channel, body))
                except TemplateProblem as problem:
                    compiled[key] = problem  # the same answer for the rest of the batch
            if isinstance(compiled[key], TemplateProblem):
                raise compiled[key]
            links = _message_links(delivery_id, customer_id, channel)
            customer = {
                "id": customer_id, "external_id": external_id, "email": email, "phone": phone,
                "first_name": first_name, "last_name": last_name, "locale": locale, "timezone": tz_name,
                "lifecycle_stage": stage, "attributes": attributes,
            }
            context = customer_context(customer, links=links)
            content = _twice(lambda: with_opt_out(channel, compiled[key].render(context), marketing=marketing))
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
    attempts = {}
    unsent = [r.delivery_id for r in results if not r.ok]
    if unsent:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, attempts FROM campaigns_delivery WHERE id = ANY(%s)", [unsent])
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


@dataclass
class _Sending:
    """A claimed batch handed to its providers and not yet recorded."""

    ids: list[int]  # every delivery claimed for it: leased until recorded
    # Outcomes known before sending: render failures, no device left, found by a lookup.
    known: list[SendResult | RenderFailure]
    # (provider, its messages, a function waiting for their results), one per provider.
    groups: list[tuple[Provider, list[OutgoingMessage], Callable[[], list[SendResult]]]] = field(default_factory=list)
    provider_names: dict[int, str] = field(default_factory=dict)


def _start(ids: list[int], *, settle: bool) -> _Sending:
    """Render claimed deliveries and start sending them, grouped by channel; with ``settle``,
    first ask the providers which they already have.

    Providers that send in the background (Twilio) get their messages now and are still
    sending when this returns; the others send when :func:`_finish` waits for them. Raises
    only before any message was handed over.
    """
    messages, known = build(ids)
    sending = _Sending(ids=ids, known=known)
    by_channel = defaultdict(list)
    for message in messages:
        by_channel[(message.channel, message.provider)].append(message)
    # Every provider first, so a misconfigured one stops the batch before any message left.
    providers = {key: provider_for(key[0], key[1] or None) for key in by_channel}
    for key, group in by_channel.items():
        provider = providers[key]
        for message in group:
            sending.provider_names[message.delivery_id] = provider.name
        if settle and provider.supports_lookup:
            try:
                already = provider.lookup(group)
            except Exception:
                # Unknown whether they went out: leave them sending, to be settled again
                # when this lease expires, rather than risk a second send.
                logger.exception("%s lookup failed; %d deliveries wait for the next try", provider.name, len(group))
                provider.close()
                continue
            sending.known += [SendResult(d, True, provider_message_id=pid) for d, pid in already.items()]
            group = [m for m in group if m.delivery_id not in already]
        if not group or not provider.sends_in_background:
            # Sent when the batch is finished, after the one before it was recorded: a worker
            # that dies then leaves one batch sent and unrecorded, as without the pipeline
            # (what matters for providers that cannot be asked what they already have).
            sending.groups.append((provider, group, partial(provider.send_batch, group) if group else list))
            continue
        try:
            wait = provider.start_batch(group)
        except Exception as exc:  # a provider bug or outage: retry later, never lose the rows
            logger.exception("%s provider failed on a batch of %d", provider.name, len(group))
            failed = [SendResult(m.delivery_id, False, error=f"provider error: {exc}") for m in group]
            wait = failed.copy
        sending.groups.append((provider, group, wait))
    return sending


def _finish(sending: _Sending) -> dict[str, int]:
    """Wait until the providers answered for every message of ``sending``, then record the outcomes."""
    results = list(sending.known)
    for provider, group, wait in sending.groups:
        try:
            results += wait()
        except Exception as exc:  # a provider bug or outage: retry later, never lose the rows
            logger.exception("%s provider failed on a batch of %d", provider.name, len(group))
            results += [SendResult(m.delivery_id, False, error=f"provider error: {exc}") for m in group]
        finally:
            provider.close()
    return record(results, provider_names=sending.provider_names, now=timezone.now())


class LeaseKeeper(threading.Thread):
    """Extends the lease of the deliveries it holds until they are recorded.

    Without it a batch that outlives its lease (a slow provider, a loaded machine) would be
    taken over and sent a second time by another worker. Uses its own connection, and
    skips rows another transaction holds, so it never waits on anyone.
    """

    def __init__(self, ids: Iterable[int] = ()):
        super().__init__(name="lease-keeper", daemon=True)
        self._ids = set(ids)
        self._lock = threading.Lock()
        self.done = threading.Event()

    def hold(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.update(ids)

    def release(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.difference_update(ids)

    def run(self) -> None:
        from django.db import connections

        seconds = settings.DELIVERY_LEASE_SECONDS
        try:
            while not self.done.wait(max(seconds / 3, 0.5)):
                with self._lock:
                    ids = sorted(self._ids)
                if not ids:
                    continue
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            """
                            UPDATE campaigns_delivery SET lease_until = now() + make_interval(secs => %s)
                            WHERE id IN (SELECT id FROM campaigns_delivery
                                         WHERE id = ANY(%s) AND status = %s FOR UPDATE SKIP LOCKED)
                            """,
                            [seconds, ids, SENDING],
                        )
                except Exception:
                    # Try again at the next turn, on a new connection.
                    logger.exception("could not extend the lease of %d deliveries", len(ids))
                    connection.close()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def process(ids: list[int], *, settle: bool = False) -> dict[str, int]:
    """Render, send and record claimed (and re-checked) deliveries, one batch start to end."""
    keeper = LeaseKeeper(ids)
    keeper.start()
    try:
        return _finish(_start(ids, settle=settle))
    finally:
        keeper.stop()


def _claim_next(*, batch_size: int, keeper: LeaseKeeper) -> _Sending | None:
    """Claim the next batch (deliveries of dead workers first) and hand it to the providers;
    None when nothing is due."""
    now = timezone.now()
    settle = True
    ids = claim_expired(limit=batch_size, now=now)
    if not ids:
        settle = False
        claimed, ids = _claim(limit=batch_size, now=now)
        if not claimed:
            return None
    keeper.hold(ids)
    try:
        return _start(ids, settle=settle)
    except Exception:
        keeper.release(ids)
        raise


def dispatch(*, budget_seconds: float = 50, batch_size: int | None = None) -> dict[str, int]:
    """Send what is due until nothing is left or the time budget is spent. Safe to run in parallel.

    Pipelined: while one batch is with the providers, the previous one is recorded and the
    next one claimed, re-checked and rendered, so that the providers' connections do not sit
    idle while the database works. At most two batches are claimed and unrecorded at once,
    both leased (and renewed) all along: a worker that dies leaves them to be settled by lookup.
    """
    batch_size = batch_size or settings.DELIVERY_BATCH_SIZE
    started = time.monotonic()
    totals = defaultdict(int)
    keeper = LeaseKeeper()
    keeper.start()
    in_flight: _Sending | None = None
    try:
        while True:
            upcoming = None
            if time.monotonic() - started < budget_seconds:
                upcoming = _claim_next(batch_size=batch_size, keeper=keeper)
            current, in_flight = in_flight, upcoming
            if current is not None:
                try:
                    outcome = _finish(current)
                finally:
                    keeper.release(current.ids)
                for key, value in outcome.items():
                    totals[key] += value
            if in_flight is None:
                break
    except Exception:
        if in_flight is not None:
            # Let what is on the wire come back and record it; left sending, it would wait for
            # its lease to run out and be settled by lookup.
            try:
                _finish(in_flight)
            except Exception:
                logger.exception("could not record a batch of %d after an error", len(in_flight.ids))
        raise
    finally:
        keeper.stop()
    return dict(totals)
