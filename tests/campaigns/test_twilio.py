"""Twilio for SMS, WhatsApp and voice: the real adapter against a fake Twilio on loopback,
and Twilio's webhooks through the real URLs."""

import json
from datetime import time, timedelta

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.compose import VariantInput
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign, Delivery
from campaigns.providers import OutgoingMessage
from campaigns.providers.twilio import TwilioSMS
from campaigns.queries import campaign_summary
from customers.models import ChannelStatus, Event, Subscription
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import SubscriptionFactory
from tests.fakes.twilio import FakeTwilio

SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
SITE = "https://switchboard.example.com"
STATUS_PATH = "/webhooks/twilio/status"
INBOUND_PATH = "/webhooks/twilio/inbound"


@pytest.fixture
def twilio(settings):
    """A fake Twilio, and settings that send SMS, WhatsApp and voice through it."""
    with FakeTwilio() as fake:
        fake.configure(settings, channels=("sms", "whatsapp", "voice"), sms_from=SMS_FROM, site_url=SITE)
        settings.TWILIO_WHATSAPP_FROM = WHATSAPP_FROM
        settings.TWILIO_VOICE_FROM = SMS_FROM
        # Whatever the hour the tests run at, marketing is not deferred by quiet hours.
        settings.QUIET_HOURS = (time(0, 0), time(23, 59, 59, 999999))
        yield fake


def send(audience, **options):
    campaign = make_campaign(audience, **options)
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    return campaign


def delivery(campaign, person, channel="sms") -> Delivery:
    return Delivery.objects.get(campaign=campaign, customer=person, channel=channel)


def post_signed(client, fake, path, params, *, signature=None):
    signature = fake.sign(SITE + path, params) if signature is None else signature
    return client.post(path, params, headers={"X-Twilio-Signature": signature})


# --- Sending ------------------------------------------------------------------------------------


def test_sms_campaign_reaches_twilio_rendered_with_status_callback(audience, twilio):
    campaign = send(audience, channels=("sms",))
    people = audience["people"]
    by_to = {m["to"]: m for m in twilio.messages}
    assert set(by_to) == {people["ada"].phone, people["cyd"].phone}
    ada = by_to[people["ada"].phone]
    assert ada["body"] == "Hi Ada, sale today\nReply STOP to opt out"
    assert ada["from"] == SMS_FROM
    assert ada["status_callback"] == SITE + reverse("tracking:twilio-status")
    row = delivery(campaign, people["ada"])
    assert (row.status, row.provider, row.provider_message_id) == ("sent", "twilio", ada["sid"])
    assert campaign_summary(Campaign.objects.get(pk=campaign.pk))["channels"]["sms"]["sent"] == 2


def test_messaging_service_replaces_the_sender(audience, twilio, settings):
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG" + "1" * 32
    send(audience, channels=("sms",))
    params = twilio.messages[0]["params"]
    assert params["MessagingServiceSid"] == "MG" + "1" * 32 and "From" not in params


def test_rate_limit_puts_the_delivery_back_for_later(audience, twilio):
    cyd = audience["people"]["cyd"]
    twilio.fail(cyd.phone, status=429, code=20429, message="Too Many Requests", retry_after="120")
    started = timezone.now()
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, cyd)
    assert row.status == "planned"
    assert row.due_at >= started + timedelta(seconds=119)
    assert "Too Many Requests" in row.reason
    assert delivery(campaign, audience["people"]["ada"]).status == "sent"
    # Not due yet: another pass sends nothing more.
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    assert twilio.posts_to(cyd.phone) == 1 and Delivery.objects.get(pk=row.pk).status == "planned"


