"""Campaigns in headless Chromium: compose by clicking, fix an inline error, launch, read the results."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from campaigns import dispatch
from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign, Content, Delivery
from campaigns.providers import DeliveryEvent
from campaigns.sms import sms_length
from segments.services import static_members_change
from tests.campaigns.conftest import audience  # noqa: F401  (the fixture)
from tests.conftest import PASSWORD, WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def crowd(audience):  # noqa: F811
    """The six-person audience plus 24 shoppers on the newsletter by email, every third also by SMS."""
    extra = []
    for index in range(24):
        customer = CustomerFactory(first_name=f"Shopper{index}", timezone="UTC")
        SubscriptionFactory(customer=customer, topic=audience["topic"], channel="email")
        if index % 3 == 0:
            SubscriptionFactory(customer=customer, topic=audience["topic"], channel="sms")
        extra.append(customer.pk)
    static_members_change(segment=audience["segment"], add=True, ids=extra, actor="test")
    return audience


def screenshot(page, path, *, full_page=True):
    # Sticky columns are drawn where the scroll left them: shoot from the top.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=full_page)


def viewport_shot(page, path, *, top=None):
    """A 1440×900 picture like the README's others, scrolled so ``top`` starts near the top."""
    page.set_viewport_size({"width": 1440, "height": 900})
    if top:
        page.locator(top).evaluate("el => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 24)")
    else:
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path)
    page.set_viewport_size({"width": 1440, "height": 1000})


