"""The journeys API through the real HTTP stack: what an engineer calling it sees."""

import copy
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from core.models import AuditEntry
from journeys import executor
from customers.models import Event
from journeys.models import Enrollment, Journey, JourneyVersion, NodeCounter, Step, WakeUp
from tests.factories import CustomerFactory, EventFactory

pytestmark = pytest.mark.django_db


def wait_graph(*, node="wait", label="Wait 2 days", minutes=2 * 24 * 60, reentry=None) -> dict:
    """An API trigger → a timed wait → an exit."""
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "From the CRM", "config": {"kind": "api"}, "x": 80, "y": 40},
            {"id": node, "type": "wait", "label": label, "config": {"kind": "duration", "minutes": minutes}},
            {"id": "end", "type": "exit", "label": "Done"},
        ],
        "edges": [{"from": "start", "port": "out", "to": node}, {"from": node, "port": "out", "to": "end"}],
        "settings": {"reentry": reentry or {"mode": "once"}},
    }


def create(api, name="Welcome", graph=None, **fields):
    response = api.post("/journeys", {"name": name, **({"graph": graph} if graph is not None else {}), **fields})
    assert response.status_code == 201, response.content
    return response.json()


def live(api, name="Welcome", graph=None):
    journey = create(api, name, graph if graph is not None else wait_graph())
    published = api.post(f"/journeys/{journey['id']}/publish", {})
    assert published.status_code == 201, published.content
    return journey["id"]


def enroll(api, journey_id, customer, **context):
    return api.post(f"/journeys/{journey_id}/enroll", {"customer": {"external_id": customer.external_id},
                                                        "context": context})


def fields(response) -> set[str]:
    return {error["field"] for error in response.json()["errors"]}


class Queries:
    """SQL statements run inside the block, counted at the cursor (a request resets Django's
    own query log when it starts, so CaptureQueriesContext cannot see across one)."""

    def __init__(self):
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        self.statements.append(sql)
        return execute(sql, params, many, context)

    def __enter__(self):
        self._wrapper = connection.execute_wrapper(self)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        self._wrapper.__exit__(*exc)

    def __len__(self) -> int:
        return len(self.statements)


