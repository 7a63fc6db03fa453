"""The journey builder in headless Chromium: drag a step in, connect it, configure it in the
side panel, undo, and move through the outline from the keyboard."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from journeys import graph as graphs
from journeys.models import Journey
from journeys.services import journey_create
from tests.conftest import PASSWORD, WAIT_SECONDS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, live_server, user):
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press, move in steps (as a hand would), release."""
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=15)
    page.mouse.up()


def saved_draft(page, journey: Journey, holds) -> dict:
    """The draft on the server once ``holds(draft)`` is true (the page saves it a moment after
    each change); fails after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        draft = Journey.objects.get(pk=journey.pk).draft
        if holds(draft):
            return draft
        assert time.monotonic() < deadline, f"the draft on the server never got there: {draft}"
        page.wait_for_timeout(100)  # the page saves on its own; look again shortly


@pytest.fixture
def journey(topics):
    graph = graphs.empty_graph()
    graph["nodes"][0].update(label="Signed up", config={"kind": "event", "event": "signed_up"})
    return journey_create(name="Welcome series", graph=graph, actor="test")


def test_a_marketer_drags_connects_configures_and_undoes(live_server, page, shots, marketer, journey):
    sign_in(page, live_server, marketer)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Journeys").click()
    page.goto(f"{live_server.url}/journeys/{journey.pk}/edit/")
    board = page.locator("#journey-canvas")
    nodes = board.locator("g.x6-node")
    outline = page.locator("#journey-outline [data-node]")
    panel = page.locator("#journey-panel")
    expect(nodes).to_have_count(2)
    expect(outline).to_have_text([re.compile("^Signed up"), re.compile("^Exit")])
    expect(panel).to_contain_text("Entry, goal and exits")  # nothing selected: the journey's settings

    # Drag a Wait from the palette onto the empty right half of the canvas.
    area = board.bounding_box()
    drop = (area["x"] + area["width"] * 0.78, area["y"] + area["height"] * 0.45)
    drag(page, centre(page.locator("#journey-palette").get_by_role("button", name="Wait", exact=True)), drop)
    expect(nodes).to_have_count(3)
    new = board.locator("g.x6-node").filter(has_text="WAIT")
    node_id = new.get_attribute("data-cell-id")
    assert re.fullmatch(r"wait_[a-z0-9]{5}", node_id)
    # The dropped step is selected: its panel opens.
    expect(panel.locator(f'[data-node-id="{node_id}"]')).to_be_visible()

    # Connect the trigger's "out" port to the new step's input: it replaces the old connection.
    source = board.locator('g[data-cell-id="start"] circle[port="out:out"]')
    target = new.locator('circle[port="in"]')
    drag(page, centre(source), centre(target))
    draft = saved_draft(page, journey, lambda d: d["edges"] == [{"from": "start", "port": "out", "to": node_id}])
    assert [n["id"] for n in draft["nodes"]] == ["start", "end", node_id]
    assert graphs.nodes_by_id(draft)[node_id]["type"] == "wait"
    expect(page.locator("#save-status")).to_have_text(re.compile(r"^Saved \d\d:\d\d:\d\d$"))
    expect(outline.nth(1)).to_contain_text("after Signed up (out)")

    # Select nothing, then the new step again by clicking it on the canvas.
    board.click(position={"x": 12, "y": 12})
    expect(panel).to_contain_text("Entry, goal and exits")
    new.locator(".jc-label").click()
    expect(panel.locator(f'[data-node-id="{node_id}"]')).to_be_visible()
    expect(outline.filter(has_text="Wait")).to_have_attribute("aria-current", "true")

    # Saving without saying how long: the error sits next to the input, nothing changes.
    panel.get_by_label("Wait", exact=True).select_option("duration")
    panel.get_by_role("button", name="Save step").click()
    amount = panel.get_by_label("How long", exact=True)
    expect(panel.locator(".field.has-error", has=page.get_by_label("How long", exact=True))).to_contain_text(
        "Must be a whole number from 1 to")
    assert graphs.nodes_by_id(Journey.objects.get(pk=journey.pk).draft)[node_id]["config"] == {}

    # Fill it in: the label changes on the canvas and in the outline, the draft has it.
    panel.get_by_label("Label").fill("Wait 2 days")
    amount.fill("2")
    panel.get_by_label("How long: unit").select_option("days")
    panel.get_by_role("button", name="Save step").click()
    expect(panel.get_by_text("Saved to the draft.")).to_be_visible()
    expect(new.locator(".jc-label")).to_have_text("Wait 2 days")
    expect(outline.filter(has_text="Wait 2 days")).to_have_count(1)
    draft = saved_draft(page, journey, lambda d: graphs.nodes_by_id(d)[node_id]["label"] == "Wait 2 days")
    assert graphs.nodes_by_id(draft)[node_id]["config"] == {"kind": "duration", "minutes": 2 * 24 * 60}
    page.screenshot(path=shots / "journey-builder.png")

    # Undo takes the save back, on the canvas, in the panel and in the draft; redo brings it back.
    page.get_by_role("button", name="Undo").click()
    expect(new.locator(".jc-label")).to_have_text("Wait")
    expect(panel.get_by_label("Label")).to_have_value("Wait")
    draft = saved_draft(page, journey, lambda d: graphs.nodes_by_id(d)[node_id]["label"] == "Wait")
    assert graphs.nodes_by_id(draft)[node_id]["config"] == {}
    page.get_by_role("button", name="Redo").click()
    expect(new.locator(".jc-label")).to_have_text("Wait 2 days")
    saved_draft(page, journey, lambda d: graphs.nodes_by_id(d)[node_id]["config"].get("minutes") == 2880)

    # The outline from the keyboard: arrows move, Enter opens the step.
    outline.first.focus()
    page.keyboard.press("ArrowDown")
    expect(outline.nth(1)).to_be_focused()
    page.keyboard.press("Enter")
    expect(panel.locator(f'[data-node-id="{node_id}"]')).to_be_visible()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")
    expect(panel.locator('[data-node-id="start"]')).to_be_visible()
    expect(board.locator('g[data-cell-id="start"].jc-selected')).to_have_count(1)

    # Validate lists what is left; a problem opens its step.
    page.get_by_role("button", name="Validate").click()
    problems = page.locator("#journey-problems")
    expect(problems).to_contain_text("problems to fix before publishing")
    problems.get_by_role("button", name=re.compile("The 'out' port is not connected")).click()
    expect(panel.locator(f'[data-node-id="{node_id}"]')).to_be_visible()


def test_deleting_a_step_from_its_panel_and_a_connection_with_the_delete_key(live_server, page, marketer, journey):
    sign_in(page, live_server, marketer)
    page.goto(f"{live_server.url}/journeys/{journey.pk}/edit/")
    board = page.locator("#journey-canvas")
    expect(board.locator("g.x6-node")).to_have_count(2)

    # A step added from the keyboard lands in the middle of the view, selected.
    page.locator("#journey-palette").get_by_role("button", name="Condition", exact=True).press("Enter")
    expect(board.locator("g.x6-node")).to_have_count(3)
    panel = page.locator("#journey-panel")
    expect(panel).to_contain_text("Yes or no")
    saved_draft(page, journey, lambda d: len(d["nodes"]) == 3)
    panel.get_by_role("button", name="Delete step").click()
    expect(board.locator("g.x6-node")).to_have_count(2)
    saved_draft(page, journey, lambda d: len(d["nodes"]) == 2)

    # Click the connection (a straight line down: no width to click "into"), press Delete.
    page.mouse.click(*centre(board.locator("g.x6-edge").first))
    page.keyboard.press("Delete")
    expect(board.locator("g.x6-edge")).to_have_count(0)
    draft = saved_draft(page, journey, lambda d: d["edges"] == [])
    assert [n["id"] for n in draft["nodes"]] == ["start", "end"]
    page.get_by_role("button", name="Undo").click()
    expect(board.locator("g.x6-edge")).to_have_count(1)
    saved_draft(page, journey, lambda d: d["edges"] == [{"from": "start", "port": "out", "to": "end"}])
