"""The live map in headless Chromium, served by a real ASGI server: a customer entering the
journey through the ingestion service shows up on the map's node without a reload."""

import pytest
from playwright.sync_api import expect

from tests.factories import CustomerFactory
from tests.journeys.welcome import ingest, welcome_journey
from tests.test_browser_dashboards import asgi_server, running_asgi_server, sign_in  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser,
    # channels-postgres removes sockets from groups through its own database alias.
    pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"]),
]


# asgi_server comes before page: the browser closes first and never sees the server go away.
def test_a_customer_who_enters_appears_on_the_live_map_without_a_reload(asgi_server, page, shots, marketer, topics):  # noqa: F811
    journey = welcome_journey()
    base = asgi_server.base
    sign_in(page, base)
    page.goto(f"{base}/journeys/{journey.pk}/")
    status = page.locator("[data-live-status]")
    expect(status).to_have_attribute("data-state", "live")
    # The canvas's badge on the "Wait 2 days" node (customers there now), and the table's cell.
    badge = page.locator('[data-cell-id="wait"] .jc-badge text')
    cell = page.locator('[data-node-now="wait"]')
    expect(badge).to_have_text("0")
    expect(cell).to_have_text("0")
    page.evaluate("window.__sameDocument = true")

    ada = CustomerFactory(first_name="Ada", last_name="Lovelace", phone="")
    ingest(ada, "signed_up", plan="pro")

    expect(badge).to_have_text("1")
    expect(cell).to_have_text("1")
    expect(page.locator('[data-node-entered="start"]')).to_have_text("1")
    expect(page.locator('[data-edge="welcome:suppressed"]')).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True
    expect(status).to_have_attribute("data-state", "live")

    # Selecting the node on the canvas opens its panel, with ada among the customers there.
    page.locator('[data-cell-id="wait"]').click()
    panel = page.locator("#node-panel")
    expect(panel.locator("h3")).to_have_text("Wait 2 days")
    expect(panel.get_by_role("link", name="Ada Lovelace")).to_have_attribute("href", f"/customers/{ada.pk}/")
    page.screenshot(path=shots / "journey-live-map.png", full_page=True)
