"""Personalisation as customers receive it: escaping per part, the sandbox's limits, and
templates that meet the values an audience really holds."""

import re
from datetime import time

import pytest
from django.urls import reverse

from campaigns import dispatch
from campaigns.services.compose import VariantInput
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign, Delivery, SandboxMessage
from campaigns.queries import campaign_summary
from customers.models import Customer
from tests.campaigns.conftest import make_campaign
from tests.campaigns.test_views import compose_data, field_errors, text
from tests.factories import DeviceFactory
from tests.fakes.smtp import FakeSMTPServer

pytestmark = pytest.mark.django_db

NAME = "Tom & Jerry's"


@pytest.fixture(autouse=True)
def daytime_everywhere(settings):
    """Quiet hours would otherwise defer marketing sends when the suite runs at night."""
    settings.QUIET_HOURS = (time(0, 0), time.max)


@pytest.fixture
def smtp(settings):
    settings.SITE_URL = "https://switchboard.example.com"
    settings.PROVIDERS = {**settings.PROVIDERS, "email": "django"}
    with FakeSMTPServer() as server:
        settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                        "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5}}}
        yield server


def errors_of(response) -> dict[str, str]:
    return {error["field"]: error["message"] for error in response.json()["errors"]}


def campaign_body(audience, sms: str) -> dict:
    return {"name": "Plans", "topic": "newsletter", "segment_ids": [audience["segment"].pk], "channels": ["sms"],
            "strategy": "all", "content": {"sms": {"body": sms}}}


def sandbox(delivery: Delivery) -> dict:
    return SandboxMessage.objects.get(delivery_id=delivery.pk).rendered


# --- Escaping: HTML parts only ------------------------------------------------------------------


def test_a_name_with_an_ampersand_reads_as_written_in_sms_subject_and_text_and_is_escaped_in_html(audience, smtp):
    ada = audience["people"]["ada"]
    ada.first_name = NAME
    ada.save()
    campaign = make_campaign(audience, channels=("email", "sms"))
    campaign_launch(campaign=campaign, actor="test")

    dispatch.dispatch(budget_seconds=10)

    (mail,) = smtp.to("ada@example.com")
    assert mail.message["Subject"] == f"Hello {NAME}"
    assert f"Hi {NAME}" in mail.text
    assert "Hi Tom &amp; Jerry&#x27;s" in mail.html and NAME not in mail.html
    sms = Delivery.objects.get(campaign=campaign, customer=ada, channel="sms")
    assert sandbox(sms)["body"] == f"Hi {NAME}, sale today\nReply STOP to opt out"


def test_whatsapp_voice_and_push_are_not_html_either(api, audience):
    ada = audience["people"]["ada"]
    ada.first_name = NAME
    ada.save()
    DeviceFactory(customer=ada)
    contents = {
        "whatsapp": {"template": "order_update", "variables": {"1": "{{ first_name }}"}, "body": "Hi {{ first_name }}"},
        "voice": {"text": "Hello {{ first_name }}"},
        "push": {"title": "For {{ first_name }}", "body": "Hi {{ first_name }}"},
    }
    ids = {}
    for channel, content in contents.items():
        response = api.post("/messages", {"customer": {"id": ada.pk}, "topic": "alerts", "channel": channel,
                                          "content": content})
        assert response.status_code == 202 and response.json()["decision"] == "send", response.json()
        ids[channel] = response.json()["delivery_id"]

    dispatch.dispatch(budget_seconds=10)

    whatsapp, voice, push = (sandbox(Delivery.objects.get(pk=ids[c])) for c in ("whatsapp", "voice", "push"))
    assert whatsapp["variables"] == {"1": NAME} and whatsapp["body"] == f"Hi {NAME}"
    assert voice["text"] == f"Hello {NAME}"
    assert (push["title"], push["body"]) == (f"For {NAME}", f"Hi {NAME}")


# --- The sandbox: what a template may use -------------------------------------------------------


@pytest.mark.parametrize("sms,named", [
    ("{{ first_name|ljust:'30000000' }}", "'ljust' filter"),
    ("{% lorem 300000 w %}", "'lorem' tag"),
    ("{{ first_name|stringformat:'0100000000d' }}", "'stringformat' filter"),
    ("{{ attributes.note|safe }}", "'safe' filter"),
    ("{% widthratio 1 1 100000000000 %}", "'widthratio' tag"),
    ("{{ first_name|truncatechars:30000000 }}", "truncatechars takes a whole number from 0 to 1000"),
    ("{{ 1.5|floatformat:'30000000' }}", "floatformat shows at most 10 decimal places"),
    ('{% for c in "' + "x" * 101 + '" %}{{ c }}{% endfor %}', "at most 100 items"),
    ('{% for a in "' + "x" * 40 + '" %}{% for b in "' + "x" * 40 + '" %}{% endfor %}{% endfor %}',
     "more than 1000 times"),
])
def test_tags_filters_and_loops_beyond_the_sandbox_are_refused_at_save_naming_them(api, audience, sms, named):
    response = api.post("/campaigns", campaign_body(audience, sms))

    assert response.status_code == 400, response.content
    assert named in errors_of(response)["content.sms.body"]
    assert not Campaign.objects.exists()