def sign_in(page, live_server, user):
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_a_marketer_composes_fixes_launches_and_reads_a_campaign(live_server, page, shots, marketer, crowd):
    sign_in(page, live_server, marketer)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Campaigns").click()
    expect(page.get_by_text("No campaigns yet.")).to_be_visible()
    page.get_by_role("link", name="New campaign").click()
    expect(page.get_by_role("heading", name="New campaign")).to_be_visible()

    page.get_by_label("Name", exact=True).fill("Winter sale")
    page.get_by_label("Topic").select_option("newsletter")
    page.locator("#segment-ids").get_by_label("Everyone").check()
    expect(page.locator("[data-no-channel]")).to_be_visible()
    page.get_by_role("checkbox", name="Email").check()
    page.get_by_role("checkbox", name="SMS").check()
    expect(page.get_by_role("tab", name="Email")).to_be_visible()
    expect(page.get_by_role("tab", name="WhatsApp")).to_be_hidden()

    # An A/B test adds a second set of messages with a weight; back to one message for now.
    page.get_by_label("Variants").select_option("2")
    page.get_by_role("tab", name="Variant B").click()
    expect(page.locator("#id_B-weight")).to_be_visible()
    expect(page.locator("#id_B-email-subject")).to_be_visible()
    expect(page.locator("#id_A-email-subject")).to_be_hidden()
    page.get_by_label("Variants").select_option("1")
    expect(page.get_by_role("tab", name="Variant B")).to_be_hidden()
    expect(page.locator("#id_A-email-subject")).to_be_visible()

    # Email, with a filter that does not exist.
    page.get_by_role("tab", name="Email").click()
    page.locator("#id_A-email-subject").fill("Hello {{ first_name|shout }}")
    page.locator("#id_A-email-html").fill('<h1>Winter sale</h1><p>Hi {{ first_name }}, 20% off everything.</p>'
                                         '<p><a href="https://shop.example.com/sale">Shop the sale</a></p>')
    preview = page.locator("#preview")
    expect(preview).to_contain_text("This template does not work yet")

    # SMS: the counter follows every keystroke, and an emoji switches the encoding.
    page.get_by_role("tab", name="SMS").click()
    body = page.locator("#id_A-sms-body")
    expect(body).to_be_visible()
    counter = page.locator('[data-variant="A"] [data-channel="sms"] [data-sms-counter]')
    text = "Hi {{ first_name }}, our winter sale starts today: 20% off everything in store"
    body.fill(text)
    expect(counter.locator("[data-sms-encoding]")).to_have_text("GSM-7")
    expect(counter.locator("[data-sms-segments]")).to_have_text("1 segment")
    expect(counter.locator("[data-sms-units]")).to_have_text("82")  # 78 characters, each brace counts twice
    body.press_sequentially(" 🎉")
    expect(counter.locator("[data-sms-encoding]")).to_have_text("UCS-2")
    expect(counter.locator("[data-sms-segments]")).to_have_text("2 segments")
    expect(counter.locator("[data-sms-units]")).to_have_text("81")  # UTF-16 units: the emoji takes two
    expect(preview.locator(".bubble")).to_contain_text("Hi Ada, our winter sale starts today")
    expect(preview).to_contain_text("UCS-2")
    # The editor's count and the server's agree, extended GSM characters included.
    for sample in ["", "plain", "curly {braces} and €", "ünïcödé ✓", "👍" * 40, "x" * 161, "[" * 80]:
        counted = page.evaluate("(text) => window.switchboardSmsLength(text)", sample)
        expected = sms_length(sample)
        assert (counted["encoding"], counted["characters"], counted["segments"]) == (
            expected.encoding, expected.characters, expected.segments), sample

    # Personalisation: a click inserts the variable where the cursor was.
    page.locator("#personalisation").get_by_role("button", name="{{ attributes.plan }}", exact=True).click()
    expect(body).to_have_value(text + " 🎉{{ attributes.plan }}")
    body.fill(text + " 🎉")
    screenshot(page, shots / "campaign-compose-sms.png")

    page.get_by_role("button", name="Save draft").click()
    # Refused: the email tab opens by itself with the error beside the subject.
    subject = page.locator("#id_A-email-subject")
    expect(subject).to_be_visible()
    error = page.locator(".field:has(#id_A-email-subject) .field-error")
    expect(error).to_contain_text("The 'shout' filter is not available in messages")
    expect(page.get_by_role("tab", name="Email")).to_have_class(re.compile("has-error"))
    expect(page.locator("#form-errors")).to_contain_text("Nothing was saved")
    assert not Campaign.objects.exists()
    expect(preview).to_contain_text("This template does not work yet")
    screenshot(page, shots / "campaign-compose-error.png")

    subject.fill('Hello {{ first_name|default:"there" }}, the winter sale is on')
    expect(error).to_be_hidden()
    expect(page.get_by_role("tab", name="Email")).not_to_have_class(re.compile("has-error"))
    expect(preview.locator("[data-preview-subject]")).to_have_text("Hello Ada, the winter sale is on")
    frame = page.frame_locator("#preview iframe.email-frame")
    expect(frame.get_by_role("heading", name="Winter sale")).to_be_visible()
    screenshot(page, shots / "campaign-compose.png")
    viewport_shot(page, shots / "campaign-compose-editor.png", top="#channels-card")
    page.get_by_role("button", name="Save draft").click()

    expect(page.get_by_role("heading", name="Winter sale")).to_be_visible()
    expect(page.locator("#flash")).to_contain_text("Draft “Winter sale” saved")
    campaign = Campaign.objects.get(name="Winter sale")
    assert campaign.channels == ["email", "sms"]
    assert Content.objects.get(variant__campaign=campaign, channel="sms").body["body"] == text + " 🎉"

    # The launch confirmation: who gets it on each channel, and who is left out and why.
    page.get_by_role("link", name="Review and launch").first.click()
    expect(page.get_by_role("heading", name="Launch “Winter sale”?")).to_be_visible()
    email_row, sms_row = page.locator('tr[data-channel="email"]'), page.locator('tr[data-channel="sms"]')
    expect(email_row.locator("[data-send]")).to_have_text("27")
    expect(email_row.locator("[data-suppressed]")).to_have_text("3")
    expect(sms_row.locator("[data-send]")).to_have_text("10")
    expect(sms_row.locator("[data-suppressed]")).to_have_text("20")
    expect(page.locator('[data-stat="to-send"]')).to_have_text("37")
    reasons = page.locator("#predicted-suppressions")
    expect(reasons.locator('li[data-reason="not_subscribed"] .reason-count')).to_have_text("21")
    expect(reasons).to_contain_text("Address bounced")
    expect(reasons).to_contain_text("No address for this channel")
    screenshot(page, shots / "campaign-launch.png")
    page.get_by_role("button", name="Launch now").click()

    expect(page.locator("#flash")).to_contain_text("launched: 30 customers")
    expect(page.locator('[data-status="sending"]')).to_be_visible()
    assert Delivery.objects.filter(campaign=campaign, status="planned").count() == 37

    # The workers send; some customers open and click; the page shows it.
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    now = timezone.now()
    email = list(Delivery.objects.filter(campaign=campaign, channel="email", status="sent").order_by("id"))
    sms = list(Delivery.objects.filter(campaign=campaign, channel="sms", status="sent").order_by("id"))
    events = [DeliveryEvent("delivered", now, delivery_id=d.pk) for d in email + sms]
    events += [DeliveryEvent("opened", now, delivery_id=d.pk) for d in email[:12]]
    events += [DeliveryEvent("clicked", now, delivery_id=d.pk) for d in email[:4] + sms[:3]]
    events += [DeliveryEvent("bounced", now, delivery_id=email[-1].pk, reason="550 mailbox unavailable")]
    delivery_events_apply(events=events)
    page.reload()
    results = page.locator("#campaign-results")
    expect(results.locator('[data-stat="sent"]')).to_have_text("37")
    expect(results.locator('tr[data-row="email"] [data-metric="opened"] .num')).to_have_text("12")
    expect(results.locator('tr[data-row="sms"] [data-metric="clicked"] .rate')).to_have_text("30.0%")
    expect(page.locator("#deliveries tbody tr")).to_have_count(50)
    viewport_shot(page, shots / "campaign.png")
    screenshot(page, shots / "campaign-full.png")

    page.locator("#deliveries").get_by_role("link", name="Older deliveries").click()
    expect(page.locator("#deliveries")).to_contain_text("Back to the newest")
    expect(page.locator("#deliveries tbody tr")).to_have_count(Delivery.objects.filter(campaign=campaign).count() - 50)

    # The list shows it with its progress; the sandbox outbox shows what was sent.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Campaigns").click()
    row = page.locator(f'tr[data-campaign="{campaign.pk}"]')
    expect(row.locator(".progress-note")).to_have_text("37 of 37 sent")
    page.screenshot(path=shots / "campaign-list.png")
    page.get_by_role("link", name="Sandbox outbox").click()
    expect(page.locator("#outbox-messages tbody tr")).to_have_count(37)
    page.get_by_label("Channel").select_option("email")
    expect(page.locator("#outbox-messages tbody tr")).to_have_count(27)
    page.locator("#outbox-messages .message-summary a").first.click()
    viewer = page.frame_locator("#outbox-message iframe")
    expect(viewer.get_by_role("link", name="Shop the sale")).to_be_visible()
    expect(viewer.get_by_role("link", name="Unsubscribe")).to_be_visible()
    page.screenshot(path=shots / "campaign-outbox.png")


