"""The campaigns UI: list, compose with inline errors, launch confirmation, the campaign page, the outbox."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEntry
from campaigns import dispatch
from campaigns.services.compose import VariantInput
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign, Content, Delivery, SandboxMessage
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def text(response) -> str:
    return response.content.decode()


def field_errors(page: str, name: str) -> list[str]:
    """The inline errors printed inside the field whose input is called ``name``."""
    errors = []
    for block in re.findall(r'<div class="field[^"]*has-error[^"]*"[^>]*>(.*?)</div>', page, re.S):
        if f'name="{name}"' in block:
            errors += re.findall(r'<p class="field-error">(.*?)</p>', block, re.S)
    return errors


def compose_data(audience, **overrides) -> dict:
    data = {
        "name": "Winter sale",
        "topic": audience["topic"].key,
        "segment_ids": [audience["segment"].pk],
        "channels": ["email", "sms"],
        "order-email": "1", "order-sms": "2", "order-whatsapp": "3", "order-voice": "4", "order-push": "5",
        "strategy": "all",
        "variant_count": "1",
        "A-weight": "1",
        "A-email-subject": "Hello {{ first_name|default:\"there\" }}",
        "A-email-html": "<p>Hi {{ first_name }}</p><a href=\"https://shop.example.com/sale\">Sale</a>",
        "A-sms-body": "Hi {{ first_name }}, 20% off today",
        "goal_event": "",
        "goal_within_hours": "72",
        "schedule": "now",
        "test_percent": "20",
        "test_metric": "click",
        "test_hours": "4",
    }
    data.update(overrides)
    return data


def launched(audience, **extra) -> Campaign:
    campaign = make_campaign(audience, **extra)
    return campaign_launch(campaign=campaign, actor="test")


# --- Access -------------------------------------------------------------------------------------


def every_page(campaign, draft, audience):
    data = compose_data(audience, name="Sneaky")
    return [
        ("get", reverse("campaigns:list"), {}),
        ("get", reverse("campaigns:new"), {}),
        ("post", reverse("campaigns:new"), data),
        ("post", reverse("campaigns:preview"), data),
        ("get", reverse("campaigns:detail", args=[campaign.pk]), {}),
        ("get", reverse("campaigns:edit", args=[draft.pk]), {}),
        ("post", reverse("campaigns:edit", args=[draft.pk]), data),
        ("get", reverse("campaigns:launch", args=[draft.pk]), {}),
        ("post", reverse("campaigns:launch", args=[draft.pk]), {}),
        ("post", reverse("campaigns:pause", args=[campaign.pk]), {}),
        ("post", reverse("campaigns:resume", args=[campaign.pk]), {}),
        ("post", reverse("campaigns:cancel", args=[campaign.pk]), {}),
        ("post", reverse("campaigns:send_remainder", args=[campaign.pk]), {}),
        ("post", reverse("campaigns:delete", args=[draft.pk]), {}),
        ("get", reverse("campaigns:outbox"), {}),
        ("get", reverse("campaigns:outbox_message", args=[SandboxMessage.objects.first().pk]), {}),
        ("get", reverse("campaigns:outbox_message_frame", args=[SandboxMessage.objects.filter(channel="email").first().pk]), {}),
        ("get", reverse("campaigns:preview_frame", args=["0" * 32]), {}),
    ]


@pytest.mark.parametrize("who", ["outsider", "support"])
def test_outsiders_and_support_are_refused_on_every_page_and_nothing_changes(request, client, audience, who):
    campaign = launched(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    draft = make_campaign(audience, name="Draft")
    client.force_login(request.getfixturevalue(who))
    before = (Campaign.objects.count(), Delivery.objects.count(), AuditEntry.objects.count())
    for method, url, data in every_page(campaign, draft, audience):
        response = getattr(client, method)(url, data)
        assert response.status_code == 403, url
    assert (Campaign.objects.count(), Delivery.objects.count(), AuditEntry.objects.count()) == before
    assert Campaign.objects.get(pk=campaign.pk).status == "sending"
    assert Campaign.objects.get(pk=draft.pk).status == "draft"


def test_the_nav_links_campaigns_for_marketers_only(client, marketer, support):
    client.force_login(marketer)
    assert 'href="/campaigns/"' in text(client.get(reverse("home")))
    client.force_login(support)
    assert 'href="/campaigns/"' not in text(client.get(reverse("home")))


# --- List ---------------------------------------------------------------------------------------


def test_the_list_is_empty_at_first(client, marketer):
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:list")))
    assert "No campaigns yet." in page
    assert reverse("campaigns:new") in page


def test_the_list_shows_progress_and_rates_with_a_fixed_number_of_queries(client, marketer, audience, django_assert_num_queries):
    sent = launched(audience, name="Sent one")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    from campaigns.providers import DeliveryEvent

    email = Delivery.objects.filter(campaign=sent, channel="email", status="sent").order_by("id")
    delivery_events_apply(events=[DeliveryEvent("opened", timezone.now(), delivery_id=email[0].pk),
                                           DeliveryEvent("clicked", timezone.now(), delivery_id=email[1].pk)])
    make_campaign(audience, name="Still a draft")
    client.force_login(marketer)
    client.get(reverse("campaigns:list"))  # warm the session and role caches

    with django_assert_num_queries(7):
        response = client.get(reverse("campaigns:list"))
    page = text(response)
    row = re.search(rf'<tr data-href="[^"]+" data-campaign="{sent.pk}">(.*?)</tr>', page, re.S).group(1)
    assert "Sending" in row and "Newsletter" in row
    assert "<strong>5</strong> of 5 sent" in row  # ada ×2, bob, cyd, fay
    assert "40.0%" in row  # opened: 2 of 5 (the click implies an open)
    assert "20.0%" in row  # clicked: 1 of 5
    assert "Still a draft" in page and "not launched" in page

    # More campaigns, the same number of queries: every counter comes from one query.
    for index in range(3):
        launched(audience, name=f"More {index}")
    with django_assert_num_queries(7):
        client.get(reverse("campaigns:list"))


# --- Compose ------------------------------------------------------------------------------------


def test_a_marketer_creates_a_campaign_through_the_form(client, marketer, audience):
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:new")))
    assert "{{ attributes.plan }}" in page and "Everyone" in page
    data = compose_data(audience, channels=["email", "sms"], **{"order-sms": "1", "order-email": "2"})
    response = client.post(reverse("campaigns:new"), data)
    campaign = Campaign.objects.get(name="Winter sale")
    assert response.status_code == 302 and response.url == reverse("campaigns:detail", args=[campaign.pk])
    assert campaign.channels == ["sms", "email"]  # the order numbers set the fallback order
    assert list(campaign.segments.all()) == [audience["segment"]]
    contents = {c.channel: c.body for c in Content.objects.filter(variant__campaign=campaign)}
    assert contents["sms"]["body"] == "Hi {{ first_name }}, 20% off today"
    assert contents["email"]["subject"] == 'Hello {{ first_name|default:"there" }}'
    assert AuditEntry.objects.filter(action="campaign.created", object_id=str(campaign.pk)).exists()
    page = text(client.get(response.url))
    assert "Winter sale" in page and "Draft" in page and "saved" in page


def test_bad_input_shows_each_error_inline_with_422_and_writes_nothing(client, marketer, audience):
    client.force_login(marketer)
    before = (Campaign.objects.count(), AuditEntry.objects.count())
    data = compose_data(
        audience, segment_ids=[], **{"A-sms-body": "Hi {{ first_name|shout }}", "A-email-subject": ""},
        schedule="at", send_at="",
    )
    response = client.post(reverse("campaigns:new"), data)
    assert response.status_code == 422
    page = text(response)
    assert field_errors(page, "A-sms-body") and "shout" in field_errors(page, "A-sms-body")[0]
    assert field_errors(page, "A-email-subject") == ["Email subject is required."]
    assert "Pick at least one segment as the audience." in page
    assert 'id="segment-ids"' in page and re.search(r'class="field segment-pick has-error" id="segment-ids"', page)
    assert field_errors(page, "send_at") == ["Give the date and time to send at."]
    # What was typed is still there.
    assert "Hi {{ first_name|shout }}" in page
    assert (Campaign.objects.count(), AuditEntry.objects.count()) == before


def test_variant_errors_land_on_the_variants_own_fields(client, marketer, audience):
    client.force_login(marketer)
    data = compose_data(audience, variant_count="2", **{
        "B-weight": "0", "B-email-subject": "", "B-email-html": "<p>B</p>", "B-sms-body": "B {% url 'x' %}",
    })
    response = client.post(reverse("campaigns:new"), data)
    assert response.status_code == 422
    page = text(response)
    assert field_errors(page, "B-email-subject") == ["Email subject is required."]
    assert "not available in messages" in field_errors(page, "B-sms-body")[0]
    assert re.search(r'has-error">\s*<label for="id_B-weight"', page)
    assert not field_errors(page, "A-email-subject")
    assert not Campaign.objects.exists()


def test_whatsapp_variables_are_name_value_lines(client, marketer, audience):
    client.force_login(marketer)
    data = compose_data(audience, channels=["whatsapp"], **{"A-whatsapp-template": "sale_v1",
                                                          "A-whatsapp-variables": "1={{ first_name }}\nno equals sign"})
    response = client.post(reverse("campaigns:new"), data)
    assert response.status_code == 422
    assert field_errors(text(response), "A-whatsapp-variables") == ["Line 2 is not name=value."]
    data["A-whatsapp-variables"] = "1={{ first_name }}\n2 = {{ attributes.plan }}"
    assert client.post(reverse("campaigns:new"), data).status_code == 302
    body = Content.objects.get(channel="whatsapp").body
    assert body["template"] == "sale_v1" and body["variables"] == {"1": "{{ first_name }}", "2": "{{ attributes.plan }}"}


def test_editing_a_draft_shows_its_content_and_saves_changes(client, marketer, audience):
    campaign = make_campaign(audience)
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:edit", args=[campaign.pk])))
    assert "Hi {{ first_name }}, sale today" in page
    assert 'value="Winter sale"' in page
    data = compose_data(audience, name="Winter sale, week 2", variant_count="2", **{
        "B-weight": "3", "B-name": "Short", "B-email-subject": "Sale!", "B-email-html": "<p>Sale</p>", "B-sms-body": "Sale!",
    })
    response = client.post(reverse("campaigns:edit", args=[campaign.pk]), data)
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.name == "Winter sale, week 2"
    assert [(v.key, v.weight, v.name) for v in campaign.variants.all()] == [("A", 1, ""), ("B", 3, "Short")]
    page = text(client.get(reverse("campaigns:edit", args=[campaign.pk])))
    assert '<option value="2" selected>' in page and 'value="Short"' in page


def test_a_launched_campaign_cannot_be_edited(client, marketer, audience):
    campaign = launched(audience)
    client.force_login(marketer)
    response = client.get(reverse("campaigns:edit", args=[campaign.pk]))
    assert response.status_code == 302 and response.url == reverse("campaigns:detail", args=[campaign.pk])
    response = client.post(reverse("campaigns:edit", args=[campaign.pk]), compose_data(audience, name="Changed"))
    assert response.status_code == 422 and "only drafts can be changed" in text(response)
    assert Campaign.objects.get(pk=campaign.pk).name == "Winter sale"


def test_the_preview_renders_for_the_sample_customer(client, marketer, audience):
    client.force_login(marketer)
    data = compose_data(audience, preview_variant="A", preview_channel="email")
    page = text(client.post(reverse("campaigns:preview"), data, headers=HTMX))
    assert "Hello Ada" in page
    # The email's HTML is a document of its own, in a sandboxed frame with a policy that lets
    # its inline styles show (a srcdoc frame would inherit the page's policy, which refuses them).
    frame = re.search(r'<iframe class="email-frame" title="Email preview" sandbox src="([^"]+)"', page).group(1)
    email = client.get(frame)
    assert email.status_code == 200 and text(email).startswith("<p>Hi Ada</p>")
    assert "sandbox" in email["Content-Security-Policy"] and "style-src 'unsafe-inline'" in email["Content-Security-Policy"]
    assert "script-src" not in email["Content-Security-Policy"] and email["X-Frame-Options"] == "SAMEORIGIN"
    client.logout()
    assert client.get(frame).status_code == 302  # the frame is the marketer's, like the page
    client.force_login(marketer)
    data.update(preview_channel="sms", **{"A-sms-body": "Hi {{ first_name }} 🎉"})
    page = text(client.post(reverse("campaigns:preview"), data, headers=HTMX))
    assert "Hi Ada 🎉" in page and "UCS-2" in page
    data["A-sms-body"] = "Hi {{ first_name|nope }}"
    page = text(client.post(reverse("campaigns:preview"), data, headers=HTMX))
    assert "does not work yet" in page and "nope" in page
    data.update(preview_channel="email", **{"A-email-subject": "<b>{{ first_name }}</b>"})
    page = text(client.post(reverse("campaigns:preview"), data, headers=HTMX))
    assert "&lt;b&gt;Ada&lt;/b&gt;" in page and "<b>Ada</b>" not in page


# --- Launch -------------------------------------------------------------------------------------


def test_the_launch_page_shows_the_audience_per_channel_and_predicted_suppressions(client, marketer, audience):
    campaign = make_campaign(audience)
    client.force_login(marketer)
    response = client.get(reverse("campaigns:launch", args=[campaign.pk]))
    assert response.status_code == 200
    page = text(response)
    email = re.search(r'<tr data-channel="email">(.*?)</tr>', page, re.S).group(1)
    sms = re.search(r'<tr data-channel="sms">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r"data-send>3<", email) and re.search(r"data-suppressed>3<", email)  # ada, bob, fay
    assert re.search(r"data-send>2<", sms) and re.search(r"data-suppressed>4<", sms)  # ada, cyd
    reasons = dict(re.findall(r'<li data-reason="(\w+)">.*?<strong class="reason-count">(\d+)</strong>', page, re.S))
    assert reasons == {"not_subscribed": "5", "bounced": "1", "no_address": "1"}
    assert "Address bounced" in page and "No address for this channel" in page
    assert "As soon as you launch it" in page
    assert not Delivery.objects.exists()


def test_launching_from_the_page_then_pause_resume_and_cancel(client, marketer, audience):
    campaign = make_campaign(audience)
    client.force_login(marketer)
    response = client.post(reverse("campaigns:launch", args=[campaign.pk]))
    assert response.status_code == 302 and response.url == reverse("campaigns:detail", args=[campaign.pk])
    assert Campaign.objects.get(pk=campaign.pk).status == "sending"
    page = text(client.get(response.url))
    assert "launched: 6 customers" in page and "Pause" in page
    # Launching twice does nothing more.
    client.post(reverse("campaigns:launch", args=[campaign.pk]))
    assert Delivery.objects.filter(campaign=campaign).count() == 12

    client.post(reverse("campaigns:pause", args=[campaign.pk]))
    assert Campaign.objects.get(pk=campaign.pk).status == "paused"
    page = text(client.get(reverse("campaigns:detail", args=[campaign.pk])))
    assert "paused: nothing more is sent" in page and "Resume" in page
    client.post(reverse("campaigns:resume", args=[campaign.pk]))
    assert Campaign.objects.get(pk=campaign.pk).status == "sending"
    response = client.post(reverse("campaigns:cancel", args=[campaign.pk]), follow=True)
    assert Campaign.objects.get(pk=campaign.pk).status == "cancelled"
    assert "cancelled: messages not yet sent will not be sent" in text(response)
    assert not Delivery.objects.filter(campaign=campaign, status="planned").exists()
    # Refused transitions are explained, not a 500.
    response = client.post(reverse("campaigns:pause", args=[campaign.pk]), follow=True)
    assert "Cannot pause a campaign that is cancelled." in text(response)
    assert {a.action for a in AuditEntry.objects.filter(object_id=str(campaign.pk))} >= {
        "campaign.launched", "campaign.paused", "campaign.resumed", "campaign.cancelled"}


def test_scheduling_for_later_says_when(client, marketer, audience):
    later = timezone.now() + timedelta(days=2)
    campaign = make_campaign(audience, schedule="at", send_at=later)
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:launch", args=[campaign.pk])))
    assert "Schedule it" in page and timezone.localtime(later).strftime("%H:%M") in page
    response = client.post(reverse("campaigns:launch", args=[campaign.pk]), follow=True)
    assert Campaign.objects.get(pk=campaign.pk).status == "scheduled"
    assert "is scheduled" in text(response)


# --- Campaign page ------------------------------------------------------------------------------


def test_the_campaign_page_shows_results_after_dispatch(client, marketer, audience):
    campaign = launched(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:detail", args=[campaign.pk])))
    assert 'id="campaign-results"' in page
    assert re.search(r'data-stat="sent">5<', page)
    sms = re.search(r'<tr data-row="sms">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r'data-metric="sent">\s*<span class="num">2<', sms)
    assert 'title="Not reported on this channel"' in sms  # an SMS is never "opened"
    reasons = dict(re.findall(r'<li data-reason="(\w+)">.*?<strong class="reason-count">(\d+)</strong>', page, re.S))
    assert reasons == {"not_subscribed": "5", "bounced": "1", "no_address": "1"}
    ada = audience["people"]["ada"]
    assert f'href="/customers/{ada.pk}/"' in page
    assert page.count("<tr data-delivery=") == 12
    assert "Not subscribed to the topic on this channel" in page
    assert f'{reverse("campaigns:outbox")}?campaign={campaign.pk}' in page


def test_deliveries_page_backwards_with_a_cursor(client, marketer, audience):
    campaign = launched(audience)
    client.force_login(marketer)
    from campaigns import views

    views.DELIVERIES_PER_PAGE, saved = 5, views.DELIVERIES_PER_PAGE
    try:
        page = text(client.get(reverse("campaigns:detail", args=[campaign.pk])))
        first = [int(pk) for pk in re.findall(r'<tr data-delivery="(\d+)"', page)]
        after = re.search(r'\?part=deliveries&amp;after=(\d+)', page).group(1)
        older = text(client.get(reverse("campaigns:detail", args=[campaign.pk]), {"part": "deliveries", "after": after}, headers=HTMX))
    finally:
        views.DELIVERIES_PER_PAGE = saved
    assert "<html" not in older
    second = [int(pk) for pk in re.findall(r'<tr data-delivery="(\d+)"', older)]
    assert len(first) == 5 and len(second) == 5 and max(second) < min(first)


def test_a_staged_test_shows_significance_and_sends_the_remainder_with_the_winner(client, marketer, audience):
    variants = [
        VariantInput(key="A", content={"email": {"subject": "A", "html": "<p>A</p>"}}),
        VariantInput(key="B", content={"email": {"subject": "B", "html": "<p>B</p>"}}),
    ]
    campaign = launched(audience, channels=("email",), variants=variants, test_percent=90)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:detail", args=[campaign.pk])))
    assert 'id="staged-test"' in page
    assert "Not enough data yet to compare." in page or "Not yet significant" in page
    button = re.search(r"Send the remainder with variant (\w)", page)
    assert button
    variant = re.search(r'name="variant" value="(\d+)"', page).group(1)
    response = client.post(reverse("campaigns:send_remainder", args=[campaign.pk]), {"variant": variant}, follow=True)
    campaign.refresh_from_db()
    assert campaign.winner_variant_id == int(variant) and campaign.winner_decided_at
    assert f"The rest of the audience gets variant {button.group(1)}." in text(response)
    assert "Send the remainder" not in text(response)


def test_drafts_can_be_deleted_from_their_page(client, marketer, audience):
    campaign = make_campaign(audience)
    client.force_login(marketer)
    response = client.post(reverse("campaigns:delete", args=[campaign.pk]), follow=True)
    assert not Campaign.objects.filter(pk=campaign.pk).exists()
    assert "deleted" in text(response)


# --- Sandbox outbox -----------------------------------------------------------------------------


def test_the_outbox_lists_what_the_sandbox_sent_and_shows_an_email(client, marketer, audience):
    campaign = launched(audience)
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    client.force_login(marketer)
    page = text(client.get(reverse("campaigns:outbox")))
    assert page.count("<tr data-message=") == 5
    assert "Hello Ada" in page and "ada@example.com" in page
    sms_only = text(client.get(reverse("campaigns:outbox"), {"channel": "sms"}, headers=HTMX))
    assert "<html" not in sms_only and sms_only.count("<tr data-message=") == 2
    assert text(client.get(reverse("campaigns:outbox"), {"campaign": campaign.pk})).count("<tr data-message=") == 5
    email = SandboxMessage.objects.get(to="ada@example.com")
    viewer = text(client.get(reverse("campaigns:outbox_message", args=[email.pk]), headers=HTMX))
    frame = reverse("campaigns:outbox_message_frame", args=[email.pk])
    assert f'sandbox src="{frame}"' in viewer
    body = client.get(frame)
    assert "Hi Ada" in text(body) and "/t/c/" in text(body) and "sandbox" in body["Content-Security-Policy"]
    # Looking at it must not count as Ada opening it: the open pixel is left out.
    assert "/t/o/" in email.rendered["html"] and "/t/o/" not in text(body)
