""""Reachable" means one thing everywhere: segments, the send policy, the customer list and the profile page.

One customer per reason a channel can be unusable, and one who is fine; for each channel the
four readers must name the same customers, and the profile page must say why.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.policy import decide
from customers import reachability
from customers.models import Customer
from customers.queries import customers_search
from customers.services.preferences import channel_status_set, consent_record
from segments.models import SegmentMembership
from segments.services import segment_create
from tests.factories import CustomerFactory, DeviceFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)

CHANNELS = ("email", "sms", "whatsapp", "voice", "push")


@pytest.fixture
def cast(topics):
    """name -> customer; each but ``fine`` fails one rule on email and on SMS."""
    people = {
        "fine": CustomerFactory(email="fine@example.com", phone="+14155550101"),
        "no_address": CustomerFactory(email="", phone=""),
        "bounced": CustomerFactory(email="bounced@example.com", phone="+14155550102"),
        "complained": CustomerFactory(email="complained@example.com", phone="+14155550103"),
        "unsubscribed": CustomerFactory(email="unsubscribed@example.com", phone="+14155550104"),
        "consent_revoked": CustomerFactory(email="revoked@example.com", phone="+14155550105"),
    }
    DeviceFactory(customer=people["fine"])
    for channel in ("email", "sms"):
        for status in ("bounced", "complained", "unsubscribed"):
            channel_status_set(customer_ids={people[status].pk}, channel=channel, status=status,
                               reason="test", source="test")
        consent_record(customer=people["consent_revoked"], channel=channel, granted=False, source="test",
                       actor="test", occurred_at=timezone.now() - timedelta(minutes=1))
    for person in people.values():
        for channel in CHANNELS:
            SubscriptionFactory(customer=person, topic=topics["newsletter"], channel=channel)
    return people


def policy_reachable(customer, topic, channel) -> bool:
    (decision,) = decide(customer_id=customer.pk, topic_id=topic.pk, channels=[channel], at=timezone.now())
    return decision.reason not in reachability.Reason.values


@pytest.mark.parametrize("channel", CHANNELS)
def test_segments_policy_list_and_profile_agree_on_who_is_reachable(cast, topics, channel):
    segment = segment_create(name=f"Reachable by {channel}", rules={"reachable": channel}, actor="test")
    in_segment = set(SegmentMembership.objects.filter(segment=segment).values_list("customer_id", flat=True))
    listed = set(customers_search(reachable=channel).values_list("pk", flat=True))
    on_profile = {
        person.pk for person in cast.values()
        if next(r for r in reachability.overview(person.pk) if r.channel == channel).reachable
    }
    by_policy = {person.pk for person in cast.values() if policy_reachable(person, topics["newsletter"], channel)}

    expected = {cast["fine"].pk}
    if channel in ("whatsapp", "voice"):  # a phone number, and nothing recorded against it
        expected |= {p.pk for name, p in cast.items() if name != "no_address"}
    assert in_segment == listed == on_profile == by_policy == expected
    assert Customer.objects.count() == len(cast)


def test_the_profile_names_the_reason_and_what_still_goes_out(cast, topics):
    for name, person in cast.items():
        email = next(r for r in reachability.overview(person.pk) if r.channel == "email")
        assert email.reason == (None if name == "fine" else name)
        # Receipts still reach those who only turned marketing down.
        assert email.transactional_only == (name in ("complained", "unsubscribed"))
        (alert,) = decide(customer_id=person.pk, topic_id=topics["alerts"].pk, channels=["email"], at=timezone.now())
        assert (alert.reason or None) == email.transactional_reason


def test_the_profile_page_shows_reachability_per_channel(client, support, cast):
    client.force_login(support)
    html = client.get(f"/customers/{cast['complained'].pk}/").content.decode()
    card = html[html.index('id="reachability"'):html.index('id="consent"')]
    email_row = card[card.index('data-channel="email"'):card.index('data-channel="sms"')]
    assert "Transactional only" in email_row and "complained" in email_row
    push_row = card[card.index('data-channel="push"'):]
    assert "Unreachable" in push_row and "no address" in push_row
