"""Delivery events: what providers, tracking links and conversions report about deliveries.

Provider webhooks, the open pixel and click redirect, unsubscribes and attributed goal
events all become :class:`~campaigns.providers.DeliveryEvent` objects and end here:
statuses only move forward, each engagement counts once per delivery, and an event id seen
before is skipped.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from .. import outbox
from ..models import Campaign
from ..outbox import run_transitions, transitions_sql
from ..providers import DeliveryEvent

ENGAGEMENT = {
    # kind: (timestamp column, status it moves to, the statuses it can follow)
    "delivered": "delivered_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "converted": "converted_at",
}
NEGATIVE = {"bounced", "complained", "unsubscribed", "failed"}


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
        if event.kind not in ENGAGEMENT and event.kind not in NEGATIVE:
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
            # Dedupe on provider event ids; then resolve each event to one delivery.
            cursor.execute(
                """
                CREATE TEMP TABLE IF NOT EXISTS delivery_incoming
                    (delivery_id bigint, kind text, at timestamptz, reason text)
                """
            )
            cursor.execute("TRUNCATE delivery_incoming")
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
        changed = 0
        # Engagement: first time only, implied steps included (a click implies an open, both a delivery).
        changed += run_transitions(
            transitions_sql(
                ctes=f"""
                e AS (
                    SELECT delivery_id, min(at) FILTER (WHERE kind IN ('delivered', 'opened', 'clicked', 'converted')) AS delivered,
                           min(at) FILTER (WHERE kind IN ('opened', 'clicked')) AS opened,
                           min(at) FILTER (WHERE kind = 'clicked') AS clicked,
                           min(at) FILTER (WHERE kind = 'converted') AS converted
                    FROM delivery_incoming WHERE kind IN ('delivered', 'opened', 'clicked', 'converted')
                    GROUP BY delivery_id
                ),
                old AS (
                    -- Locked in id order first, so concurrent events for one delivery count once.
                    SELECT d.id, d.delivered_at, d.opened_at, d.clicked_at, d.converted_at
                    FROM campaigns_delivery d JOIN e ON e.delivery_id = d.id
                    WHERE d.sent_at IS NOT NULL ORDER BY d.id FOR UPDATE OF d
                ),
                upd AS (
                    UPDATE campaigns_delivery d SET
                        delivered_at = coalesce(d.delivered_at, e.delivered),
                        opened_at = coalesce(d.opened_at, e.opened),
                        clicked_at = coalesce(d.clicked_at, e.clicked),
                        converted_at = coalesce(d.converted_at, e.converted),
                        status = CASE
                            WHEN {outbox._rank('d.status')} >= 10 THEN d.status
                            WHEN e.converted IS NOT NULL THEN 'converted'
                            WHEN e.clicked IS NOT NULL AND {outbox._rank('d.status')} < 5 THEN 'clicked'
                            WHEN e.opened IS NOT NULL AND {outbox._rank('d.status')} < 4 THEN 'opened'
                            WHEN e.delivered IS NOT NULL AND {outbox._rank('d.status')} < 3 THEN 'delivered'
                            ELSE d.status END,
                        updated_at = %(now)s
                    FROM e, old
                    WHERE d.id = e.delivery_id AND old.id = d.id
                      AND ((old.delivered_at IS NULL AND e.delivered IS NOT NULL)
                           OR (old.opened_at IS NULL AND e.opened IS NOT NULL)
                           OR (old.clicked_at IS NULL AND e.clicked IS NOT NULL)
                           OR (old.converted_at IS NULL AND e.converted IS NOT NULL))
                    RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                        ARRAY[
                            CASE WHEN old.delivered_at IS NULL AND e.delivered IS NOT NULL THEN 'delivered' END,
                            CASE WHEN old.opened_at IS NULL AND e.opened IS NOT NULL THEN 'opened' END,
                            CASE WHEN old.clicked_at IS NULL AND e.clicked IS NOT NULL THEN 'clicked' END,
                            CASE WHEN old.converted_at IS NULL AND e.converted IS NOT NULL THEN 'converted' END
                        ] AS metrics,
                        ARRAY[e.delivered, e.opened, e.clicked, e.converted] AS ats
                )
                """,
                changed="""
                SELECT upd.id, upd.customer_id, upd.campaign_id, upd.journey_id, upd.channel, upd.variant_id,
                       m.metric, m.at, ''::text AS reason
                FROM upd, unnest(upd.metrics, upd.ats) AS m(metric, at) WHERE m.metric IS NOT NULL
                """
            ),
            {"now": now},
        )
        # Negative outcomes end the delivery's story.
        changed += run_transitions(
            transitions_sql(
                f"""
                UPDATE campaigns_delivery d SET status = i.kind, reason = coalesce(nullif(i.reason, ''), d.reason),
                       failed_at = coalesce(d.failed_at, i.at), updated_at = %(now)s
                FROM (SELECT DISTINCT ON (delivery_id) * FROM delivery_incoming
                      WHERE kind IN ('bounced', 'complained', 'unsubscribed', 'failed')
                      ORDER BY delivery_id, CASE kind WHEN 'complained' THEN 0 WHEN 'bounced' THEN 1
                               WHEN 'unsubscribed' THEN 2 ELSE 3 END) i
                WHERE d.id = i.delivery_id AND d.status NOT IN ('bounced', 'complained', 'unsubscribed', 'failed', 'suppressed', 'cancelled')
                  AND NOT (i.kind = 'failed' AND {outbox._rank('d.status')} >= 3 AND {outbox._rank('d.status')} < 10)
                RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                          i.kind AS metric, i.at, i.reason
                """
            ),
            {"now": now},
        )
        _address_feedback()
    return changed


def engagement_record(*, delivery_id: int, kind: str, at: datetime | None = None) -> int:
    """Record an open or a click of one delivery in one statement: the tracking hot path.

    The same rules as :func:`delivery_events_apply` (first time only, a click implies an
    open, both imply delivery, the status only moves forward), without its batch set-up.
    Returns how many metrics changed (0 for a repeat).
    """
    if kind not in ("opened", "clicked"):
        raise ValueError(f"not an engagement: {kind}")
    at = at or timezone.now()
    steps = ["delivered", "opened"] + (["clicked"] if kind == "clicked" else [])
    rank = {"delivered": 3, "opened": 4, "clicked": 5}[kind]
    sets = ", ".join(f"{step}_at = coalesce(d.{step}_at, %(at)s)" for step in steps)
    firsts = ", ".join(f"CASE WHEN old.{step}_at IS NULL THEN '{step}' END" for step in steps)
    return run_transitions(
        transitions_sql(
            ctes=f"""
            old AS (
                -- Locked first: what is read here is what a concurrent hit committed, so
                -- two simultaneous first opens count once.
                SELECT id, delivered_at, opened_at, clicked_at FROM campaigns_delivery
                WHERE id = %(id)s AND sent_at IS NOT NULL FOR UPDATE
            ),
            upd AS (
                UPDATE campaigns_delivery d SET {sets},
                    status = CASE WHEN {outbox._rank('d.status')} < {rank} THEN '{kind}' ELSE d.status END,
                    updated_at = %(at)s
                FROM old
                WHERE d.id = old.id AND old.{kind}_at IS NULL
                RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                          ARRAY[{firsts}] AS metrics
            )
            """,
            changed="""
            SELECT upd.id, upd.customer_id, upd.campaign_id, upd.journey_id, upd.channel, upd.variant_id,
                   m.metric, %(at)s::timestamptz AS at, ''::text AS reason
            FROM upd, unnest(upd.metrics) AS m(metric) WHERE m.metric IS NOT NULL
            """,
        ),
        {"id": delivery_id, "at": at},
    )


def _address_feedback() -> None:
    """Hard bounces make an address unusable; complaints stop marketing on that channel."""
    from customers.services.preferences import channel_status_set

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.customer_id, d.channel, i.kind, i.reason
            FROM delivery_incoming i JOIN campaigns_delivery d ON d.id = i.delivery_id
            WHERE i.kind IN ('bounced', 'complained')
            """
        )
        rows = cursor.fetchall()
    for kind in ("bounced", "complained"):
        for channel in {row[1] for row in rows if row[2] == kind}:
            ids = {row[0] for row in rows if row[2] == kind and row[1] == channel}
            reason = next((row[3] for row in rows if row[2] == kind and row[1] == channel and row[3]), kind)
            channel_status_set(customer_ids=ids, channel=channel, status=kind, reason=reason, source="delivery")


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
    events = [DeliveryEvent("converted", at, delivery_id=delivery_id) for delivery_id, at in rows]
    return delivery_events_apply(events=events)
