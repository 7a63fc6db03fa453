"""Crash safety, staged sends, conversions, lifecycle: what 'sent exactly once' rests on."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from campaigns import dispatch, outbox, simulation
from campaigns.services.compose import VariantInput
from campaigns.services.delivery_events import engagement_record
from campaigns.services.lifecycle import (
    campaign_cancel,
    campaign_launch,
    campaign_pause,
    campaign_resume,
    campaign_send_remainder,
    campaigns_tick,
)
from campaigns.services.messages import message_send
from campaigns.models import Campaign, Counter, Delivery, SandboxMessage
from campaigns.queries import campaign_summary, staged_results
from customers.models import Event
from core.errors import InputError
from customers.services.ingestion import EventInput, events_ingest
from segments.services import static_members_change
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory


def test_writing_the_snapshot_twice_creates_nothing_new(audience):
    campaign = make_campaign(audience)
    campaign_launch(campaign=campaign, actor="test")
    before = Delivery.objects.filter(campaign=campaign).count()
    now = timezone.now()
    written, _, _ = outbox.snapshot_write(Campaign.objects.get(pk=campaign.pk), now=now, start=now)
    assert written == 0
    assert Delivery.objects.filter(campaign=campaign).count() == before


def test_a_delivery_left_sending_by_a_dead_worker_is_settled_without_a_second_send(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    now = timezone.now()
    claimed = dispatch.claim(limit=100, now=now)
    assert len(claimed) == 3
    # The worker sent the first two, then died before recording anything.
    messages, _ = dispatch.build(claimed[:2])
    from campaigns.providers import provider_for

    provider_for("email").send_batch(messages)
    assert SandboxMessage.objects.count() == 2
    # Nothing happens while the lease runs…
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}
    # …and once it expired, the next worker settles them: two found, one sent.
    Delivery.objects.filter(pk__in=claimed).update(lease_until=now - timedelta(seconds=1))
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 3
    assert SandboxMessage.objects.count() == 3
    assert set(Delivery.objects.filter(campaign=campaign, status="sent").values_list("pk", flat=True)) == set(claimed)
    assert campaign_summary(campaign)["totals"]["sent"] == 3


def test_a_late_worker_cannot_overwrite_what_another_settled(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    now = timezone.now()
    ids = dispatch.claim(limit=100, now=now)
    Delivery.objects.filter(pk__in=ids).update(lease_until=now - timedelta(seconds=1))
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    # The first worker comes back and reports a failure for rows already sent.
    from campaigns.providers import SendResult

    result = dispatch.record([SendResult(i, False, error="timeout", permanent=True) for i in ids], provider_names={}, now=now)
    assert result["failed"] == len(ids)  # it tried…
    assert Delivery.objects.filter(pk__in=ids, status="sent").count() == len(ids)  # …and changed nothing


def test_pause_holds_sending_and_resume_continues(audience):
    campaign = make_campaign(audience)
    campaign_launch(campaign=campaign, actor="test")
    campaign_pause(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}
    with pytest.raises(InputError):
        campaign_pause(campaign=campaign, actor="test")
    campaign_resume(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 5


def test_cancel_stops_what_is_not_sent(audience):
    campaign = make_campaign(audience)
    campaign_launch(campaign=campaign, actor="test")
    campaign_cancel(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}
    assert Delivery.objects.filter(campaign=campaign, status="cancelled").count() == 5
    assert Campaign.objects.get(pk=campaign.pk).status == "cancelled"


def test_throttle_sends_no_more_than_allowed_per_minute(audience):
    campaign = make_campaign(audience, throttle_per_minute=2)
    campaign_launch(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 2
    assert Delivery.objects.filter(campaign=campaign, status="planned").count() == 3


def test_staged_ab_test_holds_the_rest_until_a_winner_is_sent(audience):
    # Who is in the test half is a hash of the campaign's and customers' ids, which depend on
    # the tests that ran before: with only the three reachable customers of the audience, one
    # run in eight held nobody back. Twenty more make an empty remainder practically impossible.
    extra = [CustomerFactory(timezone="UTC") for _ in range(20)]
    for customer in extra:
        SubscriptionFactory(customer=customer, topic=audience["topic"], channel="email")
    static_members_change(segment=audience["segment"], add=True, ids=[c.pk for c in extra], actor="test")
    content = lambda word: {"email": {"subject": word, "html": f"<p>{word}</p>"}}  # noqa: E731
    campaign = make_campaign(
        audience, channels=("email",),
        variants=[VariantInput(key="A", content=content("Alpha")), VariantInput(key="B", content=content("Beta"))],
        test_percent=50, test_metric="click",
    )
    campaign_launch(campaign=campaign, actor="test")
    rows = Delivery.objects.filter(campaign=campaign).exclude(status="suppressed")
    held = rows.filter(status="held")
    assert rows.filter(test_group=True).count() + held.count() == rows.count()
    assert all(d.variant_id is None for d in held)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    campaigns_tick()
    assert held.exists()
    assert Campaign.objects.get(pk=campaign.pk).status == "testing"
    b = campaign.variants.get(key="B")
    campaign_send_remainder(campaign=campaign, actor="test", variant_id=b.pk)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    assert not Delivery.objects.filter(campaign=campaign, status="held").exists()
    remainder = Delivery.objects.filter(campaign=campaign, test_group=False).exclude(status="suppressed")
    assert all(d.variant_id == b.pk and d.status == "sent" for d in remainder)
    with pytest.raises(InputError):
        campaign_send_remainder(campaign=campaign, actor="test")


def test_significance_needs_a_real_difference():
    from campaigns.queries import Arm, best_arm

    best, p = best_arm([Arm("A", 1, 50, 1000), Arm("B", 2, 52, 1000)])
    assert p > 0.5
    best, p = best_arm([Arm("A", 1, 50, 1000), Arm("B", 2, 110, 1000)])
    assert best.key == 2 and p < 0.001


def test_a_goal_event_converts_the_last_delivery_within_the_window(audience, django_capture_on_commit_callbacks):
    campaign = make_campaign(audience, channels=("email",), goal_event="order_completed", goal_within_hours=24)
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = audience["people"]["ada"]
    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(items=[EventInput(customer_id=ada.pk, external_id=None, email=None, name="order_completed",
                                        properties={"total": 30}, occurred_at=None, idempotency_key="o-1")], source="api")
    delivery = Delivery.objects.get(campaign=campaign, customer=ada)
    assert delivery.status == "converted" and delivery.converted_at
    assert campaign_summary(campaign)["totals"]["converted"] == 1
    assert Event.objects.filter(customer=ada, name="message.converted").count() == 1
    # An order outside the window converts nothing.
    bob = audience["people"]["bob"]
    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(items=[EventInput(customer_id=bob.pk, external_id=None, email=None, name="order_completed",
                                        properties={}, occurred_at=timezone.now() + timedelta(hours=30),
                                        idempotency_key="o-2")], source="api")
    assert Delivery.objects.get(campaign=campaign, customer=bob).converted_at is None


def test_one_off_message_goes_through_the_same_policy(audience, topics):
    dee = audience["people"]["dee"]
    result = message_send(customer=dee, topic=topics["newsletter"], channel="email",
                                   content={"subject": "Hi", "html": "<p>Hi</p>"}, actor="test")
    assert (result.action, result.reason) == ("suppress", "not_subscribed")
    receipt = message_send(customer=dee, topic=topics["alerts"], channel="sms",
                                    content={"body": "Your order shipped"}, actor="test", idempotency_key="ship-1")
    assert receipt.action == "send"
    again = message_send(customer=dee, topic=topics["alerts"], channel="sms",
                                  content={"body": "Your order shipped"}, actor="test", idempotency_key="ship-1")
    assert again.duplicate and again.delivery.pk == receipt.delivery.pk
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    message = SandboxMessage.objects.get(delivery_id=receipt.delivery.pk)
    assert message.rendered["body"] == "Your order shipped"  # transactional: no STOP footer


def test_demo_campaigns_and_simulated_engagement(db, settings, django_capture_on_commit_callbacks):
    call_command("seed_demo")
    call_command("seed_segments")
    call_command("seed_campaigns")
    assert Campaign.objects.count() == 3
    assert Campaign.objects.filter(status="sending").count() == 2
    settings.SANDBOX_SIMULATE = True
    # The demo throttles its campaigns so the dashboards keep moving; here everything goes out
    # at once, so the drawn outcomes rest on the whole audience rather than on the first
    # minute's few hundred sends (where "no conversion at all" is a plausible draw).
    Campaign.objects.update(throttle_per_minute=None)
    dispatch.dispatch(budget_seconds=600)
    assert not Delivery.objects.filter(status="planned", campaign__status="sending").exists()
    # Two hours later, most of what the simulation drew for these deliveries has happened.
    Delivery.objects.filter(status="sent").update(sent_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        result = simulation.simulate(now=timezone.now())
    assert result["events"] > 0 and result["conversions"] > 0
    totals = campaign_summary(Campaign.objects.get(name="November newsletter"))["totals"]
    assert 0 < totals["opened"] < totals["sent"]
    assert 0 < totals["converted"] < totals["opened"]
    # Drawn once: running again adds nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert simulation.simulate(now=timezone.now()) == {"events": 0, "conversions": 0}


def test_the_tracking_fast_path_counts_like_the_general_one(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    first, second = Delivery.objects.filter(campaign=campaign, status="sent")[:2]
    assert engagement_record(delivery_id=first.pk, kind="clicked") == 3  # delivered, opened, clicked
    assert engagement_record(delivery_id=first.pk, kind="opened") == 0
    assert engagement_record(delivery_id=first.pk, kind="clicked") == 0
    assert engagement_record(delivery_id=second.pk, kind="opened") == 2
    first.refresh_from_db()
    assert first.status == "clicked"
    totals = campaign_summary(campaign)["totals"]
    assert (totals["delivered"], totals["opened"], totals["clicked"]) == (2, 2, 1)
    assert Event.objects.filter(name="message.opened", customer_id__in=[first.customer_id, second.customer_id]).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_slow_batch_keeps_its_lease_so_no_other_worker_takes_it_over(audience, settings):
    import time

    # Renewed every lease/3 seconds: a renewal may come more than a second late (a busy
    # machine) before the lease runs out.
    settings.DELIVERY_LEASE_SECONDS = 2
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    ids = dispatch.claim(limit=100, now=timezone.now())
    keeper = dispatch.LeaseKeeper(ids)
    keeper.start()
    try:
        time.sleep(3)  # the provider is slow: well past the first lease
        assert dispatch.claim_expired(limit=100, now=timezone.now()) == []
    finally:
        keeper.stop()
    # Without the keeper the lease runs out, and another worker takes the batch over.
    deadline = time.monotonic() + WAIT_SECONDS
    while not (taken := dispatch.claim_expired(limit=100, now=timezone.now())):
        assert time.monotonic() < deadline, "the lease never ran out once the keeper stopped"
        time.sleep(0.1)
    assert sorted(taken) == sorted(ids)