def test_server_error_is_temporary_and_invalid_number_is_permanent(audience, twilio):
    people = audience["people"]
    twilio.fail(people["ada"].phone, status=500, code=20500, message="Internal Server Error")
    message = f"The 'To' number {people['cyd'].phone} is not a valid phone number."
    twilio.fail(people["cyd"].phone, status=400, code=21211, message=message, times=None)
    campaign = send(audience, channels=("sms",))
    assert delivery(campaign, people["ada"]).status == "planned"
    cyd = delivery(campaign, people["cyd"])
    assert cyd.status == "failed"
    assert message in cyd.reason and "21211" in cyd.reason
    assert Event.objects.filter(customer=people["cyd"], name="message.failed").exists()
    assert twilio.posts_to(people["cyd"].phone) == 1


def test_whatsapp_content_template_and_template_text(audience, twilio):
    ada = audience["people"]["ada"]
    SubscriptionFactory(customer=ada, topic=audience["topic"], channel="whatsapp")
    content_sid = "HX" + "ab12" * 8
    template = VariantInput(key="A", content={"whatsapp": {"template": content_sid,
                                                                     "variables": {"1": "{{ first_name }}"}}})
    send(audience, channels=("whatsapp",), variants=[template], name="Template by SID")
    named = VariantInput(key="A", content={"whatsapp": {"template": "winter_sale",
                                                                  "variables": {"1": "{{ first_name }}", "2": "20%"}}})
    send(audience, channels=("whatsapp",), variants=[named], name="Template by name")
    text = VariantInput(key="A", content={"whatsapp": {"template": "Hi {{ first_name }}, the sale is on"}})
    send(audience, channels=("whatsapp",), variants=[text], name="Template as text")
    first, second, third = twilio.messages
    assert first["to"] == f"whatsapp:{ada.phone}" and first["from"] == f"whatsapp:{WHATSAPP_FROM}"
    assert first["params"]["ContentSid"] == content_sid
    assert json.loads(first["params"]["ContentVariables"]) == {"1": "Ada"}
    assert "Body" not in first["params"]
    assert second["to"] == f"whatsapp:{ada.phone}"
    assert second["body"] == "winter_sale: Ada, 20%"
    assert third["body"] == "Hi Ada, the sale is on"


def test_voice_places_a_call_that_says_the_text(audience, twilio):
    ada = audience["people"]["ada"]
    SubscriptionFactory(customer=ada, topic=audience["topic"], channel="voice")
    voice = VariantInput(key="A", content={"voice": {"text": "Hello {{ first_name }} & <welcome>"}})
    campaign = send(audience, channels=("voice",), variants=[voice])
    [call] = twilio.calls
    assert (call["to"], call["from"]) == (ada.phone, SMS_FROM)
    assert call["twiml"] == "<Response><Say>Hello Ada &amp; &lt;welcome&gt;</Say></Response>"
    assert call["status_callback"] == SITE + STATUS_PATH
    assert delivery(campaign, ada, "voice").provider_message_id == call["sid"]


def test_missing_credentials_name_the_setting(audience, twilio, settings):
    settings.TWILIO_AUTH_TOKEN = ""
    message = OutgoingMessage(delivery_id=1, customer_id=1, channel="sms", to="+14155550100",
                              content={"body": "hi"}, idempotency_key="k")
    with pytest.raises(ImproperlyConfigured, match="TWILIO_AUTH_TOKEN"):
        TwilioSMS().send_batch([message])
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, audience["people"]["ada"])
    assert row.status == "planned" and "TWILIO_AUTH_TOKEN" in row.reason
    assert twilio.requests == []


# --- A worker killed mid-send -------------------------------------------------------------------


