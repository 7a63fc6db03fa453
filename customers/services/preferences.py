"""How each customer wants to be reached: subscriptions, consent, and channel status."""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError

from .. import timeline
from ..models import Consent, ConsentState, Customer, Subscription, Topic


def unknown_topic_message(key: str) -> str:
    known = ", ".join(Topic.objects.order_by("key").values_list("key", flat=True)) or "none yet"
    return f"unknown topic '{key}' (known topics: {known})"


# --- Subscriptions -------------------------------------------------------------------------


def subscriptions_apply(pairs, *, topics: dict[str, Topic], source: str, actor: str, now: datetime, reason: str = "") -> set[int]:
    """Upsert subscriptions for (customer, [{topic, channel, subscribed}]) pairs.

    Call inside a transaction. Writes a ``subscription.changed`` event for each real change
    and returns the ids of customers whose preferences changed.
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
    rows, entries, changed = [], [], set()
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
        entries.append(timeline.entry(
            customer=customer, name="subscription.changed", properties=properties, channel=key[2],
            occurred_at=now, received_at=now, source=source, actor=actor,
        ))
        changed.add(key[0])
    Subscription.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["customer", "topic", "channel"],
        update_fields=["subscribed", "source", "updated_at"],
    )
    timeline.add_many(entries)
    return changed


def subscription_set(
    *, customer: Customer, topic: Topic, channel: str, subscribed: bool, source: str, actor: str, reason: str = ""
) -> bool:
    """Set one cell of the preference matrix. Returns whether anything changed."""
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        changed = subscriptions_apply(
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
    return bool(changed)


def subscriptions_change(
    *, customer: Customer, changes: list[dict], source: str, actor: str, reason: str = ""
) -> bool:
    """Set several cells of one customer's preference matrix at once ({topic, channel, subscribed})."""
    topics = {t.key: t for t in Topic.objects.filter(key__in={c["topic"] for c in changes})}
    unknown = sorted({c["topic"] for c in changes} - set(topics))
    if unknown:
        raise InputError([FieldError("topic", unknown_topic_message(unknown[0]))])
    with transaction.atomic():
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        changed = subscriptions_apply(
            [(customer, [{**c, "source": source} for c in changes])], topics=topics, source=source, actor=actor,
            now=timezone.now(), reason=reason,
        )
        if changed:
            audit(actor=actor, action="subscription.changed", object_type="customer", object_id=customer.pk,
                  details={"changes": changes, "reason": reason})
    return bool(changed)


# --- Channel status (delivery feedback) --------------------------------------------------------


def channel_status_set(
    *, customer_ids: set[int], channel: str, status: str, reason: str, source: str, actor: str = ""
) -> set[int]:
    """Mark customers' addresses on ``channel``: bounced, complained, unsubscribed, or ok again.

    Set-based; writes a ``customer.channel_status`` timeline event for each real change and
    returns the ids of the customers whose status changed.
    """
    if not customer_ids:
        return set()
    now = timezone.now()
    rows = """
        SELECT old.customer_id, 'customer.channel_status' AS name, %(channel)s AS channel,
               jsonb_build_object('channel', %(channel)s, 'status', %(status)s, 'previous', old.status,
                                  'reason', %(reason)s) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM old JOIN up ON up.customer_id = old.customer_id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
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
            {timeline.insert_cte(rows)}
            SELECT {timeline.summary_sql()}
            """,
            {"ids": sorted(customer_ids), "channel": channel, "status": status, "reason": reason[:1000],
             "now": now, "source": source, "actor": actor},
        )
        written = timeline.written(cursor.fetchone()[0])
    return set(written.get("customer.channel_status", ()))


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
        timeline.add(
            customer=customer,
            name="consent.granted" if granted else "consent.revoked",
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
    return entry
