"""Segments in headless Chromium: build by clicking, watch the count, save, read the page, ask why."""

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from segments.models import Segment, SegmentMembership
from tests.conftest import PASSWORD
from tests.factories import CustomerFactory, EventFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shoppers(db):
    """Recent buyers: two experts and three leads; an expert whose order is old; two idle experts."""
    now = timezone.now()
    people = {
        "ada": CustomerFactory(first_name="Ada", last_name="Lovelace", email="ada@example.com", lifecycle_stage="expert"),
        "grace": CustomerFactory(first_name="Grace", last_name="Hopper", email="grace@example.com", lifecycle_stage="expert"),
        "old": CustomerFactory(first_name="Olive", last_name="Oldorder", lifecycle_stage="expert"),
    }
    for name in ("Alan", "Barbara", "Claude"):
        people[name.lower()] = CustomerFactory(first_name=name, lifecycle_stage="lead")
    CustomerFactory.create_batch(2, lifecycle_stage="expert")
    for key in ("ada", "grace", "alan", "barbara", "claude"):
        EventFactory(customer=people[key], name="order_completed", occurred_at=now - timedelta(days=2))
    EventFactory(customer=people["old"], name="order_completed", occurred_at=now - timedelta(days=60))
    EventFactory(customer=people["ada"], name="app_opened", occurred_at=now - timedelta(days=1))
    return people