def test_a_staged_ab_test_is_decided_from_the_campaign_page(live_server, page, shots, marketer, crowd):
    content = {"email": {"subject": "Winter sale", "html": "<p>Hi {{ first_name }}</p>"},
               "sms": {"body": "Hi {{ first_name }}, winter sale today"}}
    variants = [VariantInput(key="A", content=content),
                VariantInput(key="B", name="Short subject",
                                      content={**content, "email": {"subject": "Sale!", "html": "<p>Sale</p>"}})]
    # Who is held back is drawn from a hash of the campaign and customer ids. 15 more shoppers
    # and a 60% test keep the test group as large as 90% of the crowd would, while leaving
    # no realistic chance that nobody is held back (0.6^45), whatever ids this run gets.
    more = [CustomerFactory(first_name=f"Late shopper{index}", timezone="UTC") for index in range(15)]
    for customer in more:
        SubscriptionFactory(customer=customer, topic=crowd["topic"], channel="email")
    static_members_change(segment=crowd["segment"], add=True, ids=[customer.pk for customer in more], actor="test")
    data = CampaignInput(
        name="Subject line test", topic="newsletter", channels=["email", "sms"], segment_ids=[crowd["segment"].pk],
        variants=variants, test_percent=60, test_metric="click", test_hours=6,
    )
    campaign = campaign_create(data=data, actor="test")
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    sent = Delivery.objects.filter(campaign=campaign, status="sent").select_related("variant")
    clicks = [d for d in sent if d.variant.key == "B"][:6] + [d for d in sent if d.variant.key == "A"][:1]
    delivery_events_apply(events=[DeliveryEvent("clicked", timezone.now(), delivery_id=d.pk) for d in clicks])
    held = Delivery.objects.filter(campaign=campaign, status="held").count()

    sign_in(page, live_server, marketer)
    page.goto(f"{live_server.url}/campaigns/{campaign.pk}/")
    panel = page.locator("#staged-test")
    expect(panel.locator("tr.is-leading")).to_contain_text("Variant B")
    expect(panel.locator('[data-significance="variants"]')).to_contain_text(re.compile(r"significant: p = 0\.\d{3}", re.I))
    expect(page.locator("#results-by-variant")).to_contain_text("Short subject")
    screenshot(page, shots / "campaign-staged.png")

    # The decision asks first; declining sends nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    panel.get_by_role("button", name="Send the remainder with variant B").click()
    expect(panel.get_by_role("button", name="Send the remainder with variant B")).to_be_visible()
    assert Campaign.objects.get(pk=campaign.pk).winner_decided_at is None
    page.once("dialog", lambda dialog: dialog.accept())
    panel.get_by_role("button", name="Send the remainder with variant B").click()
    expect(page.locator("#flash")).to_contain_text("The rest of the audience gets variant B.")
    expect(page.locator("#staged-test")).to_contain_text("The rest of the audience got variant B")
    campaign.refresh_from_db()
    assert campaign.winner_variant.key == "B"
    assert held and Delivery.objects.filter(campaign=campaign, status="planned", variant__key="B").count() == held
