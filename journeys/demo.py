"""The demo's journeys, next-best-action catalog and the customer behaviour that moves
people through them (``make run`` only: ``SANDBOX_SIMULATE``).

Everything goes through the real paths: journeys are created and published by the
services, behaviour is ingested as events, and the executor moves people.
"""

from __future__ import annotations

import random
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from customers.services.ingestion import EventInput, events_ingest

from . import executor
from .models import Action, EventWait, Journey

WELCOME = "Welcome series"
CART = "Abandoned cart"
RECOVERY = "Service recovery"


def _email(subject: str, body: str) -> dict:
    return {"subject": subject, "html": f"<p>Hi {{{{ first_name|default:'there' }}}},</p><p>{body}</p>", "text": ""}


def welcome_graph() -> dict:
    return {
        "nodes": [
            {"id": "signed-up", "type": "trigger", "label": "Signed up", "x": 260, "y": 20,
             "config": {"kind": "event", "event": "customer.created"}},
            {"id": "welcome", "type": "send", "label": "Welcome email", "x": 260, "y": 140,
             "config": {"topic": "product-updates", "channel": "email", "content": {
                 "email": _email("Welcome, {{ first_name|default:'friend' }}", "Here is how to get started.")}}},
            {"id": "wait-1d", "type": "wait", "label": "Wait 1 day", "x": 260, "y": 260,
             "config": {"kind": "duration", "minutes": 1440}},
            {"id": "opened-app", "type": "condition", "label": "Opened the app?", "x": 260, "y": 380,
             "config": {"rule": {"event": "app_opened", "within_days": 2}}},
            {"id": "nudge", "type": "send", "label": "Push or SMS nudge", "x": 420, "y": 500,
             "config": {"topic": "product-updates", "channel": "preferred", "content": {
                 "push": {"title": "Your account is ready", "body": "Open the app to finish setting up."},
                 "sms": {"body": "{{ first_name|default:'Hi' }}, your account is ready: open the app to finish."}}}},
            {"id": "engaged", "type": "exit", "label": "Engaged", "x": 100, "y": 500, "config": {}},
            {"id": "done", "type": "exit", "label": "Done", "x": 420, "y": 620, "config": {}},
        ],
        "edges": [
            {"from": "signed-up", "port": "out", "to": "welcome"},
            {"from": "welcome", "port": "sent", "to": "wait-1d"},
            {"from": "welcome", "port": "suppressed", "to": "wait-1d"},
            {"from": "wait-1d", "port": "out", "to": "opened-app"},
            {"from": "opened-app", "port": "yes", "to": "engaged"},
            {"from": "opened-app", "port": "no", "to": "nudge"},
            {"from": "nudge", "port": "sent", "to": "done"},
            {"from": "nudge", "port": "suppressed", "to": "done"},
        ],
        "settings": {"reentry": {"mode": "once"}, "goal": {"event": "app_opened"}},
    }


def cart_graph() -> dict:
    return {
        "nodes": [
            {"id": "abandoned", "type": "trigger", "label": "Cart abandoned", "x": 260, "y": 20,
             "config": {"kind": "event", "event": "cart_abandoned"}},
            {"id": "wait-order", "type": "wait", "label": "Wait up to 4 h for the order", "x": 260, "y": 140,
             "config": {"kind": "event", "event": "order_completed", "match": "cart_id", "timeout_minutes": 240}},
            {"id": "bought", "type": "exit", "label": "Bought", "x": 60, "y": 260, "config": {}},
            {"id": "reminder", "type": "send", "label": "Reminder", "x": 400, "y": 260,
             "config": {"topic": "coupons", "channel": "preferred", "content": {
                 "sms": {"body": "{{ first_name|default:'Hi' }}, your cart is waiting: shop.example.com/cart"},
                 "email": _email("You left something behind", "Your cart is waiting for you."),
                 "push": {"title": "Your cart is waiting", "body": "Finish your order in one tap."}}}},
            {"id": "wait-1d", "type": "wait", "label": "Wait 1 day", "x": 400, "y": 380,
             "config": {"kind": "duration", "minutes": 1440}},
            {"id": "coupon", "type": "send", "label": "10% coupon", "x": 400, "y": 500,
             "config": {"topic": "coupons", "channel": "preferred", "content": {
                 "sms": {"body": "Still thinking? Take 10% off with CART10: shop.example.com/cart"},
                 "email": _email("10% off your cart", "Take 10% off with the code CART10.")}}},
            {"id": "done", "type": "exit", "label": "Done", "x": 400, "y": 620, "config": {}},
        ],
        "edges": [
            {"from": "abandoned", "port": "out", "to": "wait-order"},
            {"from": "wait-order", "port": "event", "to": "bought"},
            {"from": "wait-order", "port": "timeout", "to": "reminder"},
            {"from": "reminder", "port": "sent", "to": "wait-1d"},
            {"from": "reminder", "port": "suppressed", "to": "wait-1d"},
            {"from": "wait-1d", "port": "out", "to": "coupon"},
            {"from": "coupon", "port": "sent", "to": "done"},
            {"from": "coupon", "port": "suppressed", "to": "done"},
        ],
        "settings": {"reentry": {"mode": "per_value", "property": "cart_id"}, "goal": {"event": "order_completed"}},
    }


