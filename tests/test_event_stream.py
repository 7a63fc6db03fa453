"""One event stream: whatever path writes a change, segments hear of it the moment it commits.

Each test makes the change the way it happens in production (a recipient's mail client
loads the open pixel, a reader clicks, a phone replies STOP, the push service calls a token
dead, an admin records a consent) and checks the segment membership as soon as that
request or dispatch returns: no sweep, no button, no ingestion API call.
"""

from datetime import time

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import reverse

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery, SandboxMessage
from customers import timeline
from customers.models import Event
from customers.services.profiles import CustomerInput, customers_upsert, device_register
from customers.signals import customers_changed
from segments.models import SegmentMembership
from segments.services import segment_create, static_members_change
from tests.campaigns.conftest import make_campaign
from tests.campaigns.test_tracking import CLICK_HREF, PIXEL_SRC, found
from tests.campaigns.test_twilio import INBOUND_PATH, SITE, SMS_FROM, inbound, post_signed
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory, segment_history
from tests.fakes.push import FakeFCM
from tests.fakes.twilio import FakeTwilio

pytestmark = pytest.mark.django_db(transaction=True)


def no_email(event: str) -> dict:
    """Customers with no ``event`` on email in the last 21 days (the demo's "Re-engage")."""
    return {"event": event, "where": [{"prop": "channel", "op": "eq", "value": "email"}],
            "within_days": 21, "count": {"op": "eq", "value": 0}}


def is_member(segment, customer) -> bool:
    return SegmentMembership.objects.filter(segment=segment, customer=customer).exists()


def segment_events(customer, segment) -> list[str]:
    return [event.name for event in segment_history(customer, segment)]


@pytest.fixture(autouse=True)
def any_hour(settings):
    # Quiet hours would hold marketing back at night; these tests are about what happens after sending.
    settings.QUIET_HOURS = (time(0, 0), time.max)


@pytest.fixture
def readers(topics):
    """Three newsletter readers by email, SMS and push, and a static segment holding them."""
    people = {
        name: CustomerFactory(email=f"{name}@example.com", first_name=name.title(), timezone="UTC")
        for name in ("ada", "bob", "cyd")
    }
    for person in people.values():
        for channel in ("email", "sms", "push"):
            SubscriptionFactory(customer=person, topic=topics["newsletter"], channel=channel)
    everyone = segment_create(name="Readers", static=True, actor="test")
    static_members_change(segment=everyone, add=True, ids=[p.pk for p in people.values()], actor="test")
    return {"segment": everyone, "people": people, "topic": topics["newsletter"]}


