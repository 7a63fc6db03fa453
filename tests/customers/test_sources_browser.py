"""In headless Chromium: an anonymous visitor's history, merged into the customer they turned
out to be, as support staff read it on the customer page."""

import base64

import httpx
import pytest
from playwright.sync_api import expect

from customers.models import ApiKey, Customer
from customers.services import api_keys
from tests.conftest import PASSWORD, WAIT_SECONDS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VISITOR = "3f2a9c1e-7b7d-4c52-9a51-0f6f3c1d2b8e"


def test_the_customer_page_shows_the_merged_visitor(live_server, page, shots, support, customer):
    _, key = api_keys.api_key_create(name="website", scope=ApiKey.Scope.SOURCE)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    batch = [{"type": "page", "anonymousId": VISITOR, "name": "Pricing",
              "context": {"campaign": {"source": "newsletter", "medium": "email"}}}]
    batch += [{"type": "track", "anonymousId": VISITOR, "event": "Product Viewed", "properties": {"sku": f"SKU-{i}"}}
              for i in range(11)]
    batch += [{"type": "identify", "anonymousId": VISITOR, "traits": {"city": "London"}},
              {"type": "track", "anonymousId": "9c0ffee0-still-anonymous", "event": "Product Viewed"}]
    with httpx.Client(base_url=live_server.url, headers=auth, timeout=WAIT_SECONDS) as client:
        assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
        identify = {"userId": "crm-ada", "anonymousId": VISITOR, "traits": {"plan": "pro"}}
        assert client.post("/v1/identify", json=identify).status_code == 200

    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(support.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # The list: the visitor still anonymous is labelled; the merged one is not listed.
    page.goto(f"{live_server.url}/customers/")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#results")).to_contain_text("Anonymous visitor")
    page.screenshot(path=shots / "sources-customer-list.png")

    page.goto(f"{live_server.url}/customers/{customer.pk}/")
    merged = page.locator("#timeline li.entry", has_text="Merged anonymous visitor")
    expect(merged.locator(".entry-title")).to_have_text("Merged anonymous visitor 3f2a9c1e…: 13 events")
    expect(merged).to_contain_text("city")  # taken over from the visitor
    card = page.locator("#anonymous-ids")
    expect(card).to_contain_text(VISITOR)
    expect(page.locator("#attributes")).to_contain_text("London")
    expect(page.locator("#timeline li.entry", has_text="Product viewed")).to_have_count(11)
    page.screenshot(path=shots / "sources-merged-customer.png", full_page=True)

    # The visitor's own page says where its history went.
    visitor = Customer.objects.get(anonymous_id=VISITOR)
    page.goto(f"{live_server.url}/customers/{visitor.pk}/")
    expect(page.locator(".merged-note")).to_contain_text("Merged into customer #")
    expect(page.get_by_role("heading", level=1)).to_have_text("Anonymous visitor 3f2a9c1e…")
    page.screenshot(path=shots / "sources-merged-visitor.png")
    page.get_by_role("link", name=f"customer #{customer.pk}").click()
    expect(page.get_by_role("heading", name="Ada Lovelace", level=1)).to_be_visible()

    # Usable on a phone.
    page.set_viewport_size({"width": 390, "height": 844})
    merged.scroll_into_view_if_needed()
    page.screenshot(path=shots / "sources-merged-customer-phone.png")
