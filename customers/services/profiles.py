"""Customers themselves: profiles, their devices, and support notes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError

from .. import timeline
from ..models import ChannelKind, Customer, Device, Event, Topic
from .preferences import subscriptions_apply, unknown_topic_message
from .retry import retry_lost_races

PROFILE_FIELDS = ("email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage")


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
                    FieldError(f"subscriptions[{sub_index}].topic", unknown_topic_message(sub["topic"]), index)
                )
    if errors:
        raise InputError(errors)
    return retry_lost_races(_customers_upsert_once, items=items, topics=topics, source=source, actor=actor)


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

        timeline.add_many([
            timeline.entry(
                customer=customer, name="customer.created" if created else "customer.updated",
                properties={"fields": changes} if created else {"changes": changes},
                occurred_at=now, received_at=now, source=source, actor=actor,
            )
            for customer, created, changes in plans
            if created or changes
        ])

        subscriptions_apply(
            [(customer, item.subscriptions) for (customer, _, _), item in zip(plans, items)],
            topics=topics,
            source=source,
            actor=actor,
            now=now,
        )
        if new_ids:
            timeline.changed(customer_ids=new_ids, created=new_ids)
        updated = {c.pk for c, created, changes in plans if not created and changes}
        if updated:
            timeline.changed(
                customer_ids=updated, fields={key for _, created, changes in plans if not created for key in changes}
            )
        return [UpsertResult(c, c.pk in new_ids, changes) for c, _, changes in plans]


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


# Public for the source API, which applies traits to anonymous visitors' profiles.
profile_apply = _apply_profile


def customer_save(*, customer: Customer, changes: dict, created: bool, source: str, actor: str) -> Customer:
    """Save a profile edited as a whole (Django admin), with its timeline entry.

    ``customer`` carries the new values, already validated; ``changes`` is
    {field: [old, new]} as :func:`customers_upsert` records it (``attributes.<key>`` per key).
    """
    now = timezone.now()
    with transaction.atomic():
        customer.updated_at = now
        if created:
            customer.created_at = customer.created_at or now
        customer.save()
        if created or changes:
            timeline.add(
                customer=customer, name="customer.created" if created else "customer.updated",
                properties={"fields": changes} if created else {"changes": changes},
                occurred_at=now, received_at=now, source=source, actor=actor,
            )
        if created:
            timeline.changed(customer_ids={customer.pk}, created={customer.pk})
        elif changes:
            timeline.changed(customer_ids={customer.pk}, fields=set(changes))
    return customer


def customers_field_set(*, customer_ids: list[int], field: str, value, source: str, actor: str) -> set[int]:
    """Set one profile field (``lifecycle_stage``) or attribute (``attributes.<key>``) for
    many customers in one statement, with a ``customer.updated`` timeline row for each
    customer whose value changed. Call inside a transaction. Returns who changed."""
    if not customer_ids:
        return set()
    if field == "lifecycle_stage":
        new, old, target = "%(value)s::text", "o.lifecycle_stage", "lifecycle_stage = %(value)s::text"
        changed = "c.lifecycle_stage IS DISTINCT FROM %(value)s::text"
        stored = value
    elif field.startswith("attributes.") and field.count(".") == 1:
        new, old = "%(value)s::jsonb", "o.attributes -> %(key)s"
        target = "attributes = c.attributes || jsonb_build_object(%(key)s::text, %(value)s::jsonb)"
        changed = "c.attributes -> %(key)s IS DISTINCT FROM %(value)s::jsonb"
        stored = json.dumps(value)
    else:
        raise ValueError(f"not a settable field: {field}")
    params = {"ids": sorted(customer_ids), "value": stored, "key": field.split(".", 1)[-1], "field": field,
              "now": timezone.now(), "source": source, "actor": actor}
    rows = f"""
        SELECT u.id AS customer_id, 'customer.updated' AS name, '' AS channel,
               jsonb_build_object('changes', jsonb_build_object(%(field)s::text, jsonb_build_array(u.old, {new})))
                   AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM updated u"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH old AS (SELECT c.id, {old.replace("o.", "c.")} AS old FROM customers_customer c
                         WHERE c.id = ANY(%(ids)s) AND {changed} FOR UPDATE),
            updated AS (
                UPDATE customers_customer c SET {target}, updated_at = %(now)s FROM old
                WHERE c.id = old.id RETURNING c.id, to_jsonb(old.old) AS old
            ),
            {timeline.insert_cte(rows)}
            SELECT array(SELECT id FROM updated), {timeline.summary_sql()}
            """,
            params,
        )
        ids, summary = cursor.fetchone()
    timeline.written(summary, fields={field})
    return set(ids)


# --- Devices ------------------------------------------------------------------------------


def device_register(*, customer: Customer, kind: str, token: str, platform: str, source: str, actor: str) -> Device:
    """Attach a push token to ``customer`` (moving it from whoever had it before)."""
    now = timezone.now()
    with transaction.atomic():
        device, created = Device.objects.select_for_update().get_or_create(
            token=token, defaults={"customer": customer, "kind": kind, "platform": platform, "last_seen_at": now}
        )
        if not created:
            previous = device.customer_id
            device.customer, device.kind, device.platform, device.last_seen_at = customer, kind, platform, now
            device.save()
            if previous == customer.pk:
                return device
            # The previous owner can no longer be reached on this device.
            timeline.add(
                customer=previous, name="device.removed", channel=ChannelKind.PUSH,
                properties={"kind": kind, "platform": platform, "device_id": device.pk,
                            "reason": "registered by another customer"},
                occurred_at=now, received_at=now, source=source, actor=actor,
            )
        timeline.add(
            customer=customer, name="device.registered", channel=ChannelKind.PUSH,
            properties={"kind": kind, "platform": platform, "device_id": device.pk},
            occurred_at=now, received_at=now, source=source, actor=actor,
        )
    return device


def devices_remove(*, device_ids: list[int], reason: str, source: str, actor: str = "") -> int:
    """Delete devices (a token the push service calls dead, or one removed in admin), each
    with a ``device.removed`` entry on its customer's timeline. Returns how many were removed."""
    if not device_ids:
        return 0
    now = timezone.now()
    with transaction.atomic():
        removed = list(
            Device.objects.select_for_update().filter(pk__in=device_ids).order_by("pk")
            .values("pk", "customer_id", "kind", "platform")
        )
        Device.objects.filter(pk__in=[row["pk"] for row in removed]).delete()
        timeline.add_many([
            timeline.entry(
                customer=row["customer_id"], name="device.removed", channel=ChannelKind.PUSH,
                properties={"kind": row["kind"], "platform": row["platform"], "device_id": row["pk"], "reason": reason},
                occurred_at=now, received_at=now, source=source, actor=actor,
            )
            for row in removed
        ])
    return len(removed)


# --- Support notes ----------------------------------------------------------------------------


def note_add(*, customer: Customer, text: str, actor: str) -> Event:
    """Add a support note to the customer's timeline."""
    with transaction.atomic():
        event = timeline.add(customer=customer, name="support.note", properties={"text": text}, source="support",
                             actor=actor)
        audit(actor=actor, action="note.added", object_type="customer", object_id=customer.pk)
    return event
