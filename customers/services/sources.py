"""Messages from Segment and RudderStack SDKs: events, profiles, and anonymous visitors.

A message names a person by ``userId`` (our ``external_id``), by the email in an identify's
traits, or only by ``anonymousId`` (the id an SDK gave a browser or an app install). The
last builds an anonymous profile (a customer with an ``anonymous_id`` and no external id or
email) with a timeline of its own. When an identify (``userId`` and ``anonymousId``) or an
alias (``previousId`` → ``userId``) tells who the visitor is, the visitor merges into the
known customer, once:

- every timeline row moves to the known customer (``customers.timeline.move``);
- profile fields and attributes the known customer lacks are taken over (known values win);
- push devices move too, and subscriptions for a topic × channel the known customer has
  not chosen (the visitor's others are dropped: the customer's own choice stands); consent
  (an append-only ledger of proof) and channel status stay with the visitor's row, which
  has no address and cannot be reached;
- a ``customer.merged`` entry goes on the known customer's timeline;
- the visitor's row stays as a tombstone (``merged_into``), hidden from search and lists,
  so later events with the same anonymous id land on the known customer. It keeps no
  events, fields or attributes, so the segments re-evaluating it (the signal names it)
  let it go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError

from .. import timeline
from ..models import ApiKey, Customer
from . import ingestion, profiles
from .retry import retry_lost_races


@dataclass
class SourceMessage:
    """One validated message (see ``customers.sources``).

    ``event`` and ``properties`` are the timeline entry a track, page or screen writes;
    ``profile`` holds the profile fields and attributes an identify or group sets
    (``CustomerInput`` names). ``index`` is the message's place in the request.
    """

    index: int
    kind: str
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    event: str | None = None
    properties: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    occurred_at: datetime | None = None
    message_id: str | None = None

    @property
    def email(self) -> str | None:
        return self.profile.get("email") or None


@dataclass
class SourceResult:
    events: int
    duplicates: int
    merged: int


def source_messages_ingest(*, messages: list[SourceMessage], key: ApiKey) -> SourceResult:
    """Store a request's messages in one transaction: profiles, events, anonymous visitors
    and their merges. All or nothing: :class:`InputError` (with each message's index) and
    nothing written when a message cannot be stored (an email that belongs to another
    customer). A retried request writes nothing twice: events are keyed by ``messageId``
    per write key, re-applying the same traits changes nothing, and a visitor merges once.
    """
    return retry_lost_races(_ingest_once, messages=messages, key=key)


def _identity(message: SourceMessage) -> tuple[str, str] | None:
    """Who a message is about when they are known: ("external_id", userId) or ("email", …)."""
    if message.kind == "alias":
        return ("external_id", message.user_id) if message.user_id else None
    if message.user_id:
        return ("external_id", message.user_id)
    if message.kind == "identify" and message.email:
        return ("email", message.email)
    return None


def _ingest_once(*, messages: list[SourceMessage], key: ApiKey) -> SourceResult:
    source = key.source_name
    actor = f"source:{key.name}"[:255]
    now = timezone.now()
    with transaction.atomic():
        known_ids = _profiles_upsert(messages, source=source, actor=actor)
        with connection.cursor() as cursor:
            # Everyone the events name by userId (created when new, as the JSON API does).
            wanted = sorted({
                ident[1] for m in messages
                if (ident := _identity(m)) and ident[0] == "external_id" and ident not in known_ids
            })
            by_external_id, _ = ingestion.customers_ensure(cursor, "external_id", wanted, source, actor, now)
            known_ids.update({("external_id", value): pk for value, pk in by_external_id.items()})

            anonymous = sorted({m.anonymous_id for m in messages if m.anonymous_id and _identity(m) is None})
            visitors = anonymous_profiles_ensure(cursor, anonymous_ids=anonymous, source=source, actor=actor, now=now)

        def customer_of(message: SourceMessage) -> int:
            ident = _identity(message)
            return known_ids[ident] if ident else visitors[message.anonymous_id]

        items = [
            ingestion.EventInput(
                customer_id=customer_of(m), external_id=None, email=None, name=m.event, properties=m.properties,
                occurred_at=m.occurred_at, idempotency_key=m.message_id,
            )
            for m in messages
            if m.event
        ]
        stored = ingestion.events_ingest(items=items, source=source, actor="") if items else None

        _visitor_profiles_update(
            [(visitors[m.anonymous_id], m.profile) for m in messages
             if m.profile and _identity(m) is None and m.anonymous_id],
            source=source, actor=actor, now=now,
        )

        links: dict[str, int] = {}
        for m in messages:
            anonymous_id = m.previous_id if m.kind == "alias" else m.anonymous_id
            ident = _identity(m)
            if anonymous_id and ident and m.kind in ("identify", "alias"):
                links.setdefault(anonymous_id, known_ids[ident])  # the first link of a request wins
        merged = sum(
            visitor_merge(anonymous_id=anonymous_id, customer_id=customer_id, source=source, actor=actor)
            for anonymous_id, customer_id in links.items()
        )
    accepted = stored.accepted if stored else 0
    return SourceResult(events=accepted, duplicates=len(items) - accepted, merged=merged)


def _profiles_upsert(messages: list[SourceMessage], *, source: str, actor: str) -> dict[tuple[str, str], int]:
    """Apply the traits of identify and group calls about known people, one profile per
    person (an SDK's batch often identifies the same user twice; later traits win)."""
    merged: dict[tuple[str, str], dict] = {}
    first_index: dict[tuple[str, str], int] = {}
    for m in messages:
        ident = _identity(m)
        if ident is None or m.kind not in ("identify", "group"):
            continue
        profile = merged.setdefault(ident, {})
        first_index.setdefault(ident, m.index)
        for name, value in m.profile.items():
            if name == "attributes":
                profile["attributes"] = {**profile.get("attributes", {}), **value}
            else:
                profile[name] = value
    if not merged:
        return {}
    idents = list(merged)
    items = []
    for kind, value in idents:
        data = dict(merged[(kind, value)])
        data[kind] = value
        if kind == "email":
            data.pop("external_id", None)
        items.append(profiles.CustomerInput(**data))
    try:
        results = profiles.customers_upsert(items=items, source=source, actor=actor)
    except InputError as exc:
        raise InputError([
            FieldError(
                f"traits.{error.field}" if error.field in ("email", "phone") else error.field, error.message,
                first_index[idents[error.index]] if error.index is not None else None,
            )
            for error in exc.errors
        ]) from None
    return {ident: result.customer.pk for ident, result in zip(idents, results)}


# --- Anonymous visitors ----------------------------------------------------------------------


def anonymous_profiles_ensure(cursor, *, anonymous_ids: list[str], source: str, actor: str, now) -> dict[str, int]:
    """Map each anonymous id to the customer its events belong to: its own anonymous
    profile (created when new, with a ``customer.created`` entry), or the customer it was
    merged into. Call inside a transaction.

    The rows are share-locked so that a merge (which locks them for update) waits for this
    transaction, and this one, when it comes second, sees where the visitor went.
    """
    if not anonymous_ids:
        return {}
    ingestion.customers_ensure(cursor, "anonymous_id", anonymous_ids, source, actor, now)
    cursor.execute(
        "SELECT anonymous_id, coalesce(merged_into_id, id) FROM customers_customer "
        "WHERE anonymous_id = ANY(%s) ORDER BY id FOR SHARE",
        [anonymous_ids],
    )
    return dict(cursor.fetchall())


def _visitor_profiles_update(changes: list[tuple[int, dict]], *, source: str, actor: str, now) -> None:
    """Traits sent for visitors nobody has identified yet (no userId, no email) go on their
    anonymous profile; a visitor already merged passes them to the known customer, whose
    own values win there as they do in a merge."""
    if not changes:
        return
    ids = sorted({pk for pk, _ in changes})
    customers = {c.pk: c for c in Customer.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
    changed: dict[int, dict] = {}
    for pk, profile in changes:
        customer = customers[pk]
        if not customer.is_anonymous:
            profile = _missing_only(customer, profile)
        diff = profiles.profile_apply(customer, profiles.CustomerInput(**profile))
        if diff:
            changed.setdefault(pk, {}).update(diff)
    if not changed:
        return
    for pk in changed:
        customers[pk].updated_at = now
    Customer.objects.bulk_update(
        [customers[pk] for pk in changed], [*profiles.PROFILE_FIELDS, "attributes", "updated_at"]
    )
    timeline.add_many([
        timeline.entry(customer=pk, name="customer.updated", properties={"changes": diff}, occurred_at=now,
                       received_at=now, source=source, actor=actor)
        for pk, diff in changed.items()
    ])
    timeline.changed(customer_ids=set(changed), fields={name for diff in changed.values() for name in diff})


def _missing_only(customer, profile: dict) -> dict:
    kept = {name: value for name, value in profile.items()
            if name != "attributes" and not getattr(customer, name, None)}
    attributes = {k: v for k, v in (profile.get("attributes") or {}).items() if k not in (customer.attributes or {})}
    if attributes:
        kept["attributes"] = attributes
    return kept


_LOCK_PAIR = """
SELECT id, anonymous_id, external_id, email, merged_into_id FROM customers_customer
WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE
"""

_MERGE = """
WITH visitor AS (SELECT * FROM customers_customer WHERE id = %(visitor)s),
known AS (
    UPDATE customers_customer k SET
        phone = CASE WHEN k.phone = '' THEN v.phone ELSE k.phone END,
        first_name = CASE WHEN k.first_name = '' THEN v.first_name ELSE k.first_name END,
        last_name = CASE WHEN k.last_name = '' THEN v.last_name ELSE k.last_name END,
        locale = CASE WHEN k.locale = '' THEN v.locale ELSE k.locale END,
        timezone = CASE WHEN k.timezone = '' THEN v.timezone ELSE k.timezone END,
        lifecycle_stage = CASE WHEN k.lifecycle_stage = '' THEN v.lifecycle_stage ELSE k.lifecycle_stage END,
        attributes = v.attributes || k.attributes,
        last_seen_at = greatest(k.last_seen_at, v.last_seen_at),
        updated_at = %(now)s
    FROM visitor v WHERE k.id = %(known)s
    RETURNING k.id
),
devices AS (
    UPDATE customers_device SET customer_id = %(known)s WHERE customer_id = %(visitor)s RETURNING id
),
-- A topic × channel the customer already chose keeps their choice; the visitor's other
-- choices move (a unique key forbids two rows for one cell).
subscriptions AS (
    UPDATE customers_subscription s SET customer_id = %(known)s
    WHERE s.customer_id = %(visitor)s AND NOT EXISTS (
        SELECT 1 FROM customers_subscription o
        WHERE o.customer_id = %(known)s AND o.topic_id = s.topic_id AND o.channel = s.channel
    )
    RETURNING id
),
tombstone AS (
    UPDATE customers_customer SET merged_into_id = %(known)s, merged_at = %(now)s, phone = '', first_name = '',
        last_name = '', locale = '', timezone = '', lifecycle_stage = '', attributes = '{}'::jsonb, updated_at = %(now)s
    WHERE id = %(visitor)s
    RETURNING id
)
SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM subscriptions), (SELECT count(*) FROM known),
       (SELECT count(*) FROM tombstone)
"""


def visitor_merge(*, anonymous_id: str, customer_id: int, source: str, actor: str) -> int:
    """Link ``anonymous_id`` to the known customer ``customer_id``, merging the visitor's
    profile and history into theirs (see the module's docstring). Call inside a
    transaction. Idempotent: a visitor already merged (into anyone) is left alone, and an
    anonymous id never seen before is recorded as merged right away, with nothing to move.
    Returns 1 when a visitor's profile was merged, else 0.
    """
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM customers_customer WHERE anonymous_id = %s", [anonymous_id])
        row = cursor.fetchone()
        if row is None:
            # Nothing to move; later events with this id go straight to the customer.
            cursor.execute(
                """
                INSERT INTO customers_customer
                    (anonymous_id, merged_into_id, merged_at, external_id, email, phone, first_name, last_name,
                     locale, timezone, lifecycle_stage, attributes, created_at, updated_at)
                VALUES (%(anonymous_id)s, %(known)s, %(now)s, NULL, '', '', '', '', '', '', '', '{}'::jsonb,
                        %(now)s, %(now)s)
                ON CONFLICT (anonymous_id) DO NOTHING
                RETURNING id
                """,
                {"anonymous_id": anonymous_id, "known": customer_id, "now": now},
            )
            if cursor.fetchone() is not None:
                return 0
            cursor.execute("SELECT id FROM customers_customer WHERE anonymous_id = %s", [anonymous_id])
            row = cursor.fetchone()
        visitor_id = row[0]
        if visitor_id == customer_id:
            return 0
        # Both rows, in id order: two requests merging the same pair queue instead of deadlocking.
        cursor.execute(_LOCK_PAIR, {"ids": sorted([visitor_id, customer_id])})
        locked = {pk: (anon, ext, email, merged) for pk, anon, ext, email, merged in cursor.fetchall()}
        _, ext, email, merged_into = locked[visitor_id]
        if merged_into is not None or ext or email or customer_id not in locked:
            return 0  # merged already (a retry, or a concurrent request), or not a visitor
        visitor = Customer.objects.get(pk=visitor_id)
        known = Customer.objects.get(pk=customer_id)
        taken = {name: [getattr(known, name), getattr(visitor, name)]
                 for name in profiles.PROFILE_FIELDS if name != "email" and not getattr(known, name)
                 and getattr(visitor, name)}
        taken.update({f"attributes.{name}": [None, value] for name, value in (visitor.attributes or {}).items()
                      if name not in (known.attributes or {})})
        # The visitor's "profile created" entry stays with its row: the customer has their own.
        moved = timeline.move(from_customer_id=visitor_id, to_customer_id=customer_id, keep=["customer.created"])
        cursor.execute(_MERGE, {"visitor": visitor_id, "known": customer_id, "now": now})
        devices, subscriptions, _, _ = cursor.fetchone()
        # The choices left behind were for cells the customer had chosen themselves: theirs
        # stand, and the tombstone must not stay in audiences of subscribers.
        cursor.execute("DELETE FROM customers_subscription WHERE customer_id = %s", [visitor_id])
        subscriptions_dropped = cursor.rowcount
    properties = {
        "anonymous_id": anonymous_id, "anonymous_customer_id": visitor_id, "events_moved": sum(moved.values()),
        "devices_moved": devices, "subscriptions_moved": subscriptions,
    }
    if taken:
        properties["changes"] = taken
    timeline.add(customer=customer_id, name="customer.merged", properties=properties, occurred_at=now,
                 received_at=now, source=source, actor=actor)
    # The visitor lost every field and attribute it had (the customer gained some): rules
    # reading any of them re-evaluate both.
    fields = set(taken) | {name for name in profiles.PROFILE_FIELDS if getattr(visitor, name)}
    fields |= {f"attributes.{name}" for name in visitor.attributes or {}}
    if devices:
        fields.add("devices")
    if subscriptions or subscriptions_dropped:
        fields.add("subscriptions")
    timeline.changed(customer_ids={visitor_id, customer_id}, fields=fields)
    audit(actor=actor, action="customer.merged", object_type="customer", object_id=customer_id,
          details={"anonymous_id": anonymous_id, "anonymous_customer_id": visitor_id,
                   "events_moved": properties["events_moved"]})
    return 1
