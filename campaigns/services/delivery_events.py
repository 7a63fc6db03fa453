"""Delivery events: what providers, tracking links and conversions report about deliveries.

Provider webhooks, the open pixel and click redirect, unsubscribes and attributed goal
events all become :class:`~campaigns.providers.DeliveryEvent` objects and end here, in the
one transitions path: statuses only move forward, each engagement counts once per
delivery, and an event id seen before is skipped.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from customers.models import ChannelStatus

from ..models import DELIVERY_STEPS, Campaign, DeliveryStatus
from ..providers import DeliveryEvent
from ..transitions import MILESTONES, deliveries_transition

# The outcomes that end a delivery's story, in the order one wins when a batch reports
# several for one delivery.
OUTCOMES = (DeliveryStatus.COMPLAINED, DeliveryStatus.BOUNCED, DeliveryStatus.UNSUBSCRIBED, DeliveryStatus.FAILED)
# What each outcome may end: any delivery whose story has not ended; a failure only before
# the message was delivered (a provider's late "failed" after a delivery receipt is noise).
NOT_ENDED = tuple(status for step in DELIVERY_STEPS for status in step)
ENDS = {
    DeliveryStatus.COMPLAINED: NOT_ENDED,
    DeliveryStatus.BOUNCED: NOT_ENDED,
    DeliveryStatus.UNSUBSCRIBED: NOT_ENDED,
    DeliveryStatus.FAILED: (DeliveryStatus.PLANNED, DeliveryStatus.HELD, DeliveryStatus.SENDING, DeliveryStatus.SENT),
}
# What an address learns from an outcome: a hard bounce makes it unusable, a complaint stops
# marketing on that channel.
ADDRESS_STATUS = {
    DeliveryStatus.BOUNCED: ChannelStatus.Status.BOUNCED,
    DeliveryStatus.COMPLAINED: ChannelStatus.Status.COMPLAINED,
}


def delivery_events_apply(*, events: list[DeliveryEvent]) -> int:
    """Apply provider, tracking and conversion events to deliveries; returns how many changed.

    Statuses only move forward; each engagement is counted once per delivery (a second open
    changes nothing); an event id seen before is skipped. A hard bounce makes the address
    unusable and a complaint unsubscribes the customer from marketing on that channel.
    """
    if not events:
        return 0
    rows = []
    for event in events:
        if event.kind not in MILESTONES and event.kind not in OUTCOMES:
            continue
        rows.append({
            "delivery_id": event.delivery_id, "provider": event.provider, "pid": event.provider_message_id,
            "kind": event.kind, "at": event.occurred_at.isoformat(), "reason": (event.reason or "")[:255],
            "event_id": event.event_id or None,
        })
    if not rows:
        return 0
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            _incoming_reset(cursor)
            # Dedupe on provider event ids; then resolve each event to one delivery.
            cursor.execute(
                """
                WITH r AS (
                    SELECT * FROM jsonb_to_recordset(%s::jsonb)
                        AS r(delivery_id bigint, provider text, pid text, kind text, at timestamptz, reason text, event_id text)
                ),
                fresh AS (
                    INSERT INTO campaigns_trackingreceipt (key, received_at)
                    SELECT DISTINCT event_id, now() FROM r WHERE event_id IS NOT NULL
                    ON CONFLICT DO NOTHING RETURNING key
                )
                INSERT INTO delivery_incoming
                SELECT coalesce(r.delivery_id, d.id), r.kind, min(r.at), max(r.reason)
                FROM r LEFT JOIN campaigns_delivery d
                    ON r.delivery_id IS NULL AND d.provider = r.provider AND d.provider_message_id = r.pid AND r.pid <> ''
                WHERE (r.event_id IS NULL OR r.event_id IN (SELECT key FROM fresh))
                  AND coalesce(r.delivery_id, d.id) IS NOT NULL
                GROUP BY 1, 2
                """,
                [json.dumps(rows)],
            )
        changed = _milestones_apply(now)
        # Negative outcomes end the delivery's story: the gravest one reported wins.
        changed += deliveries_transition(
            only_from=ENDS, now=now, at="src.at", reason="src.reason",
            source="""
                SELECT DISTINCT ON (delivery_id) delivery_id AS id, kind AS status, at, reason
                FROM delivery_incoming WHERE kind = ANY(%(outcomes)s)
                ORDER BY delivery_id, array_position(%(outcomes)s::text[], kind)""",
            params={"outcomes": list(OUTCOMES)},
            sets={"reason": "coalesce(nullif(src.reason, ''), d.reason)", "failed_at": "coalesce(d.failed_at, src.at)"},
        ).events
        _address_feedback()
    return changed


def _incoming_reset(cursor) -> None:
    """The transaction's scratch table of events, one row per (delivery, kind), emptied."""
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS delivery_incoming (delivery_id bigint, kind text, at timestamptz, reason text)"
    )
    cursor.execute("TRUNCATE delivery_incoming")


