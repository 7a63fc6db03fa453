"""The support flow in headless Chromium: sign in, find a customer, read, change a preference."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from customers.models import Event, EventCategory, Subscription
from tests.conftest import PASSWORD
from tests.factories import CustomerFactory, SubscriptionFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_support_finds_a_customer_reads_the_timeline_and_changes_a_preference(
    live_server, page, shots, support, customer, topics
):
    CustomerFactory(first_name="Grace", last_name="Hopper", email="grace@example.com")
    SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel="email", subscribed=True)
    now = timezone.now()
    Event.objects.bulk_create(
        Event(
            customer=customer,
            name="message.opened" if index % 3 == 0 else "order_completed",
            category=EventCategory.MESSAGE if index % 3 == 0 else EventCategory.EVENT,
            channel="email" if index % 3 == 0 else "",
            properties={"order_id": f"A-{1000 + index}"},
            occurred_at=now - timedelta(hours=index + 1),
            source="api",
        )
        for index in range(75)
    )

    # Sign in as support.
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(support.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # Search as you type: only the results swap, and the URL follows the search.
    page.get_by_role("link", name="Customers", exact=True).click()
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    page.locator("#q").press_sequentially("Lovelace", delay=20)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ada@example.com")
    expect(page).to_have_url(re.compile(r"/customers/\?q=Lovelace"))
    page.screenshot(path=shots / "customers-list.png")

    # The customer page: the first page of the timeline, then more on scroll.
    rows.first.get_by_role("link", name="Ada Lovelace").click()
    expect(page.get_by_role("heading", name="Ada Lovelace", level=1)).to_be_visible()
    entries = page.locator("#timeline li.entry")
    expect(entries).to_have_count(50)
    page.screenshot(path=shots / "customer-page.png")
    page.locator("#timeline .timeline-more").scroll_into_view_if_needed()
    expect(entries).to_have_count(75)
    expect(page.locator(".timeline-end")).to_have_text("Beginning of the timeline")
    page.screenshot(path=shots / "customer-timeline-scrolled.png")

    # Filtering the timeline swaps it in place.
    page.locator("#timeline-category").select_option("message")
    expect(entries).to_have_count(25)
    expect(page).to_have_url(re.compile(r"\?category=message$"))

    # Change a cell of the matrix: without a reason nothing is written.
    page.evaluate("window.scrollTo(0, 0)")
    cell = page.locator('td[data-topic="newsletter"][data-channel="email"]')
    expect(cell.locator("summary")).to_have_text("Subscribed")
    cell.locator("summary").click()
    cell.get_by_role("button", name="Save change").click()
    expect(cell.locator(".field-error")).to_contain_text("Say why you are changing this")
    assert Subscription.objects.get(customer=customer, topic=topics["newsletter"], channel="email").subscribed

    # With a reason the matrix, the timeline and a notice all show the change.
    cell = page.locator('td[data-topic="newsletter"][data-channel="email"]')
    cell.get_by_label("Unsubscribed").check()
    cell.get_by_label("Reason").fill("Asked by phone to stop the newsletter")
    cell.get_by_role("button", name="Save change").click()
    expect(page.locator('td[data-topic="newsletter"][data-channel="email"] summary')).to_have_text("Unsubscribed")
    expect(page.locator("#flash")).to_contain_text("now unsubscribed from Newsletter by Email")
    page.locator("#timeline-category").select_option("")
    first_entry = page.locator("#timeline li.entry").first
    expect(first_entry).to_contain_text("Unsubscribed from Newsletter by Email")
    expect(first_entry).to_contain_text("Reason: Asked by phone to stop the newsletter")
    expect(first_entry).to_contain_text("by support")
    page.screenshot(path=shots / "customer-preference-changed.png")

    subscription = Subscription.objects.get(customer=customer, topic=topics["newsletter"], channel="email")
    assert subscription.subscribed is False and subscription.source == "support"
    change = Event.objects.get(customer=customer, name="subscription.changed")
    assert change.properties["reason"] == "Asked by phone to stop the newsletter"
