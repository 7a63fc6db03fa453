"""Every write to customers, their preferences and their timeline.

Each function runs in one transaction, writes the matching timeline events, and sends the
``customers.signals`` signals after commit. Callers pass validated, normalised values
(see ``customers.schemas``); anything only the database can check (unknown ids, an email
that belongs to someone else) raises :class:`InputError` before anything is written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError

from . import signals
from .models import (
    ApiKey,
    ChannelKind,
    Consent,
    ConsentState,
    Customer,
    Device,
    Event,
    EventCategory,
    Subscription,
    Topic,
    category_for,
)

logger = logging.getLogger(__name__)

CHANNELS = frozenset(ChannelKind.values)
PROFILE_FIELDS = ("email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage")


def _on_commit_send(signal, **kwargs) -> None:
    # robust: the change is committed; a failing listener is logged, not reported to the caller.
    transaction.on_commit(lambda: signal.send(sender=Customer, **kwargs), robust=True)


# Errors that mean a concurrent transaction got there first: a deadlock, a serialization
# failure, or a unique key (an external id, an email) it inserted and committed while we
# were deciding to insert the same one. Run again from the start, the same work sees the
# other transaction's rows and succeeds.
_LOST_RACE_SQLSTATES = frozenset({"40P01", "40001", "23505"})


def _retry_lost_races(write, /, **kwargs):
    """Call ``write(**kwargs)``, which runs one whole transaction, again if it lost a race.

    ``write`` must decide everything inside its transaction (what exists, what to create),
    so that a second run sees what the winner committed. Gives up after three tries.
    """
    for attempt in range(3):
        try:
            return write(**kwargs)
        except DatabaseError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in _LOST_RACE_SQLSTATES or attempt == 2:
                raise
            logger.warning("%s retried after %s", write.__name__, sqlstate)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


# --- Customers ----------------------------------------------------------------------------


@dataclass
class CustomerInput:
    """One profile as sent by the API or a form. ``None`` means "leave as it is"."""

    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    lifecycle_stage: str | None = None
    attributes: dict | None = None
    subscriptions: list[dict] = field(default_factory=list)


@dataclass
class UpsertResult:
    customer: Customer
    created: bool
    changes: dict


def customers_upsert(*, items: list[CustomerInput], source: str, actor: str) -> list[UpsertResult]:
    """Create or update each profile, matched by ``external_id``, else by ``email``.

    A profile found by email that has no external id yet adopts the one sent. Attributes
    are merged key by key (a ``null`` value removes the key). Raises :class:`InputError`
    (nothing written) when an item's email belongs to a customer with another external id,
    when the same customer appears twice in the batch, or when a topic is unknown.

    Requests racing to create the same new customer all succeed: the one that inserts it
    reports it created, the others update it (``created`` is False for them).
    """
    errors: list[FieldError] = []
    _check_batch_duplicates(items, errors)
    topic_keys = {sub["topic"] for item in items for sub in item.subscriptions}
    topics = {topic.key: topic for topic in Topic.objects.filter(key__in=topic_keys)}
    for index, item in enumerate(items):
        for sub_index, sub in enumerate(item.subscriptions):
            if sub["topic"] not in topics:
                errors.append(
                    FieldError(f"subscriptions[{sub_index}].topic", _unknown_topic_message(sub["topic"]), index)
                )
    if errors:
        raise InputError(errors)
    return _retry_lost_races(_customers_upsert_once, items=items, topics=topics, source=source, actor=actor)


def _customers_upsert_once(
    *, items: list[CustomerInput], topics: dict[str, Topic], source: str, actor: str
) -> list[UpsertResult]:
    errors: list[FieldError] = []
    now = timezone.now()
    with transaction.atomic():
        by_external_id = {
            c.external_id: c
            for c in Customer.objects.select_for_update().filter(
                external_id__in=[item.external_id for item in items if item.external_id]
            )
        }
        by_email = {
            c.email.lower(): c
            for c in Customer.objects.select_for_update().filter(
                email__in=[item.email for item in items if item.email]
            )
        }
        plans: list[tuple[Customer, bool, dict]] = []
        for index, item in enumerate(items):
            customer = by_external_id.get(item.external_id) if item.external_id else None
            if customer is None and item.email:
                customer = by_email.get(item.email)
                if customer is not None and item.external_id and customer.external_id not in (None, item.external_id):
                    errors.append(
                        FieldError(
                            "email",
                            f"{item.email} already belongs to the customer with external_id "
                            f"'{customer.external_id}'",
                            index,
                        )
                    )
                    continue
            if customer is not None and item.email and item.email != customer.email.lower():
                owner = by_email.get(item.email)
                if owner is None:
                    owner = Customer.objects.filter(email__iexact=item.email).exclude(pk=customer.pk).first()
                if owner is not None and owner.pk != customer.pk:
                    errors.append(
                        FieldError("email", f"{item.email} already belongs to customer {owner.pk}", index)
                    )
                    continue
            created = customer is None
            if created:
                customer = Customer(created_at=now)
            changes = _apply_profile(customer, item)
            plans.append((customer, created, changes))
        if errors:
            raise InputError(errors)

        new_customers = [c for c, created, _ in plans if created]
        new_ids = set()
        if new_customers:
            _check_new_emails_free(new_customers, items, errors, plans)
            if errors:
                raise InputError(errors)
            Customer.objects.bulk_create(new_customers)
            new_ids = {c.pk for c in new_customers}
        changed = [c for c, created, changes in plans if not created and changes]
        for customer in changed:
            customer.updated_at = now
        if changed:
            Customer.objects.bulk_update(changed, [*PROFILE_FIELDS, "external_id", "attributes", "updated_at"])

        timeline = []
        for customer, created, changes in plans:
            if created:
                timeline.append(
                    _platform_event(customer, "customer.created", {"fields": changes}, source, actor, now)
                )
            elif changes:
                timeline.append(
                    _platform_event(customer, "customer.updated", {"changes": changes}, source, actor, now)
                )
        Event.objects.bulk_create(timeline)

        subscription_changes = _subscriptions_apply(
            [(customer, item.subscriptions) for (customer, _, _), item in zip(plans, items)],
            topics=topics,
            source=source,
            actor=actor,
            now=now,
        )

        if new_ids:
            _on_commit_send(signals.customers_changed, customer_ids=new_ids, fields=set(), created=True)
        touched = {c.pk for c, created, changes in plans if not created and changes} | (subscription_changes - new_ids)
        if touched:
            fields = {key for _, created, changes in plans if not created for key in changes}
            if subscription_changes:
                fields.add("subscriptions")
            _on_commit_send(signals.customers_changed, customer_ids=touched, fields=fields, created=False)
        return [UpsertResult(c, c.pk in new_ids, changes) for c, _, changes in plans]


def _unknown_topic_message(key: str) -> str:
    known = ", ".join(Topic.objects.order_by("key").values_list("key", flat=True)) or "none yet"
    return f"unknown topic '{key}' (known topics: {known})"


def _check_batch_duplicates(items: list[CustomerInput], errors: list[FieldError]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        for key in ("external_id", "email"):
            value = getattr(item, key)
            if not value:
                continue
            if (key, value) in seen:
                errors.append(
                    FieldError(key, f"'{value}' appears more than once in this batch (first at index {seen[key, value]})", index)
                )
            else:
                seen[key, value] = index
            if key == "external_id":
                # An item with an external id is identified by it alone.
                break


def _check_new_emails_free(new_customers, items, errors, plans) -> None:
    emails = [c.email for c in new_customers if c.email]
    taken = set(Customer.objects.filter(email__in=emails).values_list("email", flat=True))
    if taken:
        for index, (customer, created, _) in enumerate(plans):
            if created and customer.email in taken:
                errors.append(FieldError("email", f"{customer.email} already belongs to another customer", index))


def _apply_profile(customer: Customer, item: CustomerInput) -> dict:
    """Copy the given fields onto ``customer`` and return {field: [old, new]} for changes."""
    changes: dict = {}
    if item.external_id and customer.external_id != item.external_id:
        changes["external_id"] = [customer.external_id, item.external_id]
        customer.external_id = item.external_id
    for name in PROFILE_FIELDS:
        value = getattr(item, name)
        if value is None:
            continue
        old = getattr(customer, name)
        if old != value:
            changes[name] = [old, value]
            setattr(customer, name, value)
    if item.attributes:
        merged = dict(customer.attributes or {})
        for key, value in item.attributes.items():
            old = merged.get(key)
            if value is None:
                if key in merged:
                    del merged[key]
                    changes[f"attributes.{key}"] = [old, None]
            elif old != value:
                merged[key] = value
                changes[f"attributes.{key}"] = [old, value]
        customer.attributes = merged
    return changes


def _platform_event(customer, name: str, properties: dict, source: str, actor: str, now: datetime, channel: str = ""):
    return Event(
        customer=customer,
        name=name,
        category=category_for(name),
        channel=channel,
        properties=properties,
        occurred_at=now,
        received_at=now,
        source=source,
        actor=actor,
    )


# --- Subscriptions -------------------------------------------------------------------------


def _subscriptions_apply(pairs, *, topics: dict[str, Topic], source: str, actor: str, now: datetime, reason: str = "") -> set[int]:
    """Upsert subscriptions for (customer, [{topic, channel, subscribed}]) pairs.

    Writes a ``subscription.changed`` event for each real change and returns the ids of
    customers whose preferences changed.
    """
    wanted = {}
    for customer, subs in pairs:
        for sub in subs:
            wanted[(customer.pk, topics[sub["topic"]].pk, sub["channel"])] = (customer, sub)
    if not wanted:
        return set()
    existing = {
        (s.customer_id, s.topic_id, s.channel): s
        for s in Subscription.objects.filter(
            customer_id__in={key[0] for key in wanted}, topic_id__in={key[1] for key in wanted}
        )
    }
    rows, timeline, changed = [], [], set()
    for key, (customer, sub) in wanted.items():
        current = existing.get(key)
        if current is not None and current.subscribed == sub["subscribed"]:
            continue
        rows.append(
            Subscription(
                customer_id=key[0], topic_id=key[1], channel=key[2], subscribed=sub["subscribed"],
                source=sub.get("source") or source, updated_at=now,
            )
        )
        properties = {
            "topic": sub["topic"],
            "channel": key[2],
            "subscribed": sub["subscribed"],
            "previous": None if current is None else current.subscribed,
            "source": sub.get("source") or source,
        }
        if reason:
            properties["reason"] = reason
        timeline.append(_platform_event(customer, "subscription.changed", properties, source, actor, now, key[2]))
        changed.add(key[0])
    Subscription.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["customer", "topic", "channel"],
        update_fields=["subscribed", "source", "updated_at"],
    )
    Event.objects.bulk_create(timeline)
    return changed


def subscription_set(
    *, customer: Customer, topic: Topic, channel: str, subscribed: bool, source: str, actor: str, reason: str = ""
) -> bool:
    """Set one cell of the preference matrix. Returns whether anything changed."""
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        changed = _subscriptions_apply(
            [(customer, [{"topic": topic.key, "channel": channel, "subscribed": subscribed, "source": source}])],
            topics={topic.key: topic},
            source=source,
            actor=actor,
            now=timezone.now(),
            reason=reason,
        )
        if changed:
            audit(
                actor=actor, action="subscription.changed", object_type="customer", object_id=customer.pk,
                details={"topic": topic.key, "channel": channel, "subscribed": subscribed, "reason": reason},
            )
            _on_commit_send(signals.customers_changed, customer_ids=changed, fields={"subscriptions"}, created=False)
    return bool(changed)


def subscriptions_change(
    *, customer: Customer, changes: list[dict], source: str, actor: str, reason: str = ""
) -> bool:
    """Set several cells of one customer's preference matrix at once ({topic, channel, subscribed})."""
    topics = {t.key: t for t in Topic.objects.filter(key__in={c["topic"] for c in changes})}
    unknown = sorted({c["topic"] for c in changes} - set(topics))
    if unknown:
        raise InputError([FieldError("topic", _unknown_topic_message(unknown[0]))])
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        changed = _subscriptions_apply(
            [(customer, [{**c, "source": source} for c in changes])], topics=topics, source=source, actor=actor,
            now=timezone.now(), reason=reason,
        )
        if changed:
            audit(actor=actor, action="subscription.changed", object_type="customer", object_id=customer.pk,
                  details={"changes": changes, "reason": reason})
            _on_commit_send(signals.customers_changed, customer_ids=changed, fields={"subscriptions"}, created=False)
    return bool(changed)


