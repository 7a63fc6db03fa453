"""Workers sending at the same moment must keep the frequency cap between them."""

import threading
from collections import Counter

import pytest
from django.db import connection

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from segments.services import segment_create, static_members_change
from tests.campaigns.conftest import make_campaign
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.fakes.twilio import FakeTwilio

pytestmark = pytest.mark.django_db(transaction=True)

CUSTOMERS = 20


@pytest.fixture
def twilio(settings):
    """A fake Twilio slow enough that both workers' batches are in flight together."""
    with FakeTwilio(latency=0.5) as fake:
        fake.configure(settings)
        yield fake


def test_two_workers_sending_two_campaigns_to_the_same_customers_keep_the_cap(twilio, topics, settings):
    settings.FREQUENCY_CAP_MESSAGES = 1
    people = [CustomerFactory(timezone="UTC") for _ in range(CUSTOMERS)]
    for person in people:
        SubscriptionFactory(customer=person, topic=topics["newsletter"], channel="sms")
    segment = segment_create(name="Everyone", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[p.pk for p in people], actor="test")
    audience = {"segment": segment, "topic": topics["newsletter"]}
    # Both launched before anything was sent: each plans one SMS per customer.
    for name in ("Sale", "Clearance"):
        campaign_launch(campaign=make_campaign(audience, channels=("sms",), name=name), actor="test")
    assert Delivery.objects.filter(status="planned").count() == 2 * CUSTOMERS

    # Each worker claims a batch of one campaign's size, so each takes one campaign.
    start = threading.Barrier(2)
    errors: list[Exception] = []

    def worker() -> None:
        try:
            start.wait()
            dispatch.dispatch(budget_seconds=30, batch_size=CUSTOMERS)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    per_phone = Counter(message["to"] for message in twilio.messages)
    assert per_phone == {person.phone: 1 for person in people}
    outcomes = Counter(Delivery.objects.values_list("status", "reason"))
    assert outcomes == {("sent", ""): CUSTOMERS, ("suppressed", "frequency_cap"): CUSTOMERS}