def sign_in(page, live_server, user):
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_a_marketer_builds_a_segment_by_clicking_and_reads_its_page(live_server, page, shots, marketer, shoppers):
    sign_in(page, live_server, marketer)
    page.get_by_role("link", name="Segments", exact=True).click()
    expect(page.get_by_text("No segments yet.")).to_be_visible()
    page.get_by_role("link", name="New segment").click()
    expect(page.get_by_role("heading", name="New segment")).to_be_visible()
    page.get_by_label("Name").fill("Recent expert buyers")
    page.get_by_label("Description").fill("Experts who ordered in the last 30 days")
    count = page.locator("#preview .preview-count")

    # An event condition: order_completed, at least once, in the last 30 days.
    page.get_by_role("button", name="Add condition", exact=True).click()
    condition = page.locator(".rb-cond").last
    condition.get_by_label("Condition type").select_option("event")
    condition = page.locator(".rb-cond").last
    condition.get_by_label("Event").fill("order_completed")
    expect(condition.get_by_label("Count", exact=True)).to_have_value("gte")
    expect(condition.get_by_label("Times", exact=True)).to_have_value("1")
    condition.get_by_label("Within days").fill("30")
    expect(count).to_have_text("5")

    # AND the profile field lifecycle_stage is expert.
    page.locator(".rb-root > .rb-group-actions").get_by_role("button", name="Add condition").click()
    condition = page.locator(".rb-cond").last
    expect(condition.get_by_label("Condition type")).to_have_value("profile")
    condition.get_by_label("Field").select_option("lifecycle_stage")
    condition.get_by_label("Operator").select_option("eq")
    condition.get_by_label("Value", exact=True).fill("expert")
    expect(count).to_have_text("2")
    expect(page.locator("#preview .sample-list li")).to_have_count(2)
    expect(page.locator("#preview")).to_contain_text("Ada Lovelace")
    rules = json.loads(page.locator("#rules-input").input_value())
    assert rules == {"all": [
        {"event": "order_completed", "within_days": 30, "count": {"op": "gte", "value": 1}},
        {"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
    ]}
    page.screenshot(path=shots / "segments-builder.png", full_page=True)

    page.get_by_role("button", name="Create segment").click()
    expect(page.get_by_role("heading", name="Recent expert buyers")).to_be_visible()
    expect(page.locator("#flash")).to_contain_text("created: 2 members")
    segment = Segment.objects.get(name="Recent expert buyers")
    assert set(SegmentMembership.objects.filter(segment=segment).values_list("customer_id", flat=True)) == {
        shoppers["ada"].pk, shoppers["grace"].pk
    }
    members = page.locator(".members-table tbody tr[data-customer]")
    expect(members).to_have_count(2)
    expect(page.locator('[data-stat="members"]')).to_have_text("2")
    expect(page.locator("#rules")).to_contain_text("order_completed happened at least once in the last 30 days")
    expect(page.locator("#size-chart .main-svg").first).to_be_attached()
    expect(page.locator("#recent-changes li")).to_have_count(2)
    page.screenshot(path=shots / "segments-page.png", full_page=True)

    # Why is Ada in it? Every rule passed, with the value that decided it.
    page.locator(f'tr[data-customer="{shoppers["ada"].pk}"]').get_by_role("link", name="Why?").click()
    explanation = page.locator("#explanation")
    expect(explanation).to_contain_text("In the segment")
    expect(explanation.locator(".explain-node.is-pass")).to_have_count(3)
    expect(explanation).to_contain_text("1 matching event in the last 30 days")

    # And Alan, a lead who ordered: the stage rule failed on his value.
    page.get_by_label("Customer id, email or external id").fill(str(shoppers["alan"].pk))
    page.locator("#check-card").get_by_role("button", name="Why?").click()
    expect(explanation).to_contain_text("Not in the segment")
    failed = explanation.locator(".explain-node.is-fail").filter(has_text="lifecycle_stage is 'expert'").last
    expect(failed).to_contain_text("value: lead")
    page.locator("#check-card").screenshot(path=shots / "segments-why.png")

    # The list shows it, with its size.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Segments").click()
    row = page.locator(f'tr[data-segment="{segment.pk}"]')
    expect(row.locator(".size-cell")).to_have_text("2")
    expect(row).to_contain_text("computed")
    page.screenshot(path=shots / "segments-list.png")

    # Ada's customer page has a Segments card, loaded from the segments app.
    page.goto(f"{live_server.url}/customers/{shoppers['ada'].pk}/")
    card = page.locator("#customer-segments")
    expect(card.locator(".membership-name")).to_have_text("Recent expert buyers")
    expect(card.get_by_role("link", name="Why?")).to_be_visible()
    expect(card.locator(".segment-history li")).to_have_count(1)
    card.scroll_into_view_if_needed()
    card.screenshot(path=shots / "segments-customer-card.png")
    card.get_by_role("link", name="Why?").click()
    expect(page.get_by_role("heading", name=re.compile(r"Is Ada Lovelace in “Recent expert buyers”\?"))).to_be_visible()
    expect(page.locator(".explain-root > .explain-node")).to_have_class(re.compile("is-pass"))
    page.screenshot(path=shots / "segments-why-page.png")


def test_nested_groups_inline_errors_and_the_json_view(live_server, page, shots, marketer, shoppers):
    sign_in(page, live_server, marketer)
    page.goto(f"{live_server.url}/segments/new/")
    page.get_by_label("Name").fill("Engaged experts")
    # A static list has no rules to edit.
    page.locator('input[name="kind"][value="static"]').check()
    expect(page.locator("#rules-card")).to_be_hidden()
    expect(page.locator("#preview")).to_be_hidden()
    page.locator('input[name="kind"][value="dynamic"]').check()
    expect(page.locator("#rules-card")).to_be_visible()
    count = page.locator("#preview .preview-count")

    page.get_by_role("button", name="Add condition", exact=True).click()
    page.locator(".rb-cond").last.get_by_label("Value", exact=True).fill("expert")
    expect(count).to_have_text("5")

    # A nested group: ANY of (opened the app, ordered twice or more).
    page.locator(".rb-root > .rb-group-actions").get_by_role("button", name="Add group").click()
    group = page.locator(".rb-root .rb-group").last
    expect(group.get_by_role("radio", name="Any")).to_have_attribute("aria-checked", "true")
    first = group.locator(".rb-cond").first
    first.get_by_label("Condition type").select_option("event")
    first = group.locator(".rb-cond").first
    # Left empty, the event name is refused next to the condition itself.
    expect(first.locator(".rb-error")).to_contain_text("Event must be an event name")
    expect(first.get_by_label("Event")).to_have_class(re.compile("invalid"))
    first.get_by_label("Event").fill("app_opened")
    expect(first.locator(".rb-error")).to_be_hidden()
    expect(count).to_have_text("1")

    group.get_by_role("button", name="Add condition").click()
    second = group.locator(".rb-cond").last
    second.get_by_label("Condition type").select_option("event")
    second = group.locator(".rb-cond").last
    second.get_by_label("Event").fill("order_completed")
    second.get_by_label("Count", exact=True).select_option("lte")
    second.get_by_label("Times", exact=True).fill("0")
    expect(count).to_have_text("3")  # ada opened the app; two idle experts never ordered
    page.screenshot(path=shots / "segments-builder-nested.png", full_page=True)

    # "Not" on the whole group turns it around.
    group.locator(".rb-group-head .rb-not input").check()
    expect(count).to_have_text("2")
    expect(group.locator(".rb-not-badge").first).to_have_text("NOT")
    group.locator(".rb-group-head .rb-not input").uncheck()
    expect(count).to_have_text("3")

    # Power users edit the JSON; the visual editor follows.
    page.get_by_role("button", name="JSON").click()
    textarea = page.locator("#rules-input")
    expect(textarea).to_be_visible()
    rules = json.loads(textarea.input_value())
    assert rules["all"][1] == {"any": [
        {"event": "app_opened", "count": {"op": "gte", "value": 1}},
        {"event": "order_completed", "count": {"op": "lte", "value": 0}},
    ]}
    rules["all"][0]["value"] = "lead"
    textarea.fill(json.dumps(rules))
    expect(count).to_have_text("0")
    page.get_by_role("button", name="Visual").click()
    expect(page.locator(".rb-root > .rb-children > .rb-cond").first.get_by_label("Value", exact=True)).to_have_value("lead")

    # Broken JSON keeps the JSON view open and says why.
    page.get_by_role("button", name="JSON").click()
    textarea.fill('{"all": [')
    expect(page.locator("#preview")).to_contain_text("not valid JSON")
    page.get_by_role("button", name="Visual").click()
    expect(page.locator("#json-error")).to_contain_text("not valid JSON")
    expect(textarea).to_be_visible()
    assert not Segment.objects.exists()


def test_a_recomputation_shows_its_progress_and_then_the_result(live_server, page, shots, marketer, shoppers, settings):
    from segments import services
    from tests.segments.test_computation import run_background_tasks

    settings.SEGMENT_COMPUTE_INLINE_CUSTOMERS = -1
    segment = services.segment_create(name="Experts", rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
                                      actor="test")
    run_background_tasks()
    # The marketer widens the rules; the last computation took a minute, so this one should too.
    services.segment_update(segment=segment, actor="test",
                            rules={"attr": "lifecycle_stage", "op": "in", "value": ["expert", "lead"]})
    Segment.objects.filter(pk=segment.pk).update(compute_estimate_ms=60_000, compute_phase=Segment.Phase.EVALUATING,
                                                 compute_started_at=timezone.now() - timedelta(seconds=12))

    sign_in(page, live_server, marketer)
    page.goto(f"{live_server.url}/segments/{segment.pk}/")
    progress = page.locator("#segment-computation")
    expect(progress.get_by_text("Recomputing the members")).to_be_visible()
    expect(progress.get_by_role("progressbar")).to_have_attribute("aria-valuenow", re.compile(r"^(2\d)$"))
    expect(progress.get_by_text(re.compile(r"About 4\d s left"))).to_be_visible()
    # Until it is done, the members shown are the previous computation's.
    expect(page.locator('[data-stat="members"]')).to_have_text("5")
    page.screenshot(path=shots / "segments-computing.png", full_page=True)

    # A worker computes it; the page notices within a second or two and shows the result.
    run_background_tasks()
    expect(page.locator('[data-stat="members"]')).to_have_text("8")
    expect(progress.get_by_role("progressbar")).to_have_count(0)
    expect(page.get_by_text("Recomputing the members")).to_have_count(0)