# --- Channel status (delivery feedback) --------------------------------------------------------


def channel_status_set(*, customer_ids: set[int], channel: str, status: str, reason: str, source: str) -> set[int]:
    """Mark customers' addresses on ``channel``: bounced, complained, unsubscribed, or ok again.

    Set-based; writes a ``customer.channel_status`` timeline event for each real change and
    returns the ids of the customers whose status changed.
    """
    if not customer_ids:
        return set()
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            WITH old AS (
                SELECT c.id AS customer_id, coalesce(cs.status, 'ok') AS status
                FROM customers_customer c
                LEFT JOIN customers_channelstatus cs ON cs.customer_id = c.id AND cs.channel = %(channel)s
                WHERE c.id = ANY(%(ids)s)
            ),
            up AS (
                INSERT INTO customers_channelstatus (customer_id, channel, status, reason, updated_at)
                SELECT customer_id, %(channel)s, %(status)s, %(reason)s, %(now)s FROM old WHERE status <> %(status)s
                ON CONFLICT (customer_id, channel)
                DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
                RETURNING customer_id
            ),
            timeline AS (
                INSERT INTO customers_event
                    (customer_id, name, category, channel, properties, occurred_at, received_at, source, actor)
                SELECT old.customer_id, 'customer.channel_status', 'profile', %(channel)s,
                       jsonb_build_object('channel', %(channel)s, 'status', %(status)s, 'previous', old.status,
                                          'reason', %(reason)s),
                       %(now)s, %(now)s, %(source)s, ''
                FROM old JOIN up ON up.customer_id = old.customer_id
            )
            SELECT customer_id FROM up
            """,
            {"ids": sorted(customer_ids), "channel": channel, "status": status, "reason": reason[:1000],
             "now": now, "source": source},
        )
        changed = {row[0] for row in cursor.fetchall()}
        if changed:
            _on_commit_send(signals.customers_changed, customer_ids=changed, fields={"channel_status"}, created=False)
    return changed


# --- Consent ------------------------------------------------------------------------------


def consent_record(
    *,
    customer: Customer,
    channel: str,
    granted: bool,
    source: str,
    actor: str,
    legal_basis: str = "consent",
    ip_address: str | None = None,
    user_agent: str = "",
    wording: str = "",
    form_url: str = "",
    occurred_at: datetime | None = None,
) -> Consent:
    """Append a grant or revocation to the ledger, with its proof, and update the current state."""
    now = timezone.now()
    occurred_at = occurred_at or now
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        entry = Consent.objects.create(
            customer=customer, channel=channel, granted=granted, occurred_at=occurred_at, source=source,
            legal_basis=legal_basis, ip_address=ip_address, user_agent=user_agent, wording=wording,
            form_url=form_url, recorded_by=actor,
        )
        state = ConsentState.objects.filter(customer=customer, channel=channel).first()
        if state is None or state.updated_at <= occurred_at:
            ConsentState.objects.update_or_create(
                customer=customer, channel=channel,
                defaults={"granted": granted, "updated_at": occurred_at, "consent": entry},
            )
        Event.objects.create(
            customer=customer,
            name="consent.granted" if granted else "consent.revoked",
            category=EventCategory.PREFERENCE,
            channel=channel,
            properties={
                "channel": channel, "source": source, "legal_basis": legal_basis, "consent_id": entry.pk,
                **({"wording": wording} if wording else {}),
            },
            occurred_at=occurred_at,
            received_at=now,
            source=source,
            actor=actor,
        )
        audit(actor=actor, action="consent.recorded", object_type="customer", object_id=customer.pk,
              details={"channel": channel, "granted": granted, "source": source})
        _on_commit_send(signals.customers_changed, customer_ids={customer.pk}, fields={"consent"}, created=False)
    return entry


# --- Devices ------------------------------------------------------------------------------


def device_register(*, customer: Customer, kind: str, token: str, platform: str, source: str, actor: str) -> Device:
    """Attach a push token to ``customer`` (moving it from whoever had it before)."""
    now = timezone.now()
    with transaction.atomic():
        device, created = Device.objects.select_for_update().get_or_create(
            token=token, defaults={"customer": customer, "kind": kind, "platform": platform, "last_seen_at": now}
        )
        if not created:
            moved = device.customer_id != customer.pk
            device.customer, device.kind, device.platform, device.last_seen_at = customer, kind, platform, now
            device.save()
            if not moved:
                return device
        Event.objects.create(
            customer=customer, name="device.registered", category=EventCategory.PROFILE,
            channel=ChannelKind.PUSH, properties={"kind": kind, "platform": platform, "device_id": device.pk},
            occurred_at=now, received_at=now, source=source, actor=actor,
        )
        _on_commit_send(signals.customers_changed, customer_ids={customer.pk}, fields={"devices"}, created=False)
    return device


# --- Support notes ----------------------------------------------------------------------------


def note_add(*, customer: Customer, text: str, actor: str) -> Event:
    """Add a support note to the customer's timeline."""
    now = timezone.now()
    with transaction.atomic():
        event = Event.objects.create(
            customer=customer, name="support.note", category=EventCategory.NOTE, properties={"text": text},
            occurred_at=now, received_at=now, source="support", actor=actor,
        )
        audit(actor=actor, action="note.added", object_type="customer", object_id=customer.pk)
    return event


