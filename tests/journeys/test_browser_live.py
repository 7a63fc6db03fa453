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


def test_a_marketer_draws_publishes_and_watches_a_customer_arrive(asgi_server, page, shots, marketer, topics):  # noqa: F811
    """The whole day in one go: drag a step in and connect it, configure it, publish, then an
    event comes in and the count appears on the step without a reload."""
    import re

    from journeys import graph as graphs
    from journeys.models import Journey
    from journeys.services import journey_create
    from tests.journeys.test_browser_builder import centre, drag, saved_draft

    graph = graphs.empty_graph()
    graph["nodes"][0].update(label="Signed up", config={"kind": "event", "event": "signed_up"})
    journey = journey_create(name="Drawn in the browser", graph=graph, actor="test")
    base = asgi_server.base
    sign_in(page, base)
    page.goto(f"{base}/journeys/{journey.pk}/edit/")
    board = page.locator("#journey-canvas")
    nodes = board.locator("g.x6-node")
    expect(nodes).to_have_count(2)

    # Drag a Wait in, and put it between the trigger and the exit.
    area = board.bounding_box()
    drag(page, centre(page.locator("#journey-palette").get_by_role("button", name="Wait", exact=True)),
         (area["x"] + area["width"] * 0.78, area["y"] + area["height"] * 0.45))
    expect(nodes).to_have_count(3)
    wait = board.locator("g.x6-node").filter(has_text="WAIT")
    wait_id = wait.get_attribute("data-cell-id")
    drag(page, centre(board.locator('g[data-cell-id="start"] circle[port="out:out"]')),
         centre(wait.locator('circle[port="in"]')))
    drag(page, centre(wait.locator('circle[port="out:out"]')), centre(board.locator('g[data-cell-id="end"]')))
    saved_draft(page, journey, lambda d: sorted((e["from"], e["to"]) for e in d["edges"]) == sorted(
        [("start", wait_id), (wait_id, "end")]))

    # Configure it in the side panel.
    panel = page.locator("#journey-panel")
    wait.locator(".jc-label").click()
    panel.get_by_label("Wait", exact=True).select_option("duration")
    panel.get_by_label("Label").fill("Wait 2 days")
    panel.get_by_label("How long", exact=True).fill("2")
    panel.get_by_label("How long: unit").select_option("days")
    panel.get_by_role("button", name="Save step").click()
    expect(wait.locator(".jc-label")).to_have_text("Wait 2 days")
    saved_draft(page, journey, lambda d: graphs.nodes_by_id(d)[wait_id]["config"].get("minutes") == 2880)

    # Publish it.
    page.get_by_role("link", name=re.compile("Publish")).click()
    page.get_by_role("button", name="Publish version 1").click()
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    assert Journey.objects.get(pk=journey.pk).status == "live"

    # Someone signs up: they appear at the wait, on the map, without a reload.
    badge = page.locator(f'[data-cell-id="{wait_id}"] .jc-badge text')
    expect(badge).to_have_text("0")
    page.evaluate("window.__sameDocument = true")
    ingest(CustomerFactory(first_name="Grace", last_name="Hopper"), "signed_up")
    expect(badge).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=shots / "journey-drawn-and-live.png", full_page=True)