def _milestones_apply(now: datetime) -> int:
    """Engagement in ``delivery_incoming``: first time only, implied steps included (a click
    implies an open, both a delivery)."""
    return deliveries_transition(
        forward=True, now=now, params={"milestones": list(MILESTONES)},
        source="SELECT delivery_id AS id, kind AS status, at FROM delivery_incoming WHERE kind = ANY(%(milestones)s)",
    ).events


def engagement_apply_claimed(*, claim: str, params: dict) -> int:
    """Apply the opens and clicks that ``claim`` takes: a data-modifying statement returning
    ``(delivery_id, kind, at)`` rows, such as a DELETE from a queue. Returns how many rows it
    claimed. Call inside a transaction: the claim and its effects commit together.
    """
    with connection.cursor() as cursor:
        _incoming_reset(cursor)
        cursor.execute(
            f"""
            WITH claimed AS ({claim}),
            grouped AS (
                INSERT INTO delivery_incoming
                SELECT delivery_id, kind, min(at), '' FROM claimed GROUP BY 1, 2
            )
            SELECT count(*) FROM claimed
            """,
            params,
        )
        claimed = cursor.fetchone()[0]
    if claimed:
        _milestones_apply(timezone.now())
    return claimed


def engagement_record(*, delivery_id: int, kind: str, at: datetime | None = None) -> int:
    """Record an open or a click of one delivery in one statement: the tracking hot path.

    The same rules as :func:`delivery_events_apply` (first time only, a click implies an
    open, both imply delivery, the status only moves forward), without its batch set-up.
    Returns how many metrics changed (0 for a repeat).
    """
    if kind not in (DeliveryStatus.OPENED, DeliveryStatus.CLICKED):
        raise ValueError(f"not an engagement: {kind}")
    at = at or timezone.now()
    return deliveries_transition(
        forward=True, now=at, params={"id": delivery_id, "kind": kind, "at": at},
        source="SELECT %(id)s::bigint AS id, %(kind)s::text AS status, %(at)s::timestamptz AS at",
    ).events


def _address_feedback() -> None:
    """Hard bounces make an address unusable; complaints stop marketing on that channel."""
    from customers.services.preferences import channel_status_set

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.customer_id, d.channel, i.kind, i.reason
            FROM delivery_incoming i JOIN campaigns_delivery d ON d.id = i.delivery_id
            WHERE i.kind = ANY(%s)
            """,
            [list(ADDRESS_STATUS)],
        )
        rows = cursor.fetchall()
    for kind, status in ADDRESS_STATUS.items():
        for channel in {row[1] for row in rows if row[2] == kind}:
            ids = {row[0] for row in rows if row[2] == kind and row[1] == channel}
            reason = next((row[3] for row in rows if row[2] == kind and row[1] == channel and row[3]), kind)
            channel_status_set(customer_ids=ids, channel=channel, status=status, reason=reason, source="delivery")


def conversions_attribute(*, customer_ids: set[int], names: set[str]) -> int:
    """Last-touch attribution: a goal event within the window after a delivery converts it.

    Only events that arrived for campaigns whose goal they are; the latest delivery sent to
    the customer before the event, inside the window, gets the conversion.
    """
    goals = set(
        Campaign.objects.filter(goal_event__in=names).exclude(status=Campaign.Status.DRAFT).values_list("goal_event", flat=True)
    )
    if not goals or not customer_ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT ON (e.id) d.id, e.occurred_at
            FROM customers_event e
            JOIN campaigns_delivery d ON d.customer_id = e.customer_id AND d.sent_at IS NOT NULL
                 AND d.sent_at <= e.occurred_at
            JOIN campaigns_campaign c ON c.id = d.campaign_id AND c.goal_event = e.name
                 AND e.occurred_at <= d.sent_at + make_interval(hours => c.goal_within_hours)
            WHERE e.customer_id = ANY(%s) AND e.name = ANY(%s)
              AND e.received_at > now() - interval '1 hour'
            ORDER BY e.id, d.sent_at DESC, d.id DESC
            """,
            [sorted(customer_ids), sorted(goals)],
        )
        rows = cursor.fetchall()
    events = [DeliveryEvent(DeliveryStatus.CONVERTED, at, delivery_id=delivery_id) for delivery_id, at in rows]
    return delivery_events_apply(events=events)
