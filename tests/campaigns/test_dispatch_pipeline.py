"""The dispatcher sends one batch while it records the last and claims the next: what that
must not change for the customer (one message each, the policy at send time) and for a
worker that dies with two batches in hand."""

from collections import Counter
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from campaigns import dispatch
from campaigns.models import Delivery, SandboxMessage
from campaigns.providers.twilio import TwilioSMS
from campaigns.services.lifecycle import campaign_launch
from segments.services import segment_create, static_members_change
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.fakes.twilio import FakeTwilio

SMS_FROM = "+15005550006"


@pytest.fixture
def twilio(settings):
    """A fake Twilio slow enough that a batch is still on the wire when the next is claimed."""
    with FakeTwilio(latency=0.05) as fake:
        fake.configure(settings, sms_from=SMS_FROM)
        settings.QUIET_HOURS = (time(0, 0), time(23, 59, 59, 999999))
        yield fake


def sms_audience(topics, count: int) -> dict:
    people = [CustomerFactory(timezone="UTC") for _ in range(count)]
    for person in people:
        SubscriptionFactory(customer=person, topic=topics["newsletter"], channel="sms")
    segment = segment_create(name="SMS people", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[p.pk for p in people], actor="test")
    return {"segment": segment, "topic": topics["newsletter"], "people": people}


def test_batches_smaller_than_the_audience_reach_everyone_once_with_twilios_ids(db, topics, twilio):
    audience = sms_audience(topics, 11)
    campaign = make_campaign(audience, channels=("sms",))
    campaign_launch(campaign=campaign, actor="test")

    totals = dispatch.dispatch(budget_seconds=WAIT_SECONDS, batch_size=3)

    assert totals == {"sent": 11, "failed": 0, "retry": 0, "suppressed": 0}
    assert Counter(m["to"] for m in twilio.messages) == {p.phone: 1 for p in audience["people"]}
    sids = {m["sid"]: m["to"] for m in twilio.messages}
    rows = Delivery.objects.filter(campaign=campaign).select_related("customer")
    assert {(row.status, sids.get(row.provider_message_id) == row.customer.phone) for row in rows} == {("sent", True)}
    # Nothing is left leased once the dispatcher returns.
    assert not Delivery.objects.filter(lease_until__isnull=False).exists()


def test_a_worker_that_dies_with_two_batches_in_hand_leaves_both_settled_once(db, topics, twilio):
    """One batch was on the wire (Twilio accepted it), the next was claimed and not sent yet."""
    audience = sms_audience(topics, 4)
    campaign = make_campaign(audience, channels=("sms",))
    campaign_launch(campaign=campaign, actor="test")
    now = timezone.now()
    on_the_wire = dispatch.claim(limit=2, now=now)
    messages, failures = dispatch.build(on_the_wire)
    assert failures == []
    answers = TwilioSMS().start_batch(messages)()
    assert all(answer.ok for answer in answers)
    claimed_next = dispatch.claim(limit=2, now=now)
    assert len(claimed_next) == 2 and not set(claimed_next) & set(on_the_wire)
    # The worker dies here: neither batch is recorded, and both leases run out.
    Delivery.objects.filter(pk__in=on_the_wire + claimed_next).update(lease_until=now - timedelta(seconds=1))
    accepted = {m["to"]: m["sid"] for m in twilio.messages}

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert Counter(m["to"] for m in twilio.messages) == {p.phone: 1 for p in audience["people"]}
    sids = {m["to"]: m["sid"] for m in twilio.messages}
    rows = Delivery.objects.filter(campaign=campaign).select_related("customer")
    assert {row.customer.phone: (row.status, row.provider_message_id) for row in rows} == {
        phone: ("sent", sid) for phone, sid in sids.items()}
    # The two Twilio had already accepted were found, not sent again.
    assert {sids[phone] for phone in accepted} == set(accepted.values())


def _allowed_hours_around_now() -> tuple[time, time, str]:
    """Allowed hours holding the present moment in the default zone, and a zone where it is night then."""
    local = timezone.now().astimezone(ZoneInfo(django_settings.TIME_ZONE))
    start = (local - timedelta(hours=1)).time() if local.hour >= 1 else time(0, 0)
    end = (local + timedelta(hours=1)).time() if local.hour < 22 else time(23, 59, 59, 999999)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}"
        there = timezone.now().astimezone(ZoneInfo(name)).time()
        if not (start <= there < end) and abs(offset) >= 4:
            return start, end, name
    raise AssertionError("no zone at night")


def test_quiet_hours_that_began_after_launch_defer_at_send_time_in_each_customers_zone(audience, settings):
    """Planned when anything went, sent when the customer's own clock allows it; an unknown
    zone name counts as the default zone and does not hold up the batch."""
    settings.QUIET_HOURS = (time(0, 0), time(23, 59, 59, 999999))
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    start, end, night_zone = _allowed_hours_around_now()
    ada, bob = audience["people"]["ada"], audience["people"]["bob"]
    bob.timezone = night_zone
    bob.save()
    ada.timezone = "Mars/Olympus_Mons"
    ada.save()
    settings.QUIET_HOURS = (start, end)

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    held = Delivery.objects.get(campaign=campaign, customer=bob)
    assert (held.status, held.sent_at, held.attempts, held.lease_until) == ("planned", None, 0, None)
    assert held.due_at > timezone.now()
    assert held.due_at.astimezone(ZoneInfo(night_zone)).time() == start
    assert Delivery.objects.get(campaign=campaign, customer=ada).status == "sent"


@pytest.mark.django_db(transaction=True)
def test_a_provider_sending_on_the_dispatchers_thread_gets_a_batch_only_once_the_one_before_is_recorded(audience):
    """Email through the sandbox, one delivery per batch: a worker dying mid-send leaves no
    more than one batch sent and unrecorded, which matters for providers (SMTP, push) that
    cannot be asked afterwards what they already have."""
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")

    dispatch.dispatch(budget_seconds=WAIT_SECONDS, batch_size=1)

    sent = list(Delivery.objects.filter(campaign=campaign, status="sent").order_by("sent_at"))
    assert len(sent) >= 3
    handed_over = dict(SandboxMessage.objects.values_list("delivery_id", "sent_at"))
    for recorded, following in zip(sent, sent[1:]):
        assert handed_over[following.pk] >= recorded.sent_at