def writes() -> int:
    """Rows inserted, updated or deleted so far in this test's transaction, in every table
    but the API keys' (a key's first use of the minute is recorded)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_xact_user_tables "
                       "WHERE relname <> 'customers_apikey'")
        return cursor.fetchone()[0]


# --- Creating, reading and changing ------------------------------------------------------------------


def test_create_read_and_list(api):
    journey = create(api, "Welcome", description="New sign-ups")
    assert journey["status"] == "draft" and journey["live_version"] is None and journey["versions"] == []
    # Without a graph, the draft is a trigger joined to an exit.
    assert [n["type"] for n in journey["draft"]["nodes"]] == ["trigger", "exit"]
    assert journey["counts"] == {"nodes": {}, "edges": {}, "conversion": {}}

    detail = api.get(f"/journeys/{journey['id']}").json()
    assert detail["name"] == "Welcome" and detail["description"] == "New sign-ups"

    listed = api.get("/journeys").json()
    assert listed == [{"id": journey["id"], "name": "Welcome", "status": "draft", "live_version": None,
                       "in_journey_now": 0, "entered_today": 0, "entered": 0, "converted": 0,
                       "goal_conversion_rate": None}]
    assert AuditEntry.objects.filter(action="journey.created", object_id=str(journey["id"])).exists()


def test_a_graph_is_stored_as_sent(api):
    graph = wait_graph()
    journey = create(api, graph=graph)
    assert journey["draft"] == graph
    assert Journey.objects.get(pk=journey["id"]).draft == graph


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 121}, "name"),
        ({"name": "J", "colour": "red"}, "colour"),
        ({"name": "J", "graph": {"nodes": [{"id": "a"}]}}, "graph.nodes[0].type"),
        ({"name": "J", "graph": {"nodes": [{"id": "a", "type": "teleport"}]}}, "graph.nodes[0].type"),
        ({"name": "J", "graph": {"nodes": [{"id": 7, "type": "exit"}]}}, "graph.nodes[0].id"),
        ({"name": "J", "graph": {"nodes": [{"id": "a b", "type": "exit"}]}}, "graph.nodes[0].id"),
        ({"name": "J", "graph": {"nodes": [], "edges": [{"from": "a", "port": "out"}]}}, "graph.edges[0].to"),
        ({"name": "J", "graph": {"nodes": "many"}}, "graph.nodes"),
        ({"name": "J", "graph": {"nodes": [], "layout": {}}}, "graph.layout"),
    ],
)
def test_bad_journeys_are_refused_by_field_and_nothing_is_written(api, body, field):
    before = writes()
    response = api.post("/journeys", body)
    assert response.status_code == 400, response.content
    assert field in fields(response), response.json()
    assert not Journey.objects.exists()
    assert writes() == before


def test_a_taken_name_is_refused(api):
    create(api, "Welcome")
    response = api.post("/journeys", {"name": "Welcome"})
    assert response.status_code == 400
    assert fields(response) == {"name"} and "already exists" in response.json()["errors"][0]["message"]
    assert Journey.objects.count() == 1


def test_update_changes_only_what_is_sent(api):
    journey = create(api, "Welcome", description="Old")
    changed = api.put(f"/journeys/{journey['id']}", {"description": "New", "graph": wait_graph()})
    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert body["name"] == "Welcome" and body["description"] == "New" and body["draft"] == wait_graph()
    renamed = api.put(f"/journeys/{journey['id']}", {"name": "Hello"}).json()
    assert renamed["name"] == "Hello" and renamed["draft"] == wait_graph()


def test_an_update_with_a_broken_graph_changes_nothing(api):
    journey = create(api, "Welcome", graph=wait_graph())
    create(api, "Other")
    before = writes()
    for body, field in [
        ({"name": "Renamed", "graph": {"nodes": [{"id": "a", "type": "nope"}]}}, "graph.nodes[0].type"),
        ({"name": "Other"}, "name"),
        ({"graph": {"edges": [{"from": "a", "to": "b", "port": 3}]}}, "graph.edges[0].port"),
    ]:
        response = api.put(f"/journeys/{journey['id']}", body)
        assert response.status_code == 400, response.content
        assert field in fields(response)
    assert writes() == before
    stored = Journey.objects.get(pk=journey["id"])
    assert stored.name == "Welcome" and stored.draft == wait_graph()


def test_unknown_journeys_are_a_json_404(api, customer):
    ref = {"customer": {"id": customer.pk}}
    for method, path, body in [
        ("get", "/journeys/999999", None),
        ("put", "/journeys/999999", {"name": "x"}),
        ("post", "/journeys/999999/validate", {}),
        ("post", "/journeys/999999/publish", {}),
        ("post", "/journeys/999999/pause", {}),
        ("post", "/journeys/999999/resume", {}),
        ("post", "/journeys/999999/stop", {}),
        ("post", "/journeys/999999/dry-run", {}),
        ("post", "/journeys/999999/test", ref),
        ("post", "/journeys/999999/enroll", ref),
        ("get", "/journeys/999999/enrollments", None),
        ("get", "/journeys/999999/export", None),
    ]:
        response = api.get(path) if method == "get" else getattr(api, method)(path, body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["message"] == "No journey has id 999999.", (method, path)
    assert api.get("/customers/999999/journeys").json()["message"] == "No customer has id 999999."


def test_without_a_key_every_endpoint_answers_401_and_writes_nothing(client, api, customer):
    journey_id = live(api)
    body = json.dumps({"name": "Sneaky", "customer": {"id": customer.pk}})
    before = writes()
    for method, path in [
        ("get", "/journeys"), ("post", "/journeys"), ("get", f"/journeys/{journey_id}"),
        ("put", f"/journeys/{journey_id}"), ("post", f"/journeys/{journey_id}/validate"),
        ("post", f"/journeys/{journey_id}/publish"), ("post", f"/journeys/{journey_id}/pause"),
        ("post", f"/journeys/{journey_id}/resume"), ("post", f"/journeys/{journey_id}/stop"),
        ("post", f"/journeys/{journey_id}/dry-run"), ("post", f"/journeys/{journey_id}/test"),
        ("post", f"/journeys/{journey_id}/enroll"), ("get", f"/journeys/{journey_id}/enrollments"),
        ("get", f"/customers/{customer.pk}/journeys"), ("get", f"/journeys/{journey_id}/export"),
        ("post", "/journeys/import"),
    ]:
        for headers in ({}, {"Authorization": "Bearer sb_not-a-key"}):
            if method == "get":
                response = client.get(f"/api/v1{path}", headers=headers)
            else:
                response = getattr(client, method)(f"/api/v1{path}", body, content_type="application/json",
                                                   headers=headers)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.json()["message"].startswith("Missing or invalid API key")
    assert writes() == before
    assert Journey.objects.get(pk=journey_id).status == "live"


# --- Validating and publishing ----------------------------------------------------------------------


def broken_graph() -> dict:
    graph = wait_graph()
    graph["nodes"][1]["config"] = {"kind": "duration", "minutes": 0}
    graph["nodes"].append({"id": "lost", "type": "exit", "label": "Nowhere"})
    graph["edges"] = graph["edges"][:1]  # the wait's "out" port is left unconnected
    return graph


def test_validate_names_every_problem_by_node_and_field(api):
    good = create(api, "Good", graph=wait_graph())
    assert api.post(f"/journeys/{good['id']}/validate").json() == {"valid": True, "problems": []}

    bad = create(api, "Bad", graph=broken_graph())
    before = writes()
    response = api.post(f"/journeys/{bad['id']}/validate")
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False
    found = {(p["node"], p["field"]) for p in body["problems"]}
    assert {("wait", "config.minutes"), ("wait", "ports.out"), ("lost", "in"), ("end", "in")} <= found, found
    assert writes() == before


def test_an_invalid_draft_is_not_published_and_every_problem_is_named(api):
    journey = create(api, graph=broken_graph())
    before = writes()
    for body in ({}, {"preview": True}):
        response = api.post(f"/journeys/{journey['id']}/publish", body)
        assert response.status_code == 400, response.content
        named = {"draft.nodes.wait.config.minutes", "draft.nodes.wait.ports.out", "draft.nodes.lost.in"}
        assert named <= fields(response), response.json()
    assert writes() == before
    assert not JourneyVersion.objects.exists() and Journey.objects.get(pk=journey["id"]).status == "draft"


def test_publish_makes_a_live_version_and_its_counts_show_who_is_where(api):
    journey = create(api, graph=wait_graph())
    published = api.post(f"/journeys/{journey['id']}/publish")
    assert published.status_code == 201, published.content
    body = published.json()
    assert body["status"] == "live" and body["lines"] == []
    assert body["version"]["number"] == 1 and body["version"]["live"] is True
    assert body["version"]["published_by"] == "api:tests"

    people = [CustomerFactory() for _ in range(3)]
    for person in people:
        assert enroll(api, journey["id"], person).status_code == 201

    detail = api.get(f"/journeys/{journey['id']}").json()
    assert detail["live_version"] == 1 and [v["number"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["in_flight"] == 3
    assert detail["counts"]["nodes"] == {
        "start": {"now": 0, "entered": 3}, "wait": {"now": 3, "entered": 3}, "end": {"now": 0, "entered": 0},
    }
    assert detail["counts"]["edges"] == {"start:out": 3, "wait:out": 0}

    # They leave the wait: the counts follow.
    executor.wake_due(now=timezone.now() + timedelta(days=3))
    counts = api.get(f"/journeys/{journey['id']}").json()["counts"]
    assert counts["nodes"]["wait"] == {"now": 0, "entered": 3}
    assert counts["nodes"]["end"] == {"now": 0, "entered": 3}
    assert counts["edges"]["wait:out"] == 3


def test_the_list_shows_each_journeys_figures_in_a_fixed_number_of_queries(api):
    first = live(api, "Abandoned cart")
    with Queries() as one:
        api.get("/journeys")
    assert len(one) == 2, one.statements  # the API key, the journeys with their figures

    goal = wait_graph()
    goal["settings"]["goal"] = {"event": "order_completed"}
    second = live(api, "Welcome", goal)
    create(api, "Draft only")
    people = [CustomerFactory() for _ in range(4)]
    for person in people:
        enroll(api, second, person)
    enroll(api, first, people[0])
    # One run reaches the goal.
    converted = Enrollment.objects.get(journey_id=second, customer=people[0])
    executor.end_enrollments([converted.pk], status="converted", reason="goal")
    # A run that began two days ago counts as entered, not as entered today.
    Enrollment.objects.filter(journey_id=second, customer=people[3]).update(
        entered_at=timezone.now() - timedelta(days=2))

    with Queries() as many:
        rows = api.get("/journeys").json()
    assert len(many) == len(one), many.statements
    by_name = {row["name"]: row for row in rows}
    assert [row["name"] for row in rows] == ["Abandoned cart", "Draft only", "Welcome"]
    assert by_name["Welcome"] == {"id": second, "name": "Welcome", "status": "live", "live_version": 1,
                                  "in_journey_now": 3, "entered_today": 3, "entered": 4, "converted": 1,
                                  "goal_conversion_rate": 0.25}
    assert by_name["Abandoned cart"]["in_journey_now"] == 1
    assert by_name["Abandoned cart"]["goal_conversion_rate"] is None  # no goal
    assert by_name["Draft only"]["live_version"] is None


def test_a_publish_preview_writes_nothing_and_the_publish_moves_waiting_customers(api):
    journey_id = live(api, graph=wait_graph(node="wait-2d", label="Wait 2 days", minutes=2 * 24 * 60))
    people = [CustomerFactory() for _ in range(3)]
    for person in people:
        assert enroll(api, journey_id, person).json()["node"] == "wait-2d"
    # They have waited 30 hours of the two days.
    waited_since = timezone.now() - timedelta(hours=30)
    Enrollment.objects.filter(journey_id=journey_id).update(updated_at=waited_since)
    WakeUp.objects.filter(enrollment__journey_id=journey_id).update(due_at=waited_since + timedelta(days=2))

    shorter = wait_graph(node="wait-1d", label="Wait 1 day", minutes=24 * 60)
    assert api.put(f"/journeys/{journey_id}", {"graph": shorter}).status_code == 200

    before = writes()
    preview = api.post(f"/journeys/{journey_id}/publish", {"migration": {"wait-2d": "wait-1d"}, "preview": True})
    assert preview.status_code == 200, preview.content
    assert preview.json()["lines"] == [{
        "version": 1, "node": "wait-2d", "label": "Wait 2 days", "waiting": 3, "action": "move",
        "target": "wait-1d", "target_label": "Wait 1 day",
        "sentence": "3 customers at 'Wait 2 days' will move to 'Wait 1 day'",
    }]
    default = api.post(f"/journeys/{journey_id}/publish", {"preview": True}).json()
    assert default["lines"][0]["action"] == "stay"
    assert default["lines"][0]["sentence"] == "3 customers at 'Wait 2 days' stay on version 1"
    assert writes() == before
    assert JourneyVersion.objects.filter(journey_id=journey_id).count() == 1

    published = api.post(f"/journeys/{journey_id}/publish", {"migration": {"wait-2d": "wait-1d"}})
    assert published.status_code == 201, published.content
    body = published.json()
    assert body["version"]["number"] == 2 and body["version"]["live"] is True
    assert [line["sentence"] for line in body["lines"]] == ["3 customers at 'Wait 2 days' will move to 'Wait 1 day'"]

    # They are at the new wait, on the new version, keeping the 30 hours already waited:
    # a one-day wait is over for them.
    moved = list(Enrollment.objects.filter(journey_id=journey_id).select_related("version", "wakeup"))
    assert {(e.version.number, e.node, e.status) for e in moved} == {(2, "wait-1d", "waiting")}
    assert all(e.wakeup.due_at <= timezone.now() for e in moved)
    detail = api.get(f"/journeys/{journey_id}").json()
    assert detail["counts"]["nodes"]["wait-1d"]["now"] == 3
    assert [(v["number"], v["in_flight"]) for v in detail["versions"]] == [(2, 3), (1, 0)]

    assert executor.wake_due() == 3
    assert set(Enrollment.objects.filter(journey_id=journey_id).values_list("status", "node")) == {("completed", "end")}


def test_a_publish_can_end_the_runs_of_those_waiting(api):
    journey_id = live(api)
    for person in [CustomerFactory(), CustomerFactory()]:
        enroll(api, journey_id, person)
    response = api.post(f"/journeys/{journey_id}/publish", {"migration": {"wait": "exit"}})
    assert response.status_code == 201
    assert response.json()["lines"][0]["sentence"] == "2 customers at 'Wait 2 days' will leave the journey"
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"exited"}


@pytest.mark.parametrize(
    "migration, field, words",
    [
        ({"wiat": "wait"}, "migration.wiat", "no published version"),
        ({"wait": "ghost"}, "migration.wait", "no node 'ghost'"),
        ({"wait": "start"}, "migration.wait", "back to the trigger"),
        ({"wait": 3}, "migration.wait", "string"),
    ],
)
def test_a_migration_naming_nodes_that_do_not_exist_is_refused(api, migration, field, words):
    journey_id = live(api)
    enroll(api, journey_id, CustomerFactory())
    before = writes()
    for preview in (True, False):
        response = api.post(f"/journeys/{journey_id}/publish", {"migration": migration, "preview": preview})
        assert response.status_code == 400, response.content
        errors = response.json()["errors"]
        assert any(e["field"] == field and words in e["message"] for e in errors), errors
    assert writes() == before


# --- Status ---------------------------------------------------------------------------------------------


def test_pause_resume_stop_and_what_each_status_refuses(api):
    journey = create(api, graph=wait_graph())
    for action in ("pause", "resume", "stop"):
        refused = api.post(f"/journeys/{journey['id']}/{action}")
        assert refused.status_code == 409, (action, refused.content)
        assert refused.json()["errors"][0]["field"] == "status"
        assert "draft" in refused.json()["message"]

    api.post(f"/journeys/{journey['id']}/publish")
    person = CustomerFactory()
    enroll(api, journey["id"], person)

    paused = api.post(f"/journeys/{journey['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert api.post(f"/journeys/{journey['id']}/pause").status_code == 409
    # A paused journey takes no entries: 409, and nobody enters.
    refused = enroll(api, journey["id"], CustomerFactory())
    assert refused.status_code == 409 and "not live" in refused.json()["message"]
    assert Enrollment.objects.count() == 1

    assert api.post(f"/journeys/{journey['id']}/resume").json()["status"] == "live"
    stopped = api.post(f"/journeys/{journey['id']}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert Enrollment.objects.get(customer=person).status == "exited"
    assert api.post(f"/journeys/{journey['id']}/resume").status_code == 409
    assert api.post(f"/journeys/{journey['id']}/stop").status_code == 409


# --- Entering ------------------------------------------------------------------------------------------


def test_enroll_by_external_id_email_or_id(api):
    journey_id = live(api)
    people = [CustomerFactory() for _ in range(3)]
    for ref in ({"external_id": people[0].external_id}, {"email": people[1].email.upper()}, {"id": people[2].pk}):
        response = api.post(f"/journeys/{journey_id}/enroll", {"customer": ref, "context": {"source": "crm"}})
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["enrolled"] is True and body["node"] == "wait" and body["status"] == "waiting"
        assert body["node_label"] == "Wait 2 days" and body["version"] == 1 and body["wake_at"]
        assert body["context"] == {"entry": {"source": "crm"}}
    assert {e.customer_id for e in Enrollment.objects.all()} == {p.pk for p in people}


def test_the_reentry_rule_refuses_with_a_reason(api):
    journey_id = live(api)
    person = CustomerFactory()
    assert enroll(api, journey_id, person).status_code == 201
    again = enroll(api, journey_id, person)
    assert again.status_code == 200
    assert again.json()["enrolled"] is False and "is in this journey now" in again.json()["reason"]

    Enrollment.objects.filter(customer=person).update(ended_at=timezone.now(), status="completed")
    once_more = enroll(api, journey_id, person).json()
    assert once_more["enrolled"] is False and "lets each customer in once" in once_more["reason"]
    assert Enrollment.objects.count() == 1


def test_a_journey_run_once_per_cart_needs_the_cart(api):
    graph = wait_graph(reentry={"mode": "per_value", "property": "cart_id"})
    journey_id = live(api, graph=graph)
    person = CustomerFactory()
    missing = enroll(api, journey_id, person)
    assert missing.status_code == 400 and fields(missing) == {"context.cart_id"}
    assert enroll(api, journey_id, person, cart_id="A1").status_code == 201
    assert enroll(api, journey_id, person, cart_id="B2").status_code == 201
    Enrollment.objects.filter(customer=person).update(ended_at=timezone.now(), status="completed")
    refused = enroll(api, journey_id, person, cart_id="A1").json()
    assert refused["enrolled"] is False and "one run per cart_id" in refused["reason"] and "'A1'" in refused["reason"]


def test_enroll_refuses_unknown_customers_and_bad_references(api):
    journey_id = live(api)
    unknown = api.post(f"/journeys/{journey_id}/enroll", {"customer": {"external_id": "nobody"}})
    assert unknown.status_code == 404
    assert unknown.json()["message"].startswith("No customer has external id 'nobody'")
    person = CustomerFactory()
    for body, field in [
        ({"customer": {"external_id": person.external_id, "email": person.email}}, "customer"),
        ({"customer": {}}, "customer"),
        ({}, "customer"),
        ({"customer": {"id": person.pk}, "context": [1]}, "context"),
        ({"customer": {"id": person.pk}, "extra": 1}, "extra"),
    ]:
        response = api.post(f"/journeys/{journey_id}/enroll", body)
        assert response.status_code == 400, (body, response.content)
        assert field in fields(response), (body, response.json())
    assert not Enrollment.objects.exists()


def test_enrolling_into_a_draft_is_a_conflict(api, customer):
    journey = create(api, graph=wait_graph())
    response = api.post(f"/journeys/{journey['id']}/enroll", {"customer": {"email": customer.email}})
    assert response.status_code == 409 and response.json()["errors"][0]["field"] == "journey"
    assert not Enrollment.objects.exists()


# --- Dry run and test mode -----------------------------------------------------------------------------


def test_a_dry_run_counts_who_would_enter_and_how_they_split_and_writes_nothing(api):
    graph = {
        "nodes": [
            {"id": "start", "type": "trigger", "config": {"kind": "event", "event": "signed_up"}},
            {"id": "ab", "type": "split", "label": "A or B",
             "config": {"branches": [{"port": "a", "weight": 50}, {"port": "b", "weight": 50}]}},
            {"id": "wait", "type": "wait", "config": {"kind": "duration", "minutes": 60}},
            {"id": "end", "type": "exit"},
        ],
        "edges": [
            {"from": "start", "port": "out", "to": "ab"}, {"from": "ab", "port": "a", "to": "wait"},
            {"from": "ab", "port": "b", "to": "end"}, {"from": "wait", "port": "out", "to": "end"},
        ],
        "settings": {"reentry": {"mode": "once"}},
    }
    journey = create(api, graph=graph)
    for _ in range(12):
        EventFactory(name="signed_up", properties={})
    EventFactory(name="signed_up", occurred_at=timezone.now() - timedelta(days=3))
    # The run happens in a transaction that is rolled back (PostgreSQL's write statistics
    # count rolled-back rows, so here the tables it would write are looked at).
    tables = (Enrollment, JourneyVersion, Step, WakeUp, NodeCounter, Event, AuditEntry)
    before = [model.objects.count() for model in tables]
    response = api.post(f"/journeys/{journey['id']}/dry-run")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["entering"] == 12 and body["simulated"] == 12
    assert "signed_up" in body["population"]
    assert body["edges"]["start:out"] == 12
    assert body["edges"].get("ab:a", 0) + body["edges"].get("ab:b", 0) == 12
    assert body["nodes"]["end"]["reached"] == 12
    assert [model.objects.count() for model in tables] == before
    assert not Enrollment.objects.exists() and not JourneyVersion.objects.exists()


def test_a_dry_run_of_an_invalid_draft_names_the_problems(api):
    journey = create(api, graph=broken_graph())
    response = api.post(f"/journeys/{journey['id']}/dry-run")
    assert response.status_code == 400 and "draft.nodes.wait.config.minutes" in fields(response)


def test_test_mode_sends_one_customer_through_the_draft(api, customer):
    journey = create(api, graph=wait_graph())
    response = api.post(f"/journeys/{journey['id']}/test",
                        {"customer": {"external_id": customer.external_id}, "context": {"plan": "pro"}})
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["test"] is True and run["node"] == "wait" and run["status"] == "waiting" and run["version"] == 0
    # The wait is shortened to seconds.
    assert run["wake_at"] and timezone.datetime.fromisoformat(run["wake_at"]) < timezone.now() + timedelta(minutes=1)
    # Test runs show only when asked for, and are never counted.
    assert api.get(f"/journeys/{journey['id']}/enrollments").json()["enrollments"] == []
    tests = api.get(f"/journeys/{journey['id']}/enrollments", test="true").json()["enrollments"]
    assert [e["id"] for e in tests] == [run["id"]]
    assert api.get("/journeys").json()[0]["entered"] == 0
    assert api.get(f"/customers/{customer.pk}/journeys").json() == []

    unknown = api.post(f"/journeys/{journey['id']}/test", {"customer": {"email": "nobody@example.com"}})
    assert unknown.status_code == 404 and "nobody@example.com" in unknown.json()["message"]
    broken = create(api, "Broken", graph=broken_graph())
    refused = api.post(f"/journeys/{broken['id']}/test", {"customer": {"id": customer.pk}})
    assert refused.status_code == 400 and "draft.nodes.wait.config.minutes" in fields(refused)


# --- Enrollments and a customer's journeys ---------------------------------------------------------------


def test_enrollments_page_by_cursor_and_filter_by_node_and_status(api):
    journey_id = live(api)
    people = [CustomerFactory() for _ in range(5)]
    for person in people:
        enroll(api, journey_id, person)
    done = Enrollment.objects.get(customer=people[0])
    executor.end_enrollments([done.pk], status="completed", reason="test")

    page = {"next_cursor": None}
    seen, pages = [], 0
    while pages == 0 or page["next_cursor"]:
        cursor = {"cursor": page["next_cursor"]} if page["next_cursor"] else {}
        with Queries() as queries:
            page = api.get(f"/journeys/{journey_id}/enrollments", limit=2, **cursor).json()
        # The API key, the journey, the page with its customers and timers, the versions' labels.
        assert len(queries) == 4, queries.statements
        seen += page["enrollments"]
        pages += 1
    assert pages == 3
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5
    first = seen[-1]
    assert first["customer"] == {"id": people[0].pk, "external_id": people[0].external_id, "email": people[0].email}
    assert first["status"] == "completed" and first["ended_at"] and first["wake_at"] is None
    assert {"entered_at", "updated_at", "context", "node", "node_label"} <= set(first)
    waiting = [e for e in seen if e["status"] == "waiting"]
    assert all(e["wake_at"] for e in waiting)

    at_wait = api.get(f"/journeys/{journey_id}/enrollments", node="wait", status="waiting").json()["enrollments"]
    assert {e["customer"]["id"] for e in at_wait} == {p.pk for p in people[1:]}
    completed = api.get(f"/journeys/{journey_id}/enrollments", status="completed").json()["enrollments"]
    assert [e["customer"]["id"] for e in completed] == [people[0].pk]
    assert api.get(f"/journeys/{journey_id}/enrollments", node="end").json()["enrollments"] == []


@pytest.mark.parametrize("params, field", [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "ZTA"}, "cursor"),  # "e0"
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"status": "lost"}, "status"),
])
def test_bad_enrollment_queries_are_refused(api, params, field):
    journey_id = live(api)
    response = api.get(f"/journeys/{journey_id}/enrollments", **params)
    assert response.status_code == 400, response.content
    assert field in fields(response)


def test_a_customers_journeys_with_their_steps(api):
    welcome = live(api, "Welcome")
    cart = live(api, "Cart", wait_graph(node="hold", label="Hold an hour", minutes=60,
                                         reentry={"mode": "per_value", "property": "cart_id"}))
    person = CustomerFactory()
    assert api.get(f"/customers/{person.pk}/journeys").json() == []
    enroll(api, welcome, person)
    enroll(api, cart, person, cart_id="A1")
    enroll(api, cart, person, cart_id="B2")
    executor.wake_due(now=timezone.now() + timedelta(hours=2))  # the carts' hour is up

    with Queries() as queries:
        response = api.get(f"/customers/{person.pk}/journeys")
    # The API key, the customer, the runs with their journeys, versions and timers, their steps.
    assert len(queries) == 4, queries.statements
    assert response.status_code == 200
    runs = response.json()
    assert len(runs) == 3
    by_journey = {}
    for run in runs:
        by_journey.setdefault(run["journey"]["name"], []).append(run)
    [waiting] = by_journey["Welcome"]
    assert waiting["journey"] == {"id": welcome, "name": "Welcome"} and waiting["version"] == 1
    assert waiting["node"] == "wait" and waiting["node_label"] == "Wait 2 days" and waiting["status"] == "waiting"
    assert waiting["ended_at"] is None and waiting["wake_at"]
    assert [(s["node"], s["label"], s["port"]) for s in waiting["steps"]] == [("start", "From the CRM", "out")]
    for run in by_journey["Cart"]:
        assert run["status"] == "completed" and run["node"] == "end" and run["ended_at"] and run["wake_at"] is None
        assert [(s["node"], s["label"], s["port"]) for s in run["steps"]] == [
            ("start", "From the CRM", "out"), ("hold", "Hold an hour", "out")]
        assert run["steps"][0]["at"] <= run["steps"][1]["at"]
    assert Step.objects.filter(enrollment__customer=person).count() == 5


# --- Export and import ---------------------------------------------------------------------------------


def test_export_then_import_makes_the_same_draft(api):
    journey_id = live(api, "Welcome")
    draft = wait_graph(node="wait-1d", label="Wait 1 day", minutes=1440)
    api.put(f"/journeys/{journey_id}", {"graph": draft, "description": "For new sign-ups"})

    exported = api.get(f"/journeys/{journey_id}/export")
    assert exported.status_code == 200
    document = exported.json()
    assert document == {"format": "switchboard.journey/1", "name": "Welcome", "description": "For new sign-ups",
                        "graph": draft}
    version_1 = api.get(f"/journeys/{journey_id}/export", version=1).json()
    assert version_1["graph"] == wait_graph()
    assert api.get(f"/journeys/{journey_id}/export", version=7).status_code == 404

    taken = api.post("/journeys/import", document)
    assert taken.status_code == 400 and fields(taken) == {"name"}

    copy_of = api.post("/journeys/import", {**document, "name": "Welcome (copy)"})
    assert copy_of.status_code == 201, copy_of.content
    imported = copy_of.json()
    assert imported["status"] == "draft" and imported["draft"] == draft and imported["problems"] == []
    assert imported["description"] == "For new sign-ups"
    assert api.get(f"/journeys/{imported['id']}/export").json() == {**document, "name": "Welcome (copy)"}


def test_an_import_names_what_must_be_fixed_and_refuses_other_documents(api):
    graph = wait_graph()
    graph["nodes"].insert(1, {"id": "hello", "type": "send", "label": "Hello",
                              "config": {"topic": "not-here", "channel": "sms", "content": {"sms": {"body": "Hi"}}}})
    graph["edges"] = [
        {"from": "start", "port": "out", "to": "hello"}, {"from": "hello", "port": "sent", "to": "wait"},
        {"from": "hello", "port": "suppressed", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"},
    ]
    document = {"format": "switchboard.journey/1", "name": "From elsewhere", "description": "", "graph": graph}
    imported = api.post("/journeys/import", document)
    assert imported.status_code == 201
    assert [(p["node"], p["field"]) for p in imported.json()["problems"]] == [("hello", "config.topic")]

    before = writes()
    for body, field in [
        ({**document, "format": "other/2", "name": "X"}, "format"),
        ({key: value for key, value in document.items() if key != "format"} | {"name": "Y"}, "format"),
        ({**document, "name": "Z", "graph": {"nodes": [{"type": "exit"}]}}, "graph.nodes[0].id"),
        ({**document, "name": "W", "version": 3}, "version"),
    ]:
        response = api.post("/journeys/import", body)
        assert response.status_code == 400, (body, response.content)
        assert field in fields(response)
    assert api.post("/journeys/import", raw="not json").status_code == 400
    assert writes() == before


def test_the_api_description_has_one_schema_per_name():
    """ninja names a schema in the OpenAPI description by its class name: two classes with one
    name would share a description, and one of them would be documented wrongly."""
    from pydantic import BaseModel

    from config.api import api
    from journeys import schemas

    def models(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from models(sub)

    ours = {cls.__name__ for cls in vars(schemas).values()
            if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == schemas.__name__}
    apps = ("customers.", "campaigns.", "segments.", "journeys.", "core.")
    elsewhere = {cls.__name__ for cls in models(BaseModel)
                 if cls.__module__.startswith(apps) and cls.__module__ != schemas.__name__}
    assert not ours & elsewhere
    described = api.get_openapi_schema()["components"]["schemas"]
    assert {"JourneyOut", "JourneyCountsOut", "EnrollmentOut", "JourneyGraphIn"} <= set(described)


def test_a_draft_with_config_of_the_wrong_shape_is_named_not_a_server_error(api, customer):
    shapes = [
        {"id": "ab", "type": "split", "config": {"branches": 5}},
        {"id": "ab", "type": "split", "config": {"branches": [{"port": "a", "weight": 1}], "holdout": "ten"}},
        {"id": "ab", "type": "nba", "config": {"actions": [["coupon"]]}},
        {"id": "ab", "type": "send", "config": {"topic": ["coupons"], "channel": "sms", "content": {}}},
        {"id": "ab", "type": "task", "config": {"outcomes": [["done"], ["done"]], "title": "Call"}},
    ]
    for node in shapes:
        graph = copy.deepcopy(wait_graph())
        graph["nodes"].append(node)
        journey = create(api, f"Shape {len(Journey.objects.all())}", graph=graph)
        for path in ("validate", "publish", "dry-run"):
            response = api.post(f"/journeys/{journey['id']}/{path}")
            assert response.status_code in (200, 400), (node, path, response.status_code)
