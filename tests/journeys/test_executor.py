"""The executor: customers enter from the event stream, wait, branch, get messages and leave,
each step once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Delivery
from customers.models import Event
from customers.services.ingestion import EventInput, events_ingest
from journeys import executor
from journeys.models import Enrollment, EventWait, Journey, Step, WakeUp
from journeys.services import journey_create, journey_publish
from tests.factories import CustomerFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def ingest(customer, name, **properties):
    events_ingest(items=[EventInput(customer_id=customer.pk, external_id=None, email=None, name=name,
                                    properties=properties, occurred_at=None, idempotency_key=None)],
                  source="api", actor="test")


def cart_graph(topic="coupons"):
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "Cart abandoned",
             "config": {"kind": "event", "event": "cart_abandoned"}},
            {"id": "wait", "type": "wait", "label": "Wait for the order",
             "config": {"kind": "event", "event": "order_completed", "match": "cart_id", "timeout_minutes": 240}},
            {"id": "remind", "type": "send", "label": "Reminder",
             "config": {"topic": topic, "channel": "sms", "content": {"sms": {"body": "Your cart is waiting"}}}},
            {"id": "bought", "type": "exit", "label": "Bought"},
            {"id": "done", "type": "exit", "label": "Done"},
        ],
        "edges": [
            {"from": "start", "port": "out", "to": "wait"},
            {"from": "wait", "port": "event", "to": "bought"},
            {"from": "wait", "port": "timeout", "to": "remind"},
            {"from": "remind", "port": "sent", "to": "done"},
            {"from": "remind", "port": "suppressed", "to": "done"},
        ],
        "settings": {"reentry": {"mode": "per_value", "property": "cart_id"}},
    }


@pytest.fixture
def cart_journey(topics):
    journey = journey_create(name="Abandoned cart", graph=cart_graph(), actor="test")
    journey_publish(journey=journey, actor="test")
    return Journey.objects.get(pk=journey.pk)


def test_an_event_enters_and_the_matching_order_ends_the_wait(cart_journey):
    customer = CustomerFactory(phone="+14155550100")
    ingest(customer, "cart_abandoned", cart_id="A1")
    enrollment = Enrollment.objects.get(journey=cart_journey, customer=customer)
    assert enrollment.node == "wait" and enrollment.status == "waiting"
    assert EventWait.objects.get(enrollment=enrollment).match_value == "A1"
    assert WakeUp.objects.get(enrollment=enrollment).port == "timeout"
    # Another cart's order does not end this wait; this cart's does.
    ingest(customer, "order_completed", cart_id="B2")
    enrollment.refresh_from_db()
    assert enrollment.node == "wait"
    ingest(customer, "order_completed", cart_id="A1")
    enrollment.refresh_from_db()
    assert enrollment.status == "completed" and enrollment.node == "bought"
    assert not WakeUp.objects.filter(enrollment=enrollment).exists()
    names = list(Event.objects.filter(customer=customer, name__startswith="journey.").order_by("id")
                 .values_list("name", flat=True))
    assert names == ["journey.entered", "journey.step", "journey.step", "journey.exited"]


def test_the_timeout_sends_the_reminder_once(cart_journey, topics):
    customer = CustomerFactory(phone="+14155550101")
    SubscriptionFactory(customer=customer, topic=topics["coupons"], channel="sms", subscribed=True)
    ingest(customer, "cart_abandoned", cart_id="A1")
    later = timezone.now() + timedelta(hours=5)
    assert executor.wake_due(now=later) == 1
    assert executor.wake_due(now=later) == 0
    enrollment = Enrollment.objects.get(journey=cart_journey, customer=customer)
    assert enrollment.status == "completed" and enrollment.node == "done"
    delivery = Delivery.objects.get(customer=customer)
    assert delivery.journey_id == cart_journey.pk and delivery.channel == "sms" and delivery.status == "planned"
    assert list(Step.objects.filter(enrollment=enrollment).order_by("id").values_list("node", "port")) == [
        ("start", "out"), ("wait", "timeout"), ("remind", "sent")]


def test_one_run_per_cart(cart_journey):
    customer = CustomerFactory()
    ingest(customer, "cart_abandoned", cart_id="A1")
    ingest(customer, "cart_abandoned", cart_id="A1")
    ingest(customer, "cart_abandoned", cart_id="B2")
    assert sorted(Enrollment.objects.filter(customer=customer).values_list("run_key", flat=True)) == ["A1", "B2"]
