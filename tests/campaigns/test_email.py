"""Email through Django's mailers to a real SMTP server, and an ESP's webhooks coming back."""

import base64
import json
import socket
from datetime import time, timedelta

import pytest
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign, Delivery
from campaigns.queries import campaign_summary
from customers.models import ChannelStatus, Event, Subscription
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.fakes.smtp import FakePostmark, FakeSMTPServer

SITE = "https://switchboard.example.com"
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture
def sending(settings):
    """Real providers, a public https site, and quiet hours that never defer (the test may run at night)."""
    settings.SITE_URL = SITE
    settings.QUIET_HOURS = (time(0, 0), time(23, 59, 59, 999999))
    settings.PROVIDERS = {**settings.PROVIDERS, "email": "django"}
    settings.DEFAULT_FROM_EMAIL = "Shop <news@shop.example.com>"
    return settings


@pytest.fixture
def smtp(sending):
    with FakeSMTPServer(refuse={"bob@example.com"}) as server:
        sending.MAILERS = {"default": {"BACKEND": SMTP_BACKEND,
                                       "OPTIONS": {"host": server.host, "port": server.port, "timeout": WAIT_SECONDS}}}
        yield server


def launch(audience, **extra):
    campaign = make_campaign(audience, channels=("email",), **extra)
    campaign_launch(campaign=campaign, actor="test")
    return campaign


def delivery_of(campaign, person) -> Delivery:
    return Delivery.objects.get(campaign=campaign, customer=person, channel="email")


def test_a_campaign_email_arrives_personalised_tracked_and_unsubscribable(audience, smtp):
    campaign = launch(audience)
    result = dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert (result["sent"], result["failed"]) == (2, 1)  # ada and fay sent; bob refused by the server
    assert smtp.connections == 1  # the whole batch over one SMTP session
    (mail,) = smtp.to("ada@example.com")
    assert mail.message["Subject"] == "Hello Ada"
    assert mail.message["From"] == "Shop <news@shop.example.com>"
    assert "Hi Ada" in mail.html and "Hi Ada" in mail.text
    assert f"{SITE}/t/c/" in mail.html and "shop.example.com/sale" not in mail.html
    assert f'src="{SITE}/t/o/' in mail.html
    assert mail.message["List-Unsubscribe"].startswith(f"<{SITE}/u/") and mail.message["List-Unsubscribe"].endswith(">")
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    ada = delivery_of(campaign, audience["people"]["ada"])
    assert ada.status == "sent" and ada.provider == "django"
    assert ada.provider_message_id == mail.message["Message-ID"]
    assert mail.message["Message-ID"].endswith("@shop.example.com>")
    (fay_mail,) = smtp.to("fay@example.com")
    assert fay_mail.message["Message-ID"] != mail.message["Message-ID"]


def test_a_resend_after_a_crash_carries_the_same_message_id(audience, smtp):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = delivery_of(campaign, audience["people"]["ada"])
    # What a worker that died after handing the message to the server leaves behind.
    Delivery.objects.filter(pk=ada.pk).update(status="sending", sent_at=None,
                                              lease_until=timezone.now() - timedelta(minutes=1))

    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    first, second = smtp.to("ada@example.com")
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert delivery_of(campaign, audience["people"]["ada"]).status == "sent"


def test_transactional_email_has_no_list_unsubscribe(audience, topics, smtp):
    launch({**audience, "topic": topics["alerts"]}, name="Your order shipped")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    (mail,) = smtp.to("ada@example.com")
    assert mail.message["Subject"] == "Hello Ada"
    assert mail.message["List-Unsubscribe"] is None and mail.message["List-Unsubscribe-Post"] is None
    assert "Unsubscribe" not in mail.text and "Manage your preferences" in mail.text


def test_a_refused_recipient_fails_with_the_servers_reason(audience, smtp):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    bob = delivery_of(campaign, audience["people"]["bob"])
    assert bob.status == "failed"
    assert bob.reason.startswith("550 5.1.1 <bob@example.com>: Recipient address rejected")
    assert smtp.to("bob@example.com") == []
    assert Event.objects.filter(customer=audience["people"]["bob"], name="message.failed").exists()