# --- Event ingestion --------------------------------------------------------------------------


@dataclass
class EventInput:
    customer_id: int | None
    external_id: str | None
    email: str | None
    name: str
    properties: dict
    occurred_at: datetime | None
    idempotency_key: str | None


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    customers_created: int


_INSERT_EVENTS = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS t(customer_id bigint, name text, channel text, properties jsonb, occurred_at timestamptz,
             idempotency_key text)
),
inserted AS (
    INSERT INTO customers_event
        (customer_id, name, category, channel, properties, occurred_at, received_at, source,
         idempotency_key, actor)
    SELECT customer_id, name, 'event', coalesce(channel, ''), properties, coalesce(occurred_at, %(now)s),
           %(now)s, %(source)s, idempotency_key, ''
    FROM input
    ON CONFLICT (source, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING customer_id, name, occurred_at
),
counted AS (
    INSERT INTO customers_ingestcounter (minute, shard, events)
    SELECT date_trunc('minute', %(now)s::timestamptz), pg_backend_pid() %% 8, count(*) FROM inserted HAVING count(*) > 0
    ON CONFLICT (minute, shard) DO UPDATE SET events = customers_ingestcounter.events + EXCLUDED.events
)
SELECT customer_id, max(occurred_at), array_agg(DISTINCT name), count(*)
FROM inserted GROUP BY customer_id ORDER BY customer_id
"""

# Rows are locked in id order so that concurrent batches touching the same customers
# queue behind each other instead of deadlocking.
_TOUCH_CUSTOMERS = """
UPDATE customers_customer c SET last_seen_at = seen.at
FROM (SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(seen)s::timestamptz[]) AS at) seen
WHERE c.id = seen.id AND c.id IN (
    SELECT id FROM customers_customer WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE
) AND (c.last_seen_at IS NULL OR c.last_seen_at < seen.at)
"""


def events_ingest(*, items: list[EventInput], source: str, actor: str = "") -> IngestResult:
    """Store a batch of events in one transaction, creating unknown customers on the way.

    Customers referenced by ``external_id`` or ``email`` are created when missing; a
    reference by ``id`` must exist (else :class:`InputError`, nothing written). Events
    whose ``idempotency_key`` was already stored for ``source`` are skipped, so a retried
    batch writes nothing twice. Set-based: a constant number of statements per batch.
    """
    return _retry_lost_races(_events_ingest_once, items=items, source=source, actor=actor)


def _events_ingest_once(*, items: list[EventInput], source: str, actor: str) -> IngestResult:
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        ids = sorted({item.customer_id for item in items if item.customer_id is not None})
        if ids:
            cursor.execute("SELECT id FROM customers_customer WHERE id = ANY(%s)", [ids])
            found = {row[0] for row in cursor.fetchall()}
            missing = [
                FieldError("customer.id", f"no customer has id {item.customer_id}", index)
                for index, item in enumerate(items)
                if item.customer_id is not None and item.customer_id not in found
            ]
            if missing:
                raise InputError(missing)

        by_external_id, created_by_external_id = _customers_ensure(
            cursor, "external_id", sorted({i.external_id for i in items if i.customer_id is None and i.external_id}),
            source, actor, now,
        )
        by_email, created_by_email = _customers_ensure(
            cursor, "email",
            sorted({i.email for i in items if i.customer_id is None and not i.external_id and i.email}),
            source, actor, now,
        )
        created_ids = created_by_external_id | created_by_email
        if created_ids:
            _on_commit_send(signals.customers_changed, customer_ids=created_ids, fields=set(), created=True)

        # The batch travels as one JSON document: one parameter to send instead of six arrays.
        batch = [
            {
                "customer_id": item.customer_id
                or (by_external_id[item.external_id] if item.external_id else by_email[item.email]),
                "name": item.name,
                "channel": channel if (channel := item.properties.get("channel")) in CHANNELS else "",
                "properties": item.properties,
                "occurred_at": item.occurred_at.isoformat() if item.occurred_at else None,
                "idempotency_key": item.idempotency_key,
            }
            for item in items
        ]
        cursor.execute(_INSERT_EVENTS, {"batch": json.dumps(batch, separators=(",", ":")), "now": now, "source": source})
        per_customer = cursor.fetchall()
        accepted = sum(row[3] for row in per_customer)
        if per_customer:
            cursor.execute(
                _TOUCH_CUSTOMERS,
                {"ids": [row[0] for row in per_customer], "seen": [row[1] for row in per_customer]},
            )
            customer_ids = {row[0] for row in per_customer}
            names = {name for row in per_customer for name in row[2]}
            _on_commit_send(signals.events_ingested, customer_ids=customer_ids, names=names)
    return IngestResult(accepted=accepted, duplicates=len(items) - accepted, customers_created=len(created_ids))


def _customers_ensure(cursor, key: str, values: list[str], source: str, actor: str, now) -> tuple[dict[str, int], set[int]]:
    """Map each external id or email to a customer id, creating missing customers.

    Returns the mapping and the ids of the customers created (each gets a
    ``customer.created`` event).
    """
    if not values:
        return {}, set()
    if key == "external_id":
        conflict = "(external_id)"
        lookup = "external_id = ANY(%(values)s)"
        select_key = "external_id"
    else:
        conflict = "(lower(email)) WHERE NOT (email = '')"
        lookup = "lower(email) = ANY(%(values)s)"
        select_key = "lower(email)"
    # Usually everyone exists already: look first, insert only the rest.
    cursor.execute(f"SELECT {select_key}, id FROM customers_customer WHERE {lookup}", {"values": values})
    known = dict(cursor.fetchall())
    values = [value for value in values if value not in known]
    if not values:
        return known, set()
    cursor.execute(
        f"""
        WITH created AS (
            INSERT INTO customers_customer
                (external_id, email, phone, first_name, last_name, locale, timezone, lifecycle_stage,
                 attributes, created_at, updated_at)
            SELECT {"v, ''" if key == "external_id" else "NULL, v"}, '', '', '', '', '', '', '{{}}'::jsonb,
                   %(now)s, %(now)s
            FROM unnest(%(values)s::text[]) AS v
            ON CONFLICT {conflict} DO NOTHING
            RETURNING id, {key}
        ),
        timeline AS (
            INSERT INTO customers_event
                (customer_id, name, category, channel, properties, occurred_at, received_at, source,
                 idempotency_key, actor)
            SELECT id, 'customer.created', 'profile', '', jsonb_build_object('fields',
                   jsonb_build_object('{key}', jsonb_build_array(NULL, {key}))),
                   %(now)s, %(now)s, %(source)s, NULL, %(actor)s
            FROM created
        )
        SELECT coalesce(array_agg(id), '{{}}') FROM created
        """,
        {"values": values, "now": now, "source": source, "actor": actor},
    )
    created = set(cursor.fetchone()[0])
    # Those a concurrent batch created in the meantime were skipped by ON CONFLICT: read them too.
    cursor.execute(f"SELECT {select_key}, id FROM customers_customer WHERE {lookup}", {"values": values})
    return {**known, **dict(cursor.fetchall())}, created


# --- API keys -------------------------------------------------------------------------------


def api_key_create(*, name: str, created_by=None) -> tuple[ApiKey, str]:
    """Create an API key; returns it with the raw key, which is never stored or shown again."""
    raw = ApiKey.generate()
    key = ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=ApiKey.hash(raw), created_by=created_by)
    audit(actor=str(created_by or "system"), action="api_key.created", object_type="api_key", object_id=key.pk,
          details={"name": name})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: str) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    audit(actor=actor, action="api_key.revoked", object_type="api_key", object_id=key.pk)