def send_email(readers, *, to_segment) -> str:
    """Launch an email campaign to ``to_segment`` and dispatch it; ada's rendered HTML."""
    campaign = make_campaign({**readers, "segment": to_segment}, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 3
    ada = readers["people"]["ada"]
    delivery = Delivery.objects.get(campaign=campaign, customer=ada)
    return SandboxMessage.objects.get(delivery_id=delivery.pk).rendered["html"]


def test_opening_the_email_leaves_reengage_before_the_pixel_returns(readers):
    ada, bob = readers["people"]["ada"], readers["people"]["bob"]
    reengage = segment_create(name="Re-engage", rules=no_email("message.opened"), actor="test")
    assert is_member(reengage, ada) and is_member(reengage, bob)
    html = send_email(readers, to_segment=reengage)

    response = Client().get(found(PIXEL_SRC, html))

    assert response.status_code == 200 and response["Content-Type"] == "image/gif"
    assert not is_member(reengage, ada)
    assert segment_events(ada, reengage) == ["segment.entered", "segment.exited"]
    assert is_member(reengage, bob)  # nobody else moved
    reengage.refresh_from_db()
    assert reengage.member_count == 2


def test_clicking_leaves_a_no_click_segment_before_the_redirect_returns(readers):
    ada = readers["people"]["ada"]
    no_clicks = segment_create(name="Never clicks", rules=no_email("message.clicked"), actor="test")
    html = send_email(readers, to_segment=no_clicks)

    response = Client().get(found(CLICK_HREF, html))

    assert response.status_code == 302 and response.url == "https://shop.example.com/sale"
    assert not is_member(no_clicks, ada)
    assert segment_events(ada, no_clicks) == ["segment.entered", "segment.exited"]


@pytest.fixture
def twilio(settings):
    with FakeTwilio() as fake:
        fake.configure(settings, sms_from=SMS_FROM, site_url=SITE)
        yield fake


def test_a_stop_reply_leaves_reachable_by_sms_before_twilio_gets_its_answer(readers, twilio):
    ada, bob = readers["people"]["ada"], readers["people"]["bob"]
    by_sms = segment_create(name="Reachable by SMS", rules={"reachable": "sms"}, actor="test")
    assert is_member(by_sms, ada)

    response = post_signed(Client(), twilio, INBOUND_PATH, inbound(ada.phone, "STOP"))

    assert response.status_code == 200
    assert not is_member(by_sms, ada)
    assert segment_events(ada, by_sms) == ["segment.entered", "segment.exited"]
    assert is_member(by_sms, bob)

    post_signed(Client(), twilio, INBOUND_PATH, inbound(ada.phone, "START"))
    assert is_member(by_sms, ada)


def test_a_dead_push_token_leaves_reachable_by_push_when_dispatch_returns(readers, settings, tmp_path):
    ada, bob = readers["people"]["ada"], readers["people"]["bob"]
    device_register(customer=ada, kind="fcm", token="fcm-ada-phone", platform="android", source="test", actor="test")
    device_register(customer=bob, kind="fcm", token="fcm-bob-old", platform="android", source="test", actor="test")
    by_push = segment_create(name="Reachable by push", rules={"reachable": "push"}, actor="test")
    assert is_member(by_push, ada) and is_member(by_push, bob)
    campaign = make_campaign({**readers, "segment": by_push}, channels=("push",))
    campaign_launch(campaign=campaign, actor="test")

    with FakeFCM(unregistered={"fcm-bob-old"}) as fcm:
        settings.PROVIDERS = {**settings.PROVIDERS, "push": "fcm"}
        settings.FCM_CREDENTIALS_FILE = fcm.service_account_file(tmp_path)
        settings.FCM_PROJECT_ID = ""
        settings.FCM_API_BASE = fcm.url
        dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert Delivery.objects.get(campaign=campaign, customer=bob).status == "failed"
    assert not is_member(by_push, bob)
    removed = Event.objects.get(customer=bob, name="device.removed")
    assert removed.source == "delivery" and removed.properties["device_id"]
    assert segment_events(bob, by_push) == ["segment.entered", "segment.exited"]
    assert is_member(by_push, ada)


def test_a_consent_revoked_in_admin_leaves_reachable_by_sms_when_the_page_is_saved(readers):
    ada = readers["people"]["ada"]
    by_sms = segment_create(name="Reachable by SMS", rules={"reachable": "sms"}, actor="test")
    admin = Client()
    admin.force_login(User.objects.create(username="root", is_staff=True, is_superuser=True))

    response = admin.post(reverse("admin:customers_consent_add"), {
        "customer": ada.pk, "channel": "sms", "granted": "", "legal_basis": "consent",
        "occurred_at_0": "2026-11-30", "occurred_at_1": "09:30:00", "wording": "Asked on the phone", "_save": "Save",
    })

    assert response.status_code == 302
    assert not is_member(by_sms, ada)
    assert segment_events(ada, by_sms) == ["segment.entered", "segment.exited"]


def test_a_channel_status_set_in_admin_is_on_the_timeline_and_moves_segments(readers):
    bob = readers["people"]["bob"]
    by_email = segment_create(name="Reachable by email", rules={"reachable": "email"}, actor="test")
    admin = Client()
    admin.force_login(User.objects.create(username="root", is_staff=True, is_superuser=True))

    response = admin.post(reverse("admin:customers_channelstatus_add"), {
        "customer": bob.pk, "channel": "email", "status": "complained", "reason": "Phoned to complain",
        "_save": "Save",
    })

    assert response.status_code == 302
    change = Event.objects.get(customer=bob, name="customer.channel_status")
    assert change.properties["status"] == "complained" and change.actor == "admin:root"
    assert not is_member(by_email, bob)


def test_a_segment_of_people_who_entered_another_in_the_last_hour_follows_it(readers):
    ada, bob = readers["people"]["ada"], readers["people"]["bob"]
    vip = segment_create(name="VIP", rules={"attr": "attributes.vip", "op": "eq", "value": True}, actor="test")
    new_vips = segment_create(name="New VIPs", actor="test", rules={
        "event": "segment.entered", "where": [{"prop": "segment_id", "op": "eq", "value": vip.pk}],
        "within_days": 1 / 24,
    })
    assert not is_member(new_vips, ada)

    customers_upsert(items=[CustomerInput(external_id=ada.external_id, attributes={"vip": True})],
                     source="crm", actor="test")

    assert is_member(vip, ada)
    assert is_member(new_vips, ada)
    assert not is_member(new_vips, bob)
    assert segment_events(ada, new_vips) == ["segment.entered"]


def test_each_transaction_is_heard_once_with_everything_it_wrote(readers):
    heard = []

    def listener(sender, change, **kwargs):
        heard.append(change)

    customers_changed.connect(listener, dispatch_uid="test.listener")
    try:
        ada, bob = readers["people"]["ada"], readers["people"]["bob"]
        with transaction.atomic():
            timeline.add(customer=ada, name="support.note", properties={"text": "called"}, source="support")
            timeline.add(customer=bob, name="order_completed", source="web")
            timeline.changed(customer_ids={bob.pk}, fields={"attributes.plan"})
        with pytest.raises(RuntimeError), transaction.atomic():
            timeline.add(customer=ada, name="order_completed", source="web")
            raise RuntimeError("rolled back")
    finally:
        customers_changed.disconnect(dispatch_uid="test.listener")

    assert len(heard) == 1
    (change,) = heard
    assert change.customer_ids == {ada.pk, bob.pk}
    assert change.by_name == {"support.note": {ada.pk}, "order_completed": {bob.pk}}
    assert change.fields == {"attributes.plan"}