def recovery_graph(segment_id: int) -> dict:
    return {
        "nodes": [
            {"id": "bad-experience", "type": "trigger", "label": "Bad experience", "x": 300, "y": 20,
             "config": {"kind": "segment_entered", "segment": segment_id}},
            {"id": "best-action", "type": "nba", "label": "Make it right", "x": 300, "y": 140,
             "config": {"actions": ["apology-coupon", "call-back"], "holdout": 10}},
            {"id": "send-coupon", "type": "send", "label": "Apology coupon", "x": 80, "y": 280,
             "config": {"topic": "alerts", "channel": "preferred", "content": {
                 "sms": {"body": "We are sorry, {{ first_name|default:'' }}. Here is 15% off: SORRY15"},
                 "email": _email("We are sorry", "Please take 15% off your next order with SORRY15.")}}},
            {"id": "call-task", "type": "task", "label": "Call back", "x": 320, "y": 280,
             "config": {"title": "Call the customer back about their experience",
                        "instructions": "Apologise, listen, and offer a replacement or a refund.",
                        "outcomes": ["resolved", "no-answer"], "timeout_hours": 48}},
            {"id": "thanks", "type": "send", "label": "Thanks for talking", "x": 320, "y": 420,
             "config": {"topic": "alerts", "channel": "email", "content": {
                 "email": _email("Thank you for talking to us", "We are glad we could sort it out.")}}},
            {"id": "done", "type": "exit", "label": "Done", "x": 300, "y": 560, "config": {}},
        ],
        "edges": [
            {"from": "bad-experience", "port": "out", "to": "best-action"},
            {"from": "best-action", "port": "apology-coupon", "to": "send-coupon"},
            {"from": "best-action", "port": "call-back", "to": "call-task"},
            {"from": "best-action", "port": "none", "to": "done"},
            {"from": "send-coupon", "port": "sent", "to": "done"},
            {"from": "send-coupon", "port": "suppressed", "to": "done"},
            {"from": "call-task", "port": "resolved", "to": "thanks"},
            {"from": "call-task", "port": "no-answer", "to": "done"},
            {"from": "call-task", "port": "timeout", "to": "done"},
            {"from": "thanks", "port": "sent", "to": "done"},
            {"from": "thanks", "port": "suppressed", "to": "done"},
        ],
        "settings": {"reentry": {"mode": "after_exit", "cooldown_hours": 72}},
    }


RECOVERY_SEGMENT = ("Needs service recovery", "A failed delivery or a survey score of 6 or less in the last 7 days", {
    "any": [
        {"event": "delivery_failed", "within_days": 7},
        {"event": "survey_answered", "where": [{"prop": "score", "op": "lte", "value": 6}], "within_days": 7},
    ]
})


ACTIONS = [
    {"key": "apology-coupon", "name": "Apology coupon (15%)", "kind": Action.Kind.OFFER, "value": 15, "priority": 1,
     "eligibility": None, "accept_event": "order_completed", "max_offers": 2, "window_days": 30,
     "description": "A 15% code by the customer's preferred channel."},
    {"key": "call-back", "name": "Call back from support", "kind": Action.Kind.HUMAN, "value": 60, "priority": 1,
     "eligibility": {"attr": "attributes.lifetime_value", "op": "gte", "value": 500},
     "accept_event": "survey_answered", "max_offers": 1, "window_days": 60,
     "description": "For valuable customers: a person calls to put it right."},
]