def test_the_compose_page_names_the_refused_filter_beside_the_sms_body(client, marketer, audience):
    client.force_login(marketer)
    response = client.post(reverse("campaigns:new"), compose_data(audience, **{
        "A-sms-body": "Hi {{ first_name|ljust:'30000000' }}"}))

    assert response.status_code == 422
    (error,) = field_errors(text(response), "A-sms-body")
    assert "The &#x27;ljust&#x27; filter is not available in messages" in error
    assert not Campaign.objects.exists()


def test_what_a_marketer_needs_is_allowed(api, audience):
    sms = ("{% with plan=attributes.plan|default:'free' %}Hi {{ first_name|title|default:'there' }}, "
           "{% if plan == 'pro' %}thanks for going Pro{% elif plan %}try {{ plan|upper }}{% else %}hello{% endif %}"
           "{% endwith %} · {% firstof attributes.city 'your town' %} · {% now 'Y' %} · "
           "{{ 1234.5|floatformat:2 }} · {{ last_name|truncatechars:10 }} · {% for c in 'abc' %}{{ c }}{% endfor %}")

    response = api.post("/campaigns", campaign_body(audience, sms))

    assert response.status_code == 201, response.content


def test_the_rendered_sms_is_measured_not_the_template(api, audience):
    # Long alternatives of which one is sent: fine, whatever the template's own length.
    versions = "{% if attributes.locale == 'fr' %}" + "Bonjour " * 200 + "{% else %}Hello {{ first_name }}{% endif %}"
    assert api.post("/campaigns", campaign_body(audience, versions)).status_code == 201

    too_long = api.post("/campaigns", campaign_body(audience, "x" * 1590))
    assert too_long.status_code == 400
    assert "1,612 characters with “Reply STOP to opt out”; at most 1,600" in errors_of(too_long)["content.sms.body"]

    # Short for Ada Lovelace, too long for the longest names a profile can hold.
    names = api.post("/campaigns", campaign_body(audience, "x" * 1300 + " {{ full_name }}"))
    assert names.status_code == 400
    assert "longest names" in errors_of(names)["content.sms.body"]


# --- Values the audience holds ------------------------------------------------------------------


LOOP = "Your plans: {% for p in attributes.plan %}{{ p }} {% endfor %}"


def set_plans(audience, **plans):
    for name, plan in plans.items():
        Customer.objects.filter(pk=audience["people"][name].pk).update(attributes={"plan": plan})


def test_a_launch_is_refused_when_the_template_fails_on_a_type_the_audience_holds(api, audience):
    set_plans(audience, ada=["pro", "team"], cyd=5)
    created = api.post("/campaigns", campaign_body(audience, LOOP))
    assert created.status_code == 201, created.content  # the sample customer's plan is text
    campaign_id = created.json()["id"]

    response = api.post(f"/campaigns/{campaign_id}/launch")

    assert response.status_code == 400, response.content
    message = errors_of(response)["content.sms.body"]
    assert "1 customer in the audience has attributes.plan as a number (e.g. 5)" in message
    assert "{% for %} needs a list" in message
    campaign = Campaign.objects.get(pk=campaign_id)
    assert campaign.status == Campaign.Status.DRAFT and not Delivery.objects.exists()


def test_the_launch_page_says_why_the_launch_was_refused(client, marketer, audience):
    set_plans(audience, ada=["pro"], cyd={"name": "pro"}, dee=True)
    campaign = make_campaign(audience, channels=("sms",),
                             variants=[VariantInput(key="A", content={"sms": {"body": LOOP}})])
    client.force_login(marketer)

    response = client.post(reverse("campaigns:launch", args=[campaign.pk]))

    assert response.status_code == 422
    assert "attributes.plan as true/false (e.g. true)" in re.sub(r"\s+", " ", text(response))
    assert not Delivery.objects.exists()


def test_a_customer_the_template_fails_for_at_send_is_suppressed_with_the_reason(api, client, marketer, audience):
    set_plans(audience, ada=["pro", "team"], cyd=["team"])
    campaign = make_campaign(audience, channels=("sms",),
                             variants=[VariantInput(key="A", content={"sms": {"body": LOOP}})])
    campaign_launch(campaign=campaign, actor="test")
    # The profile changes between the launch and the send.
    set_plans(audience, cyd=5)

    totals = dispatch.dispatch(budget_seconds=10)

    assert (totals["sent"], totals["suppressed"]) == (1, 1)
    ada = Delivery.objects.get(campaign=campaign, customer=audience["people"]["ada"])
    assert sandbox(ada)["body"].startswith("Your plans: pro team")
    cyd = Delivery.objects.get(campaign=campaign, customer=audience["people"]["cyd"])
    assert cyd.status == "suppressed"
    assert cyd.reason.startswith("render_failed: sms body: {% for %} needs a list, and attributes.plan is a number")
    assert not SandboxMessage.objects.filter(delivery_id=cyd.pk).exists()
    assert campaign_summary(Campaign.objects.get(pk=campaign.pk))["suppressed_by_reason"]["render_failed"] == 1
    assert api.get(f"/messages/{cyd.pk}").json()["reason"] == cyd.reason

    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:detail", args=[campaign.pk])))
    assert re.search(r'data-reason="render_failed">\s*<span class="reason-label">Message could not be rendered</span>', page)
    assert "Message could not be rendered: sms body: {% for %} needs a list" in page
