"""The journey builder: the page, the autosaved draft, the side panel's forms (a node's, the
journey's settings) and "Validate"."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from core.models import AuditEntry
from journeys import graph as graphs
from journeys.models import Action, Journey
from journeys.services import journey_create
from segments.services import segment_create

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def cart_graph() -> dict:
    """An abandoned-cart draft: trigger → wait → send → exit, with a condition still to configure."""
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "Cart abandoned",
             "config": {"kind": "event", "event": "cart_abandoned"}, "x": 80, "y": 40},
            {"id": "pause", "type": "wait", "label": "Wait 4 hours",
             "config": {"kind": "duration", "minutes": 240}, "x": 80, "y": 160},
            {"id": "remind", "type": "send", "label": "Reminder",
             "config": {"topic": "coupons", "channel": "sms", "content": {"sms": {"body": "Your cart misses you"}}},
             "x": 80, "y": 280},
            {"id": "check", "type": "condition", "label": "", "config": {}, "x": 300, "y": 280},
            {"id": "ab", "type": "split", "label": "Test",
             "config": {"branches": [{"port": "a", "weight": 50}, {"port": "b", "weight": 50}]}, "x": 300, "y": 400},
            {"id": "end", "type": "exit", "label": "Done", "config": {}, "x": 80, "y": 400},
        ],
        "edges": [
            {"from": "start", "port": "out", "to": "pause"},
            {"from": "pause", "port": "out", "to": "remind"},
            {"from": "remind", "port": "sent", "to": "end"},
            {"from": "remind", "port": "suppressed", "to": "end"},
            {"from": "ab", "port": "a", "to": "end"},
            {"from": "ab", "port": "b", "to": "end"},
        ],
        "settings": {"reentry": {"mode": "once"}},
    }


@pytest.fixture
def journey(topics):
    return journey_create(name="Abandoned cart", graph=cart_graph(), actor="test")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def canvas_data(response) -> dict:
    found = re.search(r'<script id="journey-data" type="application/json">(.*?)</script>', response.content.decode(), re.S)
    return json.loads(found.group(1))


def draft_of(journey: Journey) -> dict:
    return Journey.objects.get(pk=journey.pk).draft


def node_of(journey: Journey, node_id: str) -> dict:
    return graphs.nodes_by_id(draft_of(journey))[node_id]


def post_draft(client, journey, body):
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(f"/journeys/{journey.pk}/draft/", raw, content_type="application/json")


def errors_next_to(html: str, name: str) -> list[str]:
    """The inline errors drawn in the field (or choice list) holding the input ``name``."""
    errors = []
    for block in re.split(r'(?=<(?:div|fieldset) class="field)', html):
        if f'name="{name}"' in block and "has-error" in block.split(">", 1)[0]:
            errors += [re.sub(r"\s+", " ", e).strip() for e in re.findall(r'<p class="field-error">(.*?)</p>', block, re.S)]
    return errors


# --- The page ---------------------------------------------------------------------------------------


def test_the_builder_draws_the_draft_with_each_nodes_ports(journey, marketer):
    response = signed_in(marketer).get(f"/journeys/{journey.pk}/edit/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "build/journey-canvas.js" in page and "build/journey-canvas.css" in page
    assert 'id="journey-outline"' in page and 'id="journey-panel"' in page
    data = canvas_data(response)
    assert data["graph"]["nodes"] == cart_graph()["nodes"]
    assert data["ports"]["pause"] == ["out"] and data["ports"]["ab"] == ["a", "b"] and data["ports"]["end"] == []
    assert data["nodeTypes"]["nba"]["label"] == "Next best action"
    # A split dropped from the palette starts with two branches, and the canvas gets their ports.
    assert data["defaults"]["split"]["ports"] == ["a", "b"]
    assert data["defaults"]["condition"] == {"config": {}, "ports": ["yes", "no"]}
    assert data["problems"]["check"] >= 1 and "start" not in data["problems"]
    assert data["urls"]["draft"] == f"/journeys/{journey.pk}/draft/"


def test_the_builder_and_its_endpoints_are_for_marketers_only(journey, support, outsider, client):
    before = draft_of(journey)
    urls = [f"/journeys/{journey.pk}/{path}" for path in ("edit/", "draft/", "nodes/pause/", "settings/", "validate/")]
    for user in (support, outsider):
        for url in urls:
            assert signed_in(user).get(url).status_code == 403
            response = signed_in(user).post(url, json.dumps({"nodes": [], "edges": []}), content_type="application/json")
            assert response.status_code == 403, url
    assert client.get(urls[0]).status_code == 302
    assert draft_of(journey) == before


def test_a_missing_journey_or_node_is_a_404(journey, marketer):
    client = signed_in(marketer)
    assert client.get("/journeys/999999/edit/").status_code == 404
    assert client.get(f"/journeys/{journey.pk}/nodes/nowhere/").status_code == 404


# --- The draft, saved as the canvas changes --------------------------------------------------------------


def test_the_canvas_saves_its_graph_as_the_draft_and_gets_its_problems(journey, marketer):
    graph = cart_graph()
    graph["nodes"].append({"id": "send_k3f9x", "type": "send", "label": "Send", "config": {}, "x": 500, "y": 100})
    graph["edges"].append({"from": "check", "port": "yes", "to": "send_k3f9x"})
    client = signed_in(marketer)
    audited = AuditEntry.objects.count()
    response = post_draft(client, journey, graph)
    assert response.status_code == 200
    body = response.json()
    journey.refresh_from_db()
    assert journey.draft == graph
    assert body["saved_at"] == journey.draft_saved_at.isoformat()
    new_node_problems = {p["field"] for p in body["problems"] if p["node"] == "send_k3f9x"}
    assert {"config.topic", "config.channel", "ports.sent"} <= new_node_problems
    # Drafts save every few seconds while someone draws: they are not each an audit entry.
    assert AuditEntry.objects.count() == audited


@pytest.mark.parametrize("body, field", [
    ("{not json", "graph"),
    ("[]", "graph"),
    (json.dumps({"nodes": {}, "edges": []}), "graph"),
    (json.dumps({"nodes": [], "edges": "none"}), "graph"),
    (json.dumps({"nodes": [{"type": "send"}], "edges": []}), "graph.nodes[0].id"),
    (json.dumps({"nodes": [{"id": "a", "type": "teleport"}], "edges": []}), "graph.nodes[0].type"),
    (json.dumps({"nodes": [{"id": f"n{i}", "type": "exit"} for i in range(graphs.MAX_NODES + 1)], "edges": []}),
     "graph.nodes"),
    (json.dumps({"nodes": [{"id": "a", "type": "exit", "label": "Bye\u0000"}], "edges": []}), "graph.nodes[0].label"),
    ('{"nodes": [{"id": "a", "type": "exit", "x": NaN}], "edges": []}', "graph.nodes[0].x"),
])
def test_an_unusable_draft_is_refused_with_a_message_and_nothing_changes(journey, marketer, body, field):
    before = draft_of(journey)
    response = post_draft(signed_in(marketer), journey, body)
    assert response.status_code == 400
    data = response.json()
    assert data["message"].endswith("nothing was saved.")
    assert [error["field"] for error in data["errors"]] == [field]
    assert draft_of(journey) == before


def test_an_incomplete_draft_is_still_saved(journey, marketer):
    graph = {"nodes": [{"id": "wait_1", "type": "wait", "label": "", "config": {}}], "edges": []}
    response = post_draft(signed_in(marketer), journey, graph)
    assert response.status_code == 200
    assert draft_of(journey) == graph
    assert any(p["field"] == "nodes" and "exactly one trigger" in p["message"] for p in response.json()["problems"])


# --- The node panel ----------------------------------------------------------------------------------------


def test_each_node_opens_the_form_of_its_type_filled_from_its_config(journey, marketer):
    Action.objects.create(key="coupon", name="Apology coupon", accept_event="coupon_redeemed")
    Action.objects.create(key="old_offer", name="Old offer", accept_event="x", active=False)
    graph = cart_graph()
    graph["nodes"].append({"id": "best", "type": "nba", "label": "", "config": {"actions": []}})
    journey.draft = graph
    journey.save()
    client = signed_in(marketer)

    wait = client.get(f"/journeys/{journey.pk}/nodes/pause/", headers=HTMX).content.decode()
    assert 'data-node-id="pause"' in wait and 'name="kind"' in wait
    assert re.search(r'<option value="duration" selected>', wait)
    # 240 minutes reads as 4 hours.
    assert re.search(r'name="minutes" value="4"', wait) and re.search(r'<option value="hours" selected>', wait)
    assert 'data-when="kind:event"' in wait  # the event inputs show only for "until an event"

    send = client.get(f"/journeys/{journey.pk}/nodes/remind/", headers=HTMX).content.decode()
    for name in ("topic", "channel", "A-email-subject", "A-email-html", "A-sms-body", "A-push-title"):
        assert f'name="{name}"' in send
    assert re.search(r'<textarea name="A-sms-body"[^>]*>\s*Your cart misses you</textarea>', send)
    assert re.search(r'<option value="coupons" selected>', send)

    split = client.get(f"/journeys/{journey.pk}/nodes/ab/", headers=HTMX).content.decode()
    assert re.search(r'<textarea name="branches"[^>]*>\s*a=50\nb=50</textarea>', split)

    nba = client.get(f"/journeys/{journey.pk}/nodes/best/", headers=HTMX).content.decode()
    assert 'value="coupon"' in nba and "Apology coupon" in nba and "old_offer" not in nba

    # A node's own problems are listed until they are fixed.
    condition = client.get(f"/journeys/{journey.pk}/nodes/check/", headers=HTMX).content.decode()
    assert "Still to do" in condition and "A rule or a context condition is required" in condition
    assert 'name="rule"' in condition and 'name="context"' in condition


def test_bad_input_is_shown_next_to_its_field_and_changes_nothing(journey, marketer):
    client = signed_in(marketer)
    before = draft_of(journey)
    url = f"/journeys/{journey.pk}/nodes/pause/"

    # Parsed by the form: a number that is not one.
    response = client.post(url, {"label": "Wait", "kind": "duration", "minutes": "soon", "minutes_unit": "hours"},
                           headers=HTMX)
    assert response.status_code == 422
    assert errors_next_to(response.content.decode(), "minutes") == ["Enter a whole number."]

    # Checked by journeys.graph: "until an event" needs an event name and a timeout.
    response = client.post(url, {"label": "Wait for the order", "kind": "event", "event": "", "timeout_minutes": ""},
                           headers=HTMX)
    page = response.content.decode()
    assert response.status_code == 422 and "Nothing was saved" in page
    assert errors_next_to(page, "event") == [
        "Must be an event name (letters, digits, &#x27;_&#x27;, &#x27;.&#x27;, &#x27;:&#x27; or &#x27;-&#x27;)."
    ]
    assert errors_next_to(page, "timeout_minutes") == [f"Must be a whole number from 1 to {graphs.MAX_MINUTES}."]
    assert "HX-Trigger" not in response

    # A JSON rule that is not JSON, and one the rule language refuses.
    check = f"/journeys/{journey.pk}/nodes/check/"
    response = client.post(check, {"rule": "{all: ["}, headers=HTMX)
    assert response.status_code == 422 and errors_next_to(response.content.decode(), "rule")[0].startswith(
        "This is not valid JSON")
    response = client.post(check, {"rule": json.dumps({"attr": "lifecycle_stage", "op": "almost", "value": 1})},
                           headers=HTMX)
    assert response.status_code == 422 and errors_next_to(response.content.decode(), "rule")

    # A trigger's property filter the rule language refuses sits next to the filter.
    response = client.post(f"/journeys/{journey.pk}/nodes/start/", {
        "kind": "event", "event": "cart_abandoned", "where": json.dumps([{"prop": "total", "op": "about", "value": 5}]),
    }, headers=HTMX)
    assert response.status_code == 422
    assert "unknown operator" in " ".join(errors_next_to(response.content.decode(), "where"))

    # A split line that is not name=weight, and a branch name the graph refuses.
    split = f"/journeys/{journey.pk}/nodes/ab/"
    response = client.post(split, {"branches": "a=50\nb"}, headers=HTMX)
    assert errors_next_to(response.content.decode(), "branches") == ["Line 2 is not name=weight."]
    response = client.post(split, {"branches": "a=50\nHoldout Group=50"}, headers=HTMX)
    assert response.status_code == 422
    assert errors_next_to(response.content.decode(), "branches") == [
        "Line 2: must be a lower-case name (not &#x27;holdout&#x27;)."
    ]

    # A send's template error sits next to the input it is in.
    response = client.post(f"/journeys/{journey.pk}/nodes/remind/",
                           {"topic": "coupons", "channel": "sms", "A-sms-body": "Hi {{ first_name|shout }}"}, headers=HTMX)
    assert response.status_code == 422
    assert errors_next_to(response.content.decode(), "A-sms-body")[0].startswith(
        "The &#x27;shout&#x27; filter is not available in messages")

    assert draft_of(journey) == before


def test_a_saved_node_updates_the_draft_and_tells_the_canvas(journey, marketer):
    response = signed_in(marketer).post(f"/journeys/{journey.pk}/nodes/pause/", {
        "label": "Wait up to 4 hours for the order", "kind": "event", "event": "order_completed", "match": "cart_id",
        "timeout_minutes": "4", "timeout_unit": "hours",
        # Inputs of the other kinds are sent too (hidden in the page) and ignored.
        "minutes": "2", "minutes_unit": "days",
    }, headers=HTMX)
    assert response.status_code == 200
    node = node_of(journey, "pause")
    assert node["label"] == "Wait up to 4 hours for the order"
    assert node["config"] == {"kind": "event", "event": "order_completed", "match": "cart_id", "timeout_minutes": 240}
    assert (node["x"], node["y"]) == (80, 160)
    # The "out" port is gone (an event wait leaves by "event" or "timeout"), and its connection with it.
    assert [e for e in draft_of(journey)["edges"] if e["from"] == "pause"] == []
    saved = json.loads(response["HX-Trigger"])["journeyNodeSaved"]
    assert saved["id"] == "pause" and saved["label"] == "Wait up to 4 hours for the order"
    assert saved["ports"] == ["event", "timeout"]
    assert {p["field"] for p in saved["problems"]} == {"ports.event", "ports.timeout"}
    page = response.content.decode()
    assert "Saved to the draft." in page
    config = re.search(r'<script id="journey-node-saved" type="application/json">(.*?)</script>', page, re.S)
    assert json.loads(config.group(1))["config"] == node["config"]


def test_renaming_a_branch_keeps_the_other_branches_connections(journey, marketer):
    response = signed_in(marketer).post(f"/journeys/{journey.pk}/nodes/ab/",
                                        {"label": "Subject test", "branches": "control=50\nb=50", "holdout": "10"},
                                        headers=HTMX)
    assert response.status_code == 200
    assert node_of(journey, "ab")["config"] == {"branches": [{"port": "control", "weight": 50},
                                                             {"port": "b", "weight": 50}], "holdout": 10}
    assert [e for e in draft_of(journey)["edges"] if e["from"] == "ab"] == [{"from": "ab", "port": "b", "to": "end"}]
    assert json.loads(response["HX-Trigger"])["journeyNodeSaved"]["ports"] == ["control", "b", "holdout"]


def test_each_node_type_saves_its_config(journey, marketer, topics):
    segment = segment_create(name="VIPs", static=True, actor="test")
    Action.objects.create(key="coupon", name="Apology coupon", accept_event="coupon_redeemed")
    Action.objects.create(key="callback", name="Call back", accept_event="called")
    cases = [
        ("trigger", {"kind": "segment_entered", "segment": str(segment.pk), "event": "ignored"},
         {"kind": "segment_entered", "segment": segment.pk}),
        ("trigger", {"kind": "date", "attr": "attributes.birthday", "offset_days": "-3", "at": "09:30"},
         {"kind": "date", "attr": "attributes.birthday", "offset_days": -3, "at": "09:30"}),
        ("trigger", {"kind": "event", "event": "cart_abandoned",
                     "where": json.dumps([{"prop": "total", "op": "gte", "value": 50}])},
         {"kind": "event", "event": "cart_abandoned", "where": [{"prop": "total", "op": "gte", "value": 50}]}),
        ("send", {"topic": "newsletter", "channel": "email", "A-email-subject": "Hi {{ first_name }}",
                  "A-email-html": "<p>Hello</p>"},
         {"topic": "newsletter", "channel": "email",
          "content": {"email": {"subject": "Hi {{ first_name }}", "preheader": "", "html": "<p>Hello</p>", "text": ""}}}),
        ("wait", {"kind": "time_of_day", "at": "10:00", "weekdays": ["0", "2"]},
         {"kind": "time_of_day", "at": "10:00", "weekdays": [0, 2]}),
        ("condition", {"context": json.dumps([{"path": "entry.total", "op": "gte", "value": 50}])},
         {"context": [{"path": "entry.total", "op": "gte", "value": 50}]}),
        ("nba", {"actions": ["callback", "coupon"], "holdout": "5"}, {"actions": ["callback", "coupon"], "holdout": 5}),
        ("update", {"kind": "attribute", "key": "vip", "value": "true"}, {"kind": "attribute", "key": "vip", "value": True}),
        ("update", {"kind": "subscription", "topic": "coupons", "channel": "sms", "subscribed": "false"},
         {"kind": "subscription", "topic": "coupons", "channel": "sms", "subscribed": False}),
        ("webhook", {"url": "https://crm.example.com/hook", "store_as": "crm", "retries": "0"},
         {"url": "https://crm.example.com/hook", "store_as": "crm", "retries": 0}),
        ("task", {"title": "Call back", "outcomes": "called, no_answer", "timeout_hours": "24"},
         {"title": "Call back", "outcomes": ["called", "no_answer"], "timeout_hours": 24}),
        ("exit", {"label": "Finished"}, {}),
    ]
    client = signed_in(marketer)
    for kind, data, config in cases:
        node_id = f"{kind}_node"
        journey.draft = {**cart_graph(), "nodes": [{"id": node_id, "type": kind, "label": "", "config": {}}]}
        journey.save()
        response = client.post(f"/journeys/{journey.pk}/nodes/{node_id}/", data, headers=HTMX)
        assert response.status_code == 200, (kind, response.content.decode())
        assert node_of(journey, node_id)["config"] == config, kind
        # What the form shows again is what was saved.
        again = client.post(f"/journeys/{journey.pk}/nodes/{node_id}/", {
            name: value for name, value in _form_values(client.get(f"/journeys/{journey.pk}/nodes/{node_id}/")).items()
        }, headers=HTMX)
        assert again.status_code == 200 and node_of(journey, node_id)["config"] == config, kind


def _form_values(response) -> dict:
    """What a browser would submit from the panel's form as rendered."""
    html = response.content.decode()
    values: dict = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        if not name or name.group(1) == "csrfmiddlewaretoken":
            continue
        kind = (re.search(r'type="([^"]+)"', tag) or [None, "text"])[1]
        value = re.search(r'value="([^"]*)"', tag)
        if kind == "checkbox":
            if " checked" in tag:
                values.setdefault(name.group(1), []).append(value.group(1))
        else:
            values[name.group(1)] = _unescape(value.group(1)) if value else ""
    for name, body in re.findall(r'<textarea name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        values[name] = _unescape(body.removeprefix("\n"))
    for name, options in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', options)
        values[name] = chosen.group(1) if chosen else ""
    return values


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


# --- The journey's settings ------------------------------------------------------------------------------


def test_the_settings_panel_saves_reentry_goal_exits_and_caps(journey, marketer, topics):
    segment = segment_create(name="Churned", static=True, actor="test")
    client = signed_in(marketer)
    url = f"/journeys/{journey.pk}/settings/"
    page = client.get(url, headers=HTMX).content.decode()
    assert 'name="reentry_mode"' in page and 'name="goal_event"' in page

    before = draft_of(journey)
    response = client.post(url, {"reentry_mode": "per_value", "reentry_property": ""}, headers=HTMX)
    assert response.status_code == 422
    assert errors_next_to(response.content.decode(), "reentry_property") == ["Must name a property of the trigger event."]
    assert draft_of(journey) == before

    response = client.post(url, {
        "reentry_mode": "after_exit", "cooldown_hours": "72", "goal_kind": "event", "goal_event": "order_completed",
        "exit_events": "account_closed, refund_requested", "exit_segments": [str(segment.pk)],
        "exit_unsubscribed": ["coupons"], "entries_per_day": "500",
    }, headers=HTMX)
    assert response.status_code == 200
    settings = draft_of(journey)["settings"]
    assert settings == {
        "reentry": {"mode": "after_exit", "cooldown_hours": 72},
        "goal": {"event": "order_completed"},
        "exits": [{"event": "account_closed"}, {"event": "refund_requested"}, {"segment_left": segment.pk},
                  {"unsubscribed": "coupons"}],
        "caps": {"entries_per_day": 500},
    }
    assert json.loads(response["HX-Trigger"]) == {"journeySettingsSaved": {"settings": settings}}
    assert draft_of(journey)["nodes"] == cart_graph()["nodes"]


# --- Validate ---------------------------------------------------------------------------------------------


def test_validate_lists_every_problem_by_node(journey, marketer):
    journey.draft = {**cart_graph(), "settings": {"reentry": {"mode": "sometimes"}}}
    journey.save()
    response = signed_in(marketer).post(f"/journeys/{journey.pk}/validate/", headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    found = graphs.problems(journey.draft)
    assert f"{len(found)} problems to fix before publishing" in page
    groups = re.findall(r'<li class="jb-problem-group" data-problem-node="([^"]*)">(.*?)</ul>\s*</li>', page, re.S)
    assert [node for node, _ in groups] == ["", "check", "ab"]
    journey_group, check_group, split_group = (body for _, body in groups)
    assert "Journey" in journey_group and "settings.reentry.mode" in journey_group
    assert "Condition <code>check</code>" in check_group
    assert "config.rule" in check_group and "The &#x27;yes&#x27; port is not connected" in check_group
    assert "Cannot be reached from the trigger" in check_group
    # Each problem selects its node when clicked.
    assert check_group.count('data-select-node="check"') == len([p for p in found if p.node == "check"])
    assert "Test <code>ab</code>" in split_group


def test_validate_says_when_the_draft_is_ready(topics, marketer):
    graph = cart_graph()
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] not in ("check", "ab")]
    graph["edges"] = [e for e in graph["edges"] if e["from"] != "ab"]
    journey = journey_create(name="Ready", graph=graph, actor="test")
    page = signed_in(marketer).post(f"/journeys/{journey.pk}/validate/", headers=HTMX).content.decode()
    assert "Ready to publish" in page and "No problems" in page
