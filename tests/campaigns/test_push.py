"""Push campaigns through FCM (HTTP v1) and Web Push (VAPID) to push services on loopback."""

import re
from datetime import time, timedelta

import pytest
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from customers.models import Device
from customers.services.profiles import device_register
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import SubscriptionFactory
from tests.fakes.push import FakeFCM, FakePushService, vapid_keys


@pytest.fixture
def push_audience(audience, settings):
    """ada, bob and cyd take the newsletter by push; quiet hours never defer (the test may run at night)."""
    settings.QUIET_HOURS = (time(0, 0), time(23, 59, 59, 999999))
    for name in ("ada", "bob", "cyd"):
        SubscriptionFactory(customer=audience["people"][name], topic=audience["topic"], channel="push")
    return audience


def add_device(customer, kind, token):
    return device_register(customer=customer, kind=kind, token=token, platform="android" if kind == "fcm" else "web",
                           source="test", actor="test")


def launch(audience, name="Winter sale"):
    campaign = make_campaign(audience, channels=("push",), name=name)
    campaign_launch(campaign=campaign, actor="test")
    return campaign


def delivery_of(campaign, person) -> Delivery:
    return Delivery.objects.get(campaign=campaign, customer=person, channel="push")


# --- FCM -----------------------------------------------------------------------------------------------


@pytest.fixture
def fcm(push_audience, settings, tmp_path):
    with FakeFCM(unregistered={"fcm-ada-old", "fcm-bob-old"}, invalid={"fcm-cyd-garbage"}) as fake:
        settings.PROVIDERS = {**settings.PROVIDERS, "push": "fcm"}
        settings.FCM_CREDENTIALS_FILE = fake.service_account_file(tmp_path)
        settings.FCM_PROJECT_ID = ""  # taken from the service-account file
        settings.FCM_API_BASE = fake.url
        yield fake


def test_an_fcm_push_reaches_the_live_device_and_dead_tokens_are_removed(push_audience, fcm):
    people = push_audience["people"]
    add_device(people["ada"], "fcm", "fcm-ada-phone")
    add_device(people["ada"], "fcm", "fcm-ada-old")
    add_device(people["bob"], "fcm", "fcm-bob-old")
    add_device(people["cyd"], "fcm", "fcm-cyd-garbage")
    cyd_browser = add_device(people["cyd"], "webpush", '{"endpoint": "https://push.example.net/x", "keys": {}}')
    campaign = launch(push_audience)

    result = dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert (result["sent"], result["failed"]) == (1, 2)
    (message,) = fcm.to("fcm-ada-phone")
    ada = delivery_of(campaign, people["ada"])
    assert message["notification"] == {"title": "Sale", "body": "Hi Ada"}
    assert message["data"]["link"] == "app://sale"
    assert message["android"]["collapse_key"] == f"switchboard-delivery-{ada.pk}"
    assert message["apns"]["headers"]["apns-collapse-id"] == f"switchboard-delivery-{ada.pk}"
    assert ada.status == "sent" and ada.provider == "fcm"
    assert ada.provider_message_id.startswith(f"projects/{fcm.project_id}/messages/")
    assert len(fcm.tokens_issued) == 1  # one OAuth token for the whole batch
    assert set(Device.objects.filter(customer=people["ada"]).values_list("token", flat=True)) == {"fcm-ada-phone"}

    bob = delivery_of(campaign, people["bob"])
    assert bob.status == "failed" and "UNREGISTERED" in bob.reason
    assert not Device.objects.filter(customer=people["bob"]).exists()
    cyd = delivery_of(campaign, people["cyd"])
    assert cyd.status == "failed" and "not a valid FCM registration token" in cyd.reason
    assert list(Device.objects.filter(customer=people["cyd"])) == [cyd_browser]  # not FCM's to judge


def test_a_customer_with_no_device_left_gets_no_push(push_audience, fcm):
    people = push_audience["people"]
    add_device(people["ada"], "fcm", "fcm-ada-phone")
    add_device(people["bob"], "fcm", "fcm-bob-old")
    launch(push_audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    requests_before = len(fcm.sent)

    following = launch(push_audience, name="Spring sale")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    bob = delivery_of(following, people["bob"])
    assert (bob.status, bob.reason) == ("suppressed", "no_address")
    assert fcm.to("fcm-bob-old") == []
    assert len(fcm.sent) == requests_before + 1  # only ada's phone, again
    assert len(fcm.tokens_issued) == 1  # the access token outlives a batch


def test_fcm_unavailable_means_retry_later(push_audience, fcm):
    add_device(push_audience["people"]["ada"], "fcm", "fcm-ada-phone")
    fcm.unavailable = True
    campaign = launch(push_audience)

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    ada = delivery_of(campaign, push_audience["people"]["ada"])
    assert ada.status == "planned" and "UNAVAILABLE" in ada.reason
    assert ada.due_at >= timezone.now() + timedelta(seconds=110)  # FCM's Retry-After: 120
    assert Device.objects.filter(token="fcm-ada-phone").exists()


# --- Web Push ------------------------------------------------------------------------------------------


@pytest.fixture
def web_push(push_audience, settings):
    private, public = vapid_keys()
    with FakePushService(gone={"bob"}) as fake:
        settings.PROVIDERS = {**settings.PROVIDERS, "push": "webpush"}
        settings.VAPID_PRIVATE_KEY = private
        settings.VAPID_PUBLIC_KEY = public
        settings.VAPID_SUBJECT = "mailto:push@shop.example.com"
        yield fake


def test_a_web_push_arrives_encrypted_and_signed_and_a_gone_subscription_is_removed(push_audience, web_push, settings):
    people = push_audience["people"]
    add_device(people["ada"], "webpush", web_push.subscribe("ada").token())
    add_device(people["bob"], "webpush", web_push.subscribe("bob").token())
    campaign = launch(push_audience)

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    (push,) = web_push.to("ada")
    ada = delivery_of(campaign, people["ada"])
    assert push.payload["title"] == "Sale" and push.payload["body"] == "Hi Ada" and push.payload["link"] == "app://sale"
    assert push.vapid_key == settings.VAPID_PUBLIC_KEY
    assert push.vapid_claims["sub"] == "mailto:push@shop.example.com" and push.vapid_claims["aud"] == web_push.url
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", push.headers["topic"])
    assert push.headers["ttl"] == str(settings.PUSH_TTL_SECONDS)
    assert ada.status == "sent" and ada.provider == "webpush" and "/message/" in ada.provider_message_id

    bob = delivery_of(campaign, people["bob"])
    assert bob.status == "failed" and "410" in bob.reason
    assert not Device.objects.filter(customer=people["bob"]).exists()


def test_a_web_push_resent_after_a_crash_replaces_the_first(push_audience, web_push):
    people = push_audience["people"]
    add_device(people["ada"], "webpush", web_push.subscribe("ada").token())
    add_device(people["cyd"], "webpush", web_push.subscribe("cyd").token())
    campaign = launch(push_audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = delivery_of(campaign, people["ada"])
    # What a worker that died after the push service accepted the message leaves behind.
    Delivery.objects.filter(pk=ada.pk).update(status="sending", sent_at=None,
                                              lease_until=timezone.now() - timedelta(minutes=1))

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    first, second = web_push.to("ada")
    assert first.headers["topic"] == second.headers["topic"]
    assert first.payload["tag"] == second.payload["tag"]
    (cyd_push,) = web_push.to("cyd")
    assert cyd_push.headers["topic"] != first.headers["topic"]