def seed(*, stdout=None) -> None:
    """Create the demo's catalog and journeys, publish them, and replay six hours of
    behaviour through them so the live maps have people at every stage."""
    from segments.models import Segment
    from segments.services import segment_create

    from .action_services import action_create
    from .services import journey_create, journey_publish

    for spec in ACTIONS:
        if not Action.objects.filter(key=spec["key"]).exists():
            action_create(**spec, actor="demo")
    name, description, rules = RECOVERY_SEGMENT
    segment = Segment.objects.filter(name=name).first() or segment_create(
        name=name, description=description, rules=rules, actor="demo")
    for journey_name, graph, description in (
        (WELCOME, welcome_graph(), "Welcome new customers, and nudge those who have not opened the app."),
        (CART, cart_graph(), "Remind customers of an abandoned cart, then offer a coupon."),
        (RECOVERY, recovery_graph(segment.pk), "Put a bad experience right with the best next action."),
    ):
        if Journey.objects.filter(name=journey_name).exists():
            continue
        journey = journey_create(name=journey_name, description=description, graph=graph, actor="demo")
        journey_publish(journey=journey, actor="demo")
        if stdout:
            stdout.write(f"Journey '{journey_name}' published")
    replay(hours=6)


def replay(*, hours: int, step_minutes: int = 15) -> None:
    """Behaviour over the last ``hours``, played in steps with the executor's clock set to
    each step, so the counters and the timeline carry the times they happened at."""
    rng = random.Random(7)
    now = timezone.now()
    start = now - timedelta(hours=hours)
    for index in range(hours * 60 // step_minutes + 1):
        at = min(start + timedelta(minutes=index * step_minutes), now)
        token = executor.CLOCK.set(at)
        try:
            behave(rng, at=at, scale=4)
            executor.wake_all(now=at, budget_seconds=20)
        finally:
            executor.CLOCK.reset(token)


def _customers(rng: random.Random, n: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM customers_customer ORDER BY random() LIMIT %s", [n])
        return [pk for (pk,) in cursor.fetchall()]


def _ingest(events: list[tuple[int, str, dict]], at) -> None:
    if events:
        events_ingest(items=[EventInput(customer_id=pk, external_id=None, email=None, name=name, properties=props,
                                        occurred_at=at, idempotency_key=None) for pk, name, props in events],
                      source="demo")


def behave(rng: random.Random, *, at=None, scale: int = 1) -> None:
    """One step of the demo's customers: carts abandoned and some of them bought, app
    opens, the odd failed delivery and low survey score."""
    at = at or timezone.now()
    _signups(rng, scale)
    events = []
    for pk in _customers(rng, 3 * scale):
        events.append((pk, "cart_abandoned", {"cart_id": f"C{rng.randint(100000, 999999)}",
                                              "total": round(rng.uniform(20, 400), 2)}))
    for pk in _customers(rng, 2 * scale):
        events.append((pk, "app_opened", {"platform": rng.choice(["ios", "android"])}))
    if rng.random() < 0.5 * scale:
        pk = _customers(rng, 1)[0]
        events.append((pk, rng.choice(["delivery_failed", "survey_answered"]),
                       {"score": rng.randint(1, 6), "order_id": f"ORD-{rng.randint(10000, 99999)}"}))
    # Some carts waiting for their order are bought.
    waiting = list(EventWait.objects.filter(event="order_completed").values_list("customer_id", "match_value")[:200])
    for pk, cart in rng.sample(waiting, k=min(len(waiting), len(waiting) // 25 + (rng.random() < 0.5))):
        events.append((pk, "order_completed", {"cart_id": cart, "order_id": f"ORD-{rng.randint(10000, 99999)}",
                                               "total": round(rng.uniform(20, 400), 2)}))
    with transaction.atomic():
        _ingest(events, at)


FIRST_NAMES = ("Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena")
LAST_NAMES = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Costa", "Schmidt", "Kowalski", "Reyes")


def _signups(rng: random.Random, scale: int) -> None:
    """New customers sign up (``customer.created``): the welcome series picks them up."""
    from customers.services.profiles import CustomerInput, customers_upsert

    items = []
    for _ in range(rng.randint(0, scale)):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        number = rng.randint(100000, 999999)
        items.append(CustomerInput(external_id=f"signup-{number}", email=f"{first.lower()}.{number}@example.com",
                                   first_name=first, last_name=last, timezone="Europe/London",
                                   lifecycle_stage="new"))
    if items:
        customers_upsert(items=items, source="demo", actor="demo")


def simulate() -> None:
    """Every minute in the demo: a little behaviour now."""
    if settings.SANDBOX_SIMULATE:
        behave(random.Random())
