"""A small live journey for the page, live-map and browser tests: customers who sign up get a
welcome SMS, wait, and leave by a condition on their plan; ordering is the goal."""

from __future__ import annotations

from customers.services.ingestion import EventInput, events_ingest
from journeys.models import Journey
from journeys.services import journey_create, journey_publish


def welcome_graph(*, wait_minutes: int = 2880, wait_label: str = "Wait 2 days") -> dict:
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "Signed up", "config": {"kind": "event", "event": "signed_up"}},
            {"id": "welcome", "type": "send", "label": "Welcome SMS",
             "config": {"topic": "coupons", "channel": "sms", "content": {"sms": {"body": "Welcome aboard"}}}},
            {"id": "wait", "type": "wait", "label": wait_label,
             "config": {"kind": "duration", "minutes": wait_minutes}},
            {"id": "check", "type": "condition", "label": "Pro plan?",
             "config": {"context": [{"path": "entry.plan", "op": "eq", "value": "pro"}]}},
            {"id": "pro", "type": "exit", "label": "Pro done", "config": {}},
            {"id": "basic", "type": "exit", "label": "Basic done", "config": {}},
        ],
        "edges": [
            {"from": "start", "port": "out", "to": "welcome"},
            {"from": "welcome", "port": "sent", "to": "wait"},
            {"from": "welcome", "port": "suppressed", "to": "wait"},
            {"from": "wait", "port": "out", "to": "check"},
            {"from": "check", "port": "yes", "to": "pro"},
            {"from": "check", "port": "no", "to": "basic"},
        ],
        "settings": {"reentry": {"mode": "once"}, "goal": {"event": "order_completed"}},
    }


def welcome_journey(*, name: str = "Welcome series", publish: bool = True) -> Journey:
    """The journey (needs the ``topics`` fixture), published as version 1 unless ``publish`` is False."""
    journey = journey_create(name=name, graph=welcome_graph(), actor="test")
    if publish:
        journey_publish(journey=journey, actor="test")
    return Journey.objects.select_related("live_version").get(pk=journey.pk)


def ingest(customer, name: str, **properties) -> None:
    """An event through the ingestion service, as the API would store it."""
    events_ingest(items=[EventInput(customer_id=customer.pk, external_id=None, email=None, name=name,
                                    properties=properties, occurred_at=None, idempotency_key=None)],
                  source="api", actor="test")