@pytest.mark.parametrize("queued_seconds", [0, 3600], ids=["already-sent", "still-queued"])
def test_crashed_send_is_settled_without_sending_twice(audience, twilio, queued_seconds):
    """A worker died after Twilio accepted cyd's message and before ada's request left."""
    twilio.queued_seconds = queued_seconds
    twilio.max_page_size = 2  # other messages to cyd today: the lookup pages through them
    people = audience["people"]
    campaign = make_campaign(audience, channels=("sms",))
    campaign_launch(campaign=campaign, actor="test")
    claimed = timezone.now() - timedelta(minutes=2)
    Delivery.objects.filter(campaign=campaign, status="planned").update(
        status="sending", attempts=1, updated_at=claimed, lease_until=claimed + timedelta(seconds=60))
    with httpx.Client(base_url=twilio.url, auth=(twilio.account_sid, twilio.auth_token)) as api:
        path = f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
        for n in range(3):
            api.post(path, data={"To": people["cyd"].phone, "From": SMS_FROM, "Body": f"Your code is {n}"})
        accepted = api.post(path, data={"To": people["cyd"].phone, "From": SMS_FROM,
                                        "Body": "Hi Cyd, sale today\nReply STOP to opt out"}).json()["sid"]
        api.post(path, data={"To": people["cyd"].phone, "From": SMS_FROM, "Body": "Your code is 4"})
    posts_before = twilio.posts_to(people["cyd"].phone)

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    cyd = delivery(campaign, people["cyd"])
    assert (cyd.status, cyd.provider_message_id) == ("sent", accepted)
    assert twilio.posts_to(people["cyd"].phone) == posts_before
    ada = delivery(campaign, people["ada"])
    assert ada.status == "sent"
    assert [m["sid"] for m in twilio.messages if m["to"] == people["ada"].phone] == [ada.provider_message_id]


# --- Status callbacks ---------------------------------------------------------------------------


def test_signed_status_callback_marks_delivered_once(client, audience, twilio):
    ada = audience["people"]["ada"]
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, ada)
    url, params = twilio.status_callback(row.provider_message_id, "delivered")
    assert url == SITE + STATUS_PATH
    assert post_signed(client, twilio, STATUS_PATH, params).status_code == 204
    assert post_signed(client, twilio, STATUS_PATH, params).status_code == 204
    row.refresh_from_db()
    assert row.status == "delivered" and row.delivered_at
    assert campaign_summary(Campaign.objects.get(pk=campaign.pk))["totals"]["delivered"] == 1
    assert Event.objects.filter(customer=ada, name="message.delivered").count() == 1


def test_bad_or_missing_signature_is_refused_and_changes_nothing(client, audience, twilio):
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, audience["people"]["ada"])
    _, params = twilio.status_callback(row.provider_message_id, "delivered")
    forged = twilio.sign(SITE + STATUS_PATH, {**params, "MessageStatus": "failed"})
    assert post_signed(client, twilio, STATUS_PATH, params, signature=forged).status_code == 403
    assert client.post(STATUS_PATH, params).status_code == 403
    other_key = FakeTwilio(auth_token="someone-else").sign(SITE + STATUS_PATH, params)
    assert post_signed(client, twilio, STATUS_PATH, params, signature=other_key).status_code == 403
    row.refresh_from_db()
    assert row.status == "sent" and row.delivered_at is None


def test_undeliverable_number_bounces_and_is_suppressed_next_time(client, audience, twilio):
    cyd = audience["people"]["cyd"]
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, cyd)
    _, params = twilio.status_callback(row.provider_message_id, "undelivered", error_code=30006)
    assert post_signed(client, twilio, STATUS_PATH, params).status_code == 204
    row.refresh_from_db()
    assert row.status == "bounced" and "30006" in row.reason
    assert ChannelStatus.objects.get(customer=cyd, channel="sms").status == "bounced"
    again = make_campaign(audience, channels=("sms",), name="Second")
    campaign_launch(campaign=again, actor="test")
    assert (delivery(again, cyd).status, delivery(again, cyd).reason) == ("suppressed", "bounced")


def test_whatsapp_read_counts_as_opened_and_call_outcomes(client, audience, twilio):
    ada = audience["people"]["ada"]
    for channel in ("whatsapp", "voice"):
        SubscriptionFactory(customer=ada, topic=audience["topic"], channel=channel)
    campaign = send(audience, channels=("whatsapp", "voice"))
    message, call = delivery(campaign, ada, "whatsapp"), delivery(campaign, ada, "voice")
    for sid, status in ((message.provider_message_id, "read"), (call.provider_message_id, "busy")):
        _, params = twilio.status_callback(sid, status)
        assert post_signed(client, twilio, STATUS_PATH, params).status_code == 204
    message.refresh_from_db()
    call.refresh_from_db()
    assert message.status == "opened" and message.delivered_at
    assert call.status == "failed" and call.reason == "the line was busy"


