"""The whole path a marketer relies on: launch, policy, send once, record, count."""

from campaigns import dispatch
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch, campaigns_tick
from campaigns.models import Campaign, Counter, Delivery, SandboxMessage
from campaigns.queries import campaign_summary
from customers.models import Event
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS


def test_launch_writes_one_delivery_per_allowed_channel_and_suppresses_with_reasons(audience):
    campaign = make_campaign(audience)
    campaign_launch(campaign=campaign, actor="test")
    people = audience["people"]
    rows = {(d.customer_id, d.channel): (d.status, d.reason) for d in Delivery.objects.filter(campaign=campaign)}
    assert rows[(people["ada"].pk, "email")] == ("planned", "")
    assert rows[(people["ada"].pk, "sms")] == ("planned", "")
    assert rows[(people["bob"].pk, "sms")] == ("suppressed", "not_subscribed")
    assert rows[(people["dee"].pk, "email")] == ("suppressed", "not_subscribed")
    assert rows[(people["eve"].pk, "email")] == ("suppressed", "bounced")
    assert rows[(people["fay"].pk, "sms")] == ("suppressed", "no_address")
    summary = campaign_summary(Campaign.objects.get(pk=campaign.pk))
    assert summary["totals"]["planned"] == 5  # ada ×2, bob email, cyd sms, fay email
    assert summary["suppressed_by_reason"]["bounced"] == 1


def test_dispatch_sends_each_delivery_once_and_records_everything(audience):
    campaign = make_campaign(audience)
    campaign_launch(campaign=campaign, actor="test")
    result = dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    assert result["sent"] == 5
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}
    assert SandboxMessage.objects.count() == 5
    ada = audience["people"]["ada"]
    email = SandboxMessage.objects.get(to="ada@example.com")
    assert email.rendered["subject"] == "Hello Ada"
    assert "/t/c/" in email.rendered["html"] and "shop.example.com" not in email.rendered["html"]
    sms = SandboxMessage.objects.get(channel="sms", to=ada.phone)
    assert sms.rendered["body"].startswith("Hi Ada, sale today")
    assert Event.objects.filter(customer=ada, name="message.sent").count() == 2
    summary = campaign_summary(Campaign.objects.get(pk=campaign.pk))
    assert summary["totals"]["sent"] == 5
    assert summary["channels"]["sms"]["sent"] == 2
    campaigns_tick()
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_preferred_strategy_picks_one_channel(audience):
    campaign = make_campaign(audience, strategy="preferred")
    campaign_launch(campaign=campaign, actor="test")
    people = audience["people"]
    rows = {d.customer_id: (d.channel, d.status, d.routed_by) for d in Delivery.objects.filter(campaign=campaign)}
    assert len(rows) == 6
    assert rows[people["cyd"].pk][:2] == ("sms", "planned")
    assert rows[people["bob"].pk] == ("email", "planned", "explicit")
    assert rows[people["ada"].pk][:2] == ("email", "planned")  # both explicit, email first in fallback order


def test_engagement_events_count_once_and_move_forward(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    delivery = Delivery.objects.get(campaign=campaign, customer=audience["people"]["ada"])
    from django.utils import timezone

    from campaigns.providers import DeliveryEvent

    now = timezone.now()
    delivery_events_apply(events=[DeliveryEvent("clicked", now, delivery_id=delivery.pk)])
    delivery_events_apply(events=[DeliveryEvent("opened", now, delivery_id=delivery.pk)])
    delivery_events_apply(events=[DeliveryEvent("clicked", now, delivery_id=delivery.pk)])
    delivery.refresh_from_db()
    assert delivery.status == "clicked" and delivery.opened_at and delivery.delivered_at
    totals = campaign_summary(campaign)["totals"]
    assert (totals["opened"], totals["clicked"], totals["delivered"]) == (1, 1, 1)
    assert Event.objects.filter(name="message.opened", customer=delivery.customer).count() == 1
