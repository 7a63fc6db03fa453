"""Plausible engagement for sandbox sends, so the demo's dashboards move.

Only with ``SANDBOX_SIMULATE`` on (``make run`` turns it on). Every minute, deliveries the
sandbox "sent" in the last few hours get their delivery, opens, clicks and conversions
once the delay drawn for them has passed. Outcomes are drawn from a stable hash of the
delivery id, so running twice changes nothing. They go through the same paths real ones
do: ``delivery_events_apply`` for engagement, and conversions as ``events_ingest`` goal
events that attribution picks up.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from customers.services.ingestion import EventInput, events_ingest

from .models import DeliveryStatus
from .providers import DeliveryEvent
from .services.delivery_events import delivery_events_apply

# Per channel, percent of deliveries: (delivered, opened, clicked, converted). SMS and
# WhatsApp convert better than email, as they tend to in practice.
RATES = {
    "email": (97, 42, 9, 2),
    "sms": (98, 0, 14, 5),
    "whatsapp": (98, 70, 16, 6),
    "push": (92, 20, 6, 2),
    "voice": (85, 0, 0, 1),
}
# Delays after sending, in seconds, up to which outcomes spread.
SPREAD = {
    DeliveryStatus.DELIVERED: 20, DeliveryStatus.OPENED: 45 * 60, DeliveryStatus.CLICKED: 60 * 60,
    DeliveryStatus.CONVERTED: 90 * 60,
}
# A delivery these have ended engages no more.
ENDED = [DeliveryStatus.BOUNCED, DeliveryStatus.FAILED, DeliveryStatus.COMPLAINED, DeliveryStatus.UNSUBSCRIBED]
WINDOW = timedelta(hours=3)


def _due(kind: str, salt: str, index: int) -> str:
    """SQL: this delivery drew the outcome, and its delay has passed."""
    rates = " ".join(f"WHEN '{channel}' THEN {rate[index]}" for channel, rate in RATES.items())
    draw = f"abs(hashtext(d.id::text || '{salt}'))"
    return f"""(({draw} %% 100) < CASE d.channel {rates} ELSE 0 END
        AND d.sent_at + make_interval(secs => ({draw} / 100) %% {SPREAD[kind]}) <= %(now)s)"""


def simulate(*, now=None) -> dict:
    if not settings.SANDBOX_SIMULATE:
        return {}
    now = now or timezone.now()
    params = {"now": now, "since": now - WINDOW, "ended": ENDED}
    events: list[DeliveryEvent] = []
    with connection.cursor() as cursor:
        for kind, column, salt, index in (
            (DeliveryStatus.DELIVERED, "delivered_at", ":d", 0),
            (DeliveryStatus.OPENED, "opened_at", ":o", 1),
            (DeliveryStatus.CLICKED, "clicked_at", ":c", 2),
        ):
            cursor.execute(
                f"""
                SELECT d.id, greatest(d.sent_at, %(now)s - interval '1 minute') FROM campaigns_delivery d
                WHERE d.provider = 'sandbox' AND d.sent_at > %(since)s AND d.{column} IS NULL
                  AND d.status <> ALL(%(ended)s)
                  AND {_due(kind, salt, index)}
                LIMIT 20000
                """,
                params,
            )
            events += [DeliveryEvent(kind, at, delivery_id=delivery_id) for delivery_id, at in cursor.fetchall()]
        cursor.execute(
            f"""
            SELECT d.id, d.customer_id, c.goal_event FROM campaigns_delivery d
            JOIN campaigns_campaign c ON c.id = d.campaign_id AND c.goal_event <> ''
            WHERE d.provider = 'sandbox' AND d.sent_at > %(since)s AND d.converted_at IS NULL
              AND {_due(DeliveryStatus.CONVERTED, ":v", 3)}
            LIMIT 5000
            """,
            params,
        )
        conversions = cursor.fetchall()
    delivery_events_apply(events=events)
    converted = 0
    if conversions:
        # A drawn conversion that attribution credited to another of the customer's deliveries
        # (last touch) leaves this one unconverted, so it is drawn again next time; its
        # idempotency key makes that a duplicate, and only new conversions are counted.
        converted = events_ingest(
            items=[
                EventInput(customer_id=customer_id, external_id=None, email=None, name=goal,
                           properties={"simulated": True, "total": 20 + delivery_id % 80},
                           occurred_at=now, idempotency_key=f"simulated-conversion-{delivery_id}")
                for delivery_id, customer_id, goal in conversions
            ],
            source="sandbox",
        ).accepted
    return {"events": len(events), "conversions": converted}