def test_steps_on_the_way_change_nothing(client, audience, twilio):
    campaign = send(audience, channels=("sms",))
    row = delivery(campaign, audience["people"]["ada"])
    for status in ("queued", "sending", "sent"):
        _, params = twilio.status_callback(row.provider_message_id, status)
        assert post_signed(client, twilio, STATUS_PATH, params).status_code == 204
    row.refresh_from_db()
    assert row.status == "sent"


# --- Inbound replies ----------------------------------------------------------------------------


def inbound(sender, body):
    return {"MessageSid": "SM" + "9" * 32, "AccountSid": "AC", "From": sender, "To": SMS_FROM, "Body": body}


def test_stop_reply_unsubscribes_at_once(client, audience, twilio):
    ada = audience["people"]["ada"]
    response = post_signed(client, twilio, INBOUND_PATH, inbound(ada.phone, "  stop "))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    assert response.content.decode().endswith("<Response/>")
    assert ChannelStatus.objects.get(customer=ada, channel="sms").status == "unsubscribed"
    assert not Subscription.objects.get(customer=ada, topic=audience["topic"], channel="sms").subscribed
    assert Subscription.objects.get(customer=ada, topic=audience["topic"], channel="email").subscribed
    campaign = send(audience, channels=("sms",))
    assert (delivery(campaign, ada).status, delivery(campaign, ada).reason) == ("suppressed", "unsubscribed")
    assert all(m["to"] != ada.phone for m in twilio.messages)

    post_signed(client, twilio, INBOUND_PATH, inbound(ada.phone, "START"))
    assert ChannelStatus.objects.get(customer=ada, channel="sms").status == "ok"


def test_whatsapp_stop_and_ordinary_replies(client, audience, twilio):
    cyd = audience["people"]["cyd"]
    SubscriptionFactory(customer=cyd, topic=audience["topic"], channel="whatsapp")
    post_signed(client, twilio, INBOUND_PATH, inbound(cyd.phone, "Stop please"))
    assert not ChannelStatus.objects.filter(customer=cyd).exists()
    post_signed(client, twilio, INBOUND_PATH, inbound(f"whatsapp:{cyd.phone}", "UNSUBSCRIBE"))
    assert ChannelStatus.objects.get(customer=cyd, channel="whatsapp").status == "unsubscribed"
    assert not ChannelStatus.objects.filter(customer=cyd, channel="sms").exists()
    assert Subscription.objects.get(customer=cyd, topic=audience["topic"], channel="sms").subscribed


# --- Malformed input ------------------------------------------------------------------------------


def test_malformed_webhooks_get_400_not_500(client, audience, twilio):
    no_sid = {"MessageStatus": "delivered"}
    assert post_signed(client, twilio, STATUS_PATH, no_sid).status_code == 400
    bad_code = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "failed", "ErrorCode": "thirty"}
    response = post_signed(client, twilio, STATUS_PATH, bad_code)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "ErrorCode"
    assert post_signed(client, twilio, INBOUND_PATH, {"Body": "STOP"}).status_code == 400
    # JSON instead of a form: the signature covers no fields, and nothing names the message.
    signed_empty = twilio.sign(SITE + STATUS_PATH, {})
    response = client.post(STATUS_PATH, '{"MessageSid": 1}', content_type="application/json",
                           headers={"X-Twilio-Signature": signed_empty})
    assert response.status_code == 400
    broken = client.post(STATUS_PATH, b"--x\r\nContent-Disposition: form-data\r\n\r\nno end",
                         content_type="multipart/form-data; boundary=x", headers={"X-Twilio-Signature": signed_empty})
    assert broken.status_code == 400
    assert client.get(STATUS_PATH).status_code == 405