def test_a_relay_that_caps_messages_per_session_gets_a_new_session(audience, sending):
    with FakeSMTPServer(messages_per_session=1) as server:
        sending.MAILERS = {"default": {"BACKEND": SMTP_BACKEND,
                                       "OPTIONS": {"host": server.host, "port": server.port, "timeout": WAIT_SECONDS}}}
        campaign = launch(audience)

        result = dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert (result["sent"], result["retry"]) == (3, 0)
    assert server.connections == 3
    sent = Delivery.objects.filter(campaign=campaign, channel="email").exclude(status="suppressed")
    assert {d.status for d in sent} == {"sent"}


def test_a_mail_server_that_is_down_means_retry_later_not_failure(audience, sending):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sending.MAILERS = {"default": {"BACKEND": SMTP_BACKEND,
                                   "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 2}}}
    campaign = launch(audience)

    result = dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    assert (result["sent"], result["failed"], result["retry"]) == (0, 0, 3)
    for name in ("ada", "bob", "fay"):
        delivery = delivery_of(campaign, audience["people"][name])
        assert delivery.status == "planned"
        assert delivery.due_at > timezone.now()
        assert "cannot reach the mail server" in delivery.reason


# --- An ESP (Postmark, through anymail) and its tracking webhooks ---------------------------------

SECRET = "switchboard:webhook-secret"


@pytest.fixture
def postmark(sending):
    with FakePostmark(inactive={"bob@example.com"}) as api:
        sending.MAILERS = {"default": {"BACKEND": "anymail.backends.postmark.EmailBackend"}}
        sending.ANYMAIL = {"POSTMARK_SERVER_TOKEN": api.token, "POSTMARK_API_URL": api.url, "WEBHOOK_SECRET": SECRET}
        yield api


def webhook(client, payload, *, secret=SECRET):
    auth = base64.b64encode(secret.encode()).decode()
    return client.post("/webhooks/anymail/postmark/tracking/", json.dumps(payload), content_type="application/json",
                       headers={"Authorization": f"Basic {auth}"})


def at(minutes=0) -> str:
    return (timezone.now() + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def test_an_esp_send_records_the_esps_message_id_and_refusals(audience, postmark):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)

    ada = delivery_of(campaign, audience["people"]["ada"])
    sent = {m["To"]: m for m in postmark.sent}
    assert ada.status == "sent" and ada.provider_message_id == sent["ada@example.com"]["MessageID"]
    assert sent["ada@example.com"]["Subject"] == "Hello Ada"
    headers = {h["Name"]: h["Value"] for h in sent["ada@example.com"]["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    bob = delivery_of(campaign, audience["people"]["bob"])
    assert bob.status == "failed" and "inactive" in bob.reason


def test_esp_webhooks_move_deliveries_and_a_hard_bounce_suppresses_the_next_campaign(audience, postmark, client):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    people = audience["people"]
    ids = {m["To"]: m["MessageID"] for m in postmark.sent}

    delivered = {"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
                 "MessageID": ids["ada@example.com"],
                 "Recipient": "ada@example.com", "Tag": "", "DeliveredAt": at(), "Details": "smtp;250 2.0.0 OK",
                 "Metadata": {}}
    opened = {"RecordType": "Open", "MessageStream": "outbound", "FirstOpen": True, "Platform": "WebMail",
              "UserAgent": "Mozilla/5.0", "MessageID": ids["ada@example.com"], "Metadata": {}, "ReceivedAt": at(1),
              "Tag": "", "Recipient": "ada@example.com"}
    bounced = {"RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807, "Type": "HardBounce",
               "TypeCode": 1, "Name": "Hard bounce", "Tag": "", "MessageID": ids["fay@example.com"], "Metadata": {},
               "ServerID": 23,
               "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
               "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
               "Email": "fay@example.com", "From": "news@shop.example.com", "BouncedAt": at(), "DumpAvailable": False,
               "Inactive": True, "CanActivate": True, "Subject": "Hello Fay"}

    assert webhook(client, delivered).status_code == 200
    assert delivery_of(campaign, people["ada"]).status == "delivered"
    for _ in range(2):  # the ESP retries a webhook it thinks we missed
        assert webhook(client, opened).status_code == 200
        assert webhook(client, bounced).status_code == 200

    assert delivery_of(campaign, people["ada"]).status == "opened"
    fay = delivery_of(campaign, people["fay"])
    assert fay.status == "bounced" and "unable to deliver" in fay.reason
    totals = campaign_summary(Campaign.objects.get(pk=campaign.pk))["totals"]
    assert (totals["delivered"], totals["opened"], totals["bounced"]) == (1, 1, 1)
    assert Event.objects.filter(customer=people["ada"], name="message.opened").count() == 1
    assert ChannelStatus.objects.get(customer=people["fay"], channel="email").status == "bounced"

    following = launch(audience, name="Spring sale")
    assert delivery_of(following, people["fay"]).status == "suppressed"
    assert delivery_of(following, people["fay"]).reason == "bounced"
    assert delivery_of(following, people["ada"]).status == "planned"


def test_a_soft_bounce_changes_nothing(audience, postmark, client):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    message_id = next(m["MessageID"] for m in postmark.sent if m["To"] == "fay@example.com")
    soft = {"RecordType": "Bounce", "ID": 42, "Type": "SoftBounce", "TypeCode": 4096, "MessageID": message_id,
            "Description": "Mailbox full", "Details": "452 4.2.2 mailbox full", "Email": "fay@example.com",
            "BouncedAt": at(), "Metadata": {}}

    assert webhook(client, soft).status_code == 200

    assert delivery_of(campaign, audience["people"]["fay"]).status == "sent"
    assert not ChannelStatus.objects.filter(customer=audience["people"]["fay"], channel="email").exists()


def test_an_unsubscribe_at_the_esp_unsubscribes_from_the_topic_by_email(audience, postmark, client):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = audience["people"]["ada"]
    message_id = next(m["MessageID"] for m in postmark.sent if m["To"] == "ada@example.com")
    change = {"RecordType": "SubscriptionChange", "MessageID": message_id, "ServerID": 23, "MessageStream": "broadcast",
              "ChangedAt": at(), "Recipient": "ada@example.com", "Origin": "Recipient", "SuppressSending": True,
              "SuppressionReason": "ManualSuppression", "Tag": "", "Metadata": {}}

    assert webhook(client, change).status_code == 200

    assert delivery_of(campaign, ada).status == "unsubscribed"
    newsletter = audience["topic"]
    assert Subscription.objects.get(customer=ada, topic=newsletter, channel="email").subscribed is False
    assert Subscription.objects.get(customer=ada, topic=newsletter, channel="sms").subscribed is True
    following = launch(audience, name="Spring sale")
    assert delivery_of(following, ada).status == "suppressed"


def test_a_webhook_with_the_wrong_secret_is_refused_and_changes_nothing(audience, postmark, client):
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    message_id = next(m["MessageID"] for m in postmark.sent if m["To"] == "ada@example.com")
    delivered = {"RecordType": "Delivery", "MessageID": message_id, "Recipient": "ada@example.com",
                 "DeliveredAt": at(), "Details": "", "Metadata": {}}

    response = webhook(client, delivered, secret="switchboard:guess")

    assert response.status_code == 400
    assert delivery_of(campaign, audience["people"]["ada"]).status == "sent"


@pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailInsecureWebhookWarning")  # the DEBUG part
def test_without_a_webhook_secret_production_refuses_every_esp_webhook(audience, postmark, client, settings, caplog):
    """A forged bounce would make a customer's address unusable: with DEBUG off and no
    ANYMAIL_WEBHOOK_SECRET, the webhooks answer 503 and write nothing."""
    campaign = launch(audience)
    dispatch.dispatch(budget_seconds=10)
    message_id = next(m["MessageID"] for m in postmark.sent if m["To"] == "ada@example.com")
    forged = {"RecordType": "Bounce", "MessageStream": "outbound", "ID": 1, "Type": "HardBounce", "TypeCode": 1,
              "MessageID": message_id, "Email": "ada@example.com", "BouncedAt": at(), "Description": "forged",
              "Details": "smtp;550 5.1.1 no such user", "Inactive": True, "Metadata": {}, "Tag": ""}
    settings.DEBUG = False
    settings.ANYMAIL = {key: value for key, value in settings.ANYMAIL.items() if key != "WEBHOOK_SECRET"}

    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"any:thing").decode()}):
        response = client.post("/webhooks/anymail/postmark/tracking/", json.dumps(forged),
                               content_type="application/json", headers=headers)
        assert response.status_code == 503
        assert "ANYMAIL_WEBHOOK_SECRET is not set" in response.json()["message"]
    assert delivery_of(campaign, audience["people"]["ada"]).status == "sent"
    assert not ChannelStatus.objects.filter(customer=audience["people"]["ada"], status="bounced").exists()
    assert "ANYMAIL_WEBHOOK_SECRET is not set" in caplog.text

    # The development server keeps them open for trying an ESP out.
    settings.DEBUG = True
    assert client.post("/webhooks/anymail/postmark/tracking/", json.dumps(forged),
                       content_type="application/json").status_code == 200
