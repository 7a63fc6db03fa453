"""Each rule of the send policy, as the marketer and the customer would notice it."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from campaigns import dispatch, policy
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from customers.models import ChannelKind
from customers.services.preferences import channel_status_set, consent_record, subscription_set
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, DeviceFactory, SubscriptionFactory


def decide(customer, topic, channel, at=None):
    at = at or datetime(2026, 11, 23, 12, 0, tzinfo=ZoneInfo("UTC"))
    (decision,) = policy.decide(customer_id=customer.pk, topic_id=topic.pk, channels=[channel], at=at)
    return decision


@pytest.fixture
def subscribed(db, topics):
    customer = CustomerFactory(timezone="UTC")
    for channel in ("email", "sms", "push"):
        SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel=channel)
    return customer


def test_marketing_needs_an_explicit_subscription(subscribed, topics):
    assert decide(subscribed, topics["newsletter"], "email").action == "send"
    assert decide(subscribed, topics["coupons"], "email").reason == "not_subscribed"
    subscription_set(customer=subscribed, topic=topics["newsletter"], channel="email", subscribed=False,
                     source="test", actor="test")
    assert decide(subscribed, topics["newsletter"], "email").reason == "not_subscribed"


def test_transactional_goes_without_subscription_but_honours_an_explicit_opt_out(subscribed, topics):
    assert decide(subscribed, topics["alerts"], "sms").action == "send"
    subscription_set(customer=subscribed, topic=topics["alerts"], channel="sms", subscribed=False,
                     source="test", actor="test")
    assert decide(subscribed, topics["alerts"], "sms").reason == "not_subscribed"


def test_revoked_consent_suppresses(subscribed, topics):
    consent_record(customer=subscribed, channel="email", granted=False, source="test", actor="test")
    assert decide(subscribed, topics["newsletter"], "email").reason == "consent_revoked"
    assert decide(subscribed, topics["newsletter"], "sms").action == "send"


def test_address_rules(subscribed, topics):
    assert decide(subscribed, topics["newsletter"], "push").reason == "no_address"
    DeviceFactory(customer=subscribed)
    assert decide(subscribed, topics["newsletter"], "push").action == "send"
    channel_status_set(customer_ids={subscribed.pk}, channel="email", status="bounced", reason="550", source="test")
    assert decide(subscribed, topics["newsletter"], "email").reason == "bounced"
    # A bounced address is unusable even for receipts.
    assert decide(subscribed, topics["alerts"], "email").reason == "bounced"


def test_complaint_stops_marketing_but_not_receipts(subscribed, topics):
    channel_status_set(customer_ids={subscribed.pk}, channel="email", status="complained", reason="spam", source="test")
    assert decide(subscribed, topics["newsletter"], "email").reason == "complained"
    assert decide(subscribed, topics["alerts"], "email").action == "send"


def test_quiet_hours_defer_to_the_next_local_morning(topics, settings):
    settings.QUIET_HOURS = (datetime.strptime("08:00", "%H:%M").time(), datetime.strptime("21:00", "%H:%M").time())
    tokyo = CustomerFactory(timezone="Asia/Tokyo")
    SubscriptionFactory(customer=tokyo, topic=topics["newsletter"], channel="email")
    # 23:30 in Tokyo
    at = datetime(2026, 11, 23, 14, 30, tzinfo=ZoneInfo("UTC"))
    decision = decide(tokyo, topics["newsletter"], "email", at=at)
    assert decision.action == "defer"
    assert decision.until == datetime(2026, 11, 24, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    # Alerts are not held back.
    assert decide(tokyo, topics["alerts"], "email", at=at).action == "send"


def test_unknown_timezone_falls_back_instead_of_failing(topics):
    customer = CustomerFactory(timezone="Mars/Olympus_Mons")
    SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel="email")
    assert decide(customer, topics["newsletter"], "email").action == "send"


def test_frequency_cap_counts_every_channel_and_campaign(audience, settings):
    settings.FREQUENCY_CAP_MESSAGES = 2
    ada = audience["people"]["ada"]  # email and SMS
    campaign_launch(campaign=make_campaign(audience, name="First"), actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    assert Delivery.objects.filter(customer=ada, status="sent").count() == 2
    second = make_campaign(audience, name="Second")
    campaign_launch(campaign=second, actor="test")
    reasons = dict(Delivery.objects.filter(campaign=second, customer=ada).values_list("channel", "reason"))
    assert reasons == {"email": "frequency_cap", "sms": "frequency_cap"}
    # Bob got one message: one more is allowed.
    bob = Delivery.objects.get(campaign=second, customer=audience["people"]["bob"], channel="email")
    assert bob.status == "planned"


def test_the_cap_is_checked_again_at_send_time(audience, settings):
    settings.FREQUENCY_CAP_MESSAGES = 1
    first, second = make_campaign(audience, name="First"), make_campaign(audience, name="Second")
    campaign_launch(campaign=first, actor="test")
    campaign_launch(campaign=second, actor="test")  # both planned before anything was sent
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = audience["people"]["ada"]
    sent = Delivery.objects.filter(customer=ada, status="sent")
    assert sent.count() == 1
    assert Delivery.objects.filter(customer=ada, status="suppressed", reason="frequency_cap").count() == 3


def test_an_unsubscribe_after_launch_stops_the_send(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    bob = audience["people"]["bob"]
    subscription_set(customer=bob, topic=audience["topic"], channel="email", subscribed=False, source="test", actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    delivery = Delivery.objects.get(campaign=campaign, customer=bob)
    assert (delivery.status, delivery.reason) == ("suppressed", "not_subscribed")


def _zone_at_night(settings) -> str:
    """A timezone where it is now outside the allowed hours (there is always one)."""
    now = timezone.now()
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}"
        local = now.astimezone(ZoneInfo(name)).time()
        if not (settings.QUIET_HOURS[0] <= local < settings.QUIET_HOURS[1]):
            return name
    raise AssertionError("no night-time zone")


def test_quiet_hours_at_launch_defer_and_never_drop(audience, settings):
    settings.QUIET_HOURS = (datetime.strptime("08:00", "%H:%M").time(), datetime.strptime("21:00", "%H:%M").time())
    bob = audience["people"]["bob"]
    bob.timezone = _zone_at_night(settings)
    bob.save()
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    delivery = Delivery.objects.get(campaign=campaign, customer=bob)
    assert delivery.status == "planned"
    assert delivery.due_at > timezone.now()
    assert delivery.due_at.astimezone(ZoneInfo(bob.timezone)).time() == settings.QUIET_HOURS[0]
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    delivery.refresh_from_db()
    assert delivery.status == "planned" and delivery.sent_at is None  # deferred, never dropped
    # Ada is in UTC-daytime or not; either way she is not held by Bob's night.
    assert Delivery.objects.filter(campaign=campaign, status="sent").exists() or Delivery.objects.filter(
        campaign=campaign, customer=audience["people"]["ada"], due_at__gt=timezone.now()).exists()
