"""A segment's full computation runs in the background: creating or editing answers at once,
the API and the page show progress, an edit supersedes a computation not yet written, and
nothing starts from a segment that is still computing."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from customers import timeline
from customers.models import Customer
from journeys.models import Enrollment
from segments import computation, services
from segments.models import Segment, SegmentMembership, SegmentPending
from tests.factories import CustomerFactory, segment_history
from tests.journeys.factories import live_version

pytestmark = pytest.mark.django_db(transaction=True)

EXPERTS = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}
LEADS = {"attr": "lifecycle_stage", "op": "eq", "value": "lead"}


@pytest.fixture(autouse=True)
def in_background(settings):
    """Every computation goes to the task queue, as it does with many customers."""
    settings.SEGMENT_COMPUTE_INLINE_CUSTOMERS = -1


@pytest.fixture
def people(db):
    return {
        "ada": CustomerFactory(external_id="ada", lifecycle_stage="expert"),
        "bob": CustomerFactory(external_id="bob", lifecycle_stage="expert"),
        "cyd": CustomerFactory(external_id="cyd", lifecycle_stage="lead"),
    }


def run_background_tasks() -> list[str]:
    """What a qcluster worker does: run the queued tasks, oldest first, until none is left."""
    from django_q.models import OrmQ

    ran = []
    while (queued := OrmQ.objects.order_by("id").first()) is not None:
        task = queued.task
        queued.delete()
        import_string(task["func"])(*task["args"], **task["kwargs"])
        ran.append(task["func"])
    return ran


def members(segment_id: int) -> set[str]:
    return set(SegmentMembership.objects.filter(segment_id=segment_id).values_list("customer__external_id", flat=True))


def segment_events(external_id: str) -> list[tuple[str, int]]:
    customer = Customer.objects.get(external_id=external_id)
    return [(event.name, event.properties["segment_id"]) for event in segment_history(customer)]


def test_the_api_answers_at_once_with_the_segment_computing_then_ready(api, people):
    created = api.post("/segments", {"name": "Experts", "rules": EXPERTS})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "computing" and body["member_count"] == 0 and body["computed_at"] is None
    assert body["progress"]["phase"] == "queued"
    assert members(body["id"]) == set()

    assert "segments.tasks.compute" in run_background_tasks()

    ready = api.get(f"/segments/{body['id']}").json()
    assert ready["status"] == "ready" and ready["progress"] is None
    assert ready["member_count"] == 2 and ready["computed_at"]
    assert members(body["id"]) == {"ada", "bob"}
    # Everyone who entered has it on their timeline.
    assert segment_events("ada") == [("segment.entered", body["id"])]
    assert segment_events("cyd") == []


def test_progress_is_estimated_from_the_last_computation(api, client, marketer, people):
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    run_background_tasks()
    # A recomputation that started 3 s ago, when the last one took 10 s.
    Segment.objects.filter(pk=segment.pk).update(
        status=Segment.Status.COMPUTING, compute_phase=Segment.Phase.EVALUATING, last_full_ms=10_000,
        compute_estimate_ms=10_000, compute_started_at=timezone.now() - timedelta(seconds=3),
    )
    progress = api.get(f"/segments/{segment.pk}").json()["progress"]
    assert progress["phase"] == "evaluating"
    assert 30 <= progress["percent"] <= 40 and 6 <= progress["seconds_left"] <= 7

    client.force_login(marketer)
    page = client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "Recomputing the members" in page and "Evaluating the rules" in page
    assert 'role="progressbar"' in page
    assert "About 7 s left" in page or "About 6 s left" in page
    # The page asks for the progress every second while it computes.
    assert f'hx-get="{reverse("segments:progress", args=[segment.pk])}?was=computing"' in page
    assert 'hx-trigger="every 1s"' in page
    # Until it is done, the poll answers the bar; once done, it tells the page to reload.
    polled = client.get(reverse("segments:progress", args=[segment.pk]), {"was": "computing"}, headers={"HX-Request": "true"})
    assert "progressbar" in polled.text and "HX-Refresh" not in polled.headers
    Segment.objects.filter(pk=segment.pk).update(status=Segment.Status.READY, compute_phase="")
    polled = client.get(reverse("segments:progress", args=[segment.pk]), {"was": "computing"}, headers={"HX-Request": "true"})
    assert polled.headers["HX-Refresh"] == "true"


def test_the_page_shows_a_new_segment_computing_and_then_its_members(client, marketer, people):
    client.force_login(marketer)
    response = client.post(reverse("segments:new"), {"name": "Experts", "kind": "dynamic", "description": "",
                                                     "rules": '{"attr": "lifecycle_stage", "op": "eq", "value": "expert"}'},
                           follow=True)
    page = response.content.decode()
    assert "its members are being computed" in page
    assert "Computing the members" in page and "Waiting for a worker" in page
    assert "Waiting for a background worker to start it" in page

    run_background_tasks()
    segment = Segment.objects.get(name="Experts")
    page = client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "Computing the members" not in page and "hx-trigger=\"every 1s\"" not in page
    assert 'data-stat="members">2<' in page


def test_an_edit_supersedes_a_computation_not_yet_written(api, people):
    segment = api.post("/segments", {"name": "S", "rules": EXPERTS}).json()
    # Before any worker got to it, the marketer changes the rules.
    edited = api.put(f"/segments/{segment['id']}", {"rules": LEADS}).json()
    assert edited["status"] == "computing"
    run_background_tasks()
    # The first computation stood down; only the new rules were ever applied.
    assert members(segment["id"]) == {"cyd"}
    assert segment_events("ada") == [] and segment_events("cyd") == [("segment.entered", segment["id"])]
    assert api.get(f"/segments/{segment['id']}").json()["status"] == "ready"


def test_a_stale_computation_run_late_writes_nothing(people):
    segment = services.segment_create(name="S", rules=EXPERTS, actor="t")
    old = Segment.objects.get(pk=segment.pk).generation
    services.segment_update(segment=segment, actor="t", rules=LEADS)
    run_background_tasks()
    assert members(segment.pk) == {"cyd"}
    # A worker that picked up the first request only now (a retry, a slow queue) does nothing.
    assert computation.segment_compute(segment_id=segment.pk, generation=old) is None
    assert members(segment.pk) == {"cyd"}
    # Running the current one again is harmless too.
    assert computation.segment_compute(segment_id=segment.pk, generation=old + 1) is None
    assert members(segment.pk) == {"cyd"}


def test_changes_while_computing_wait_for_the_computation_and_are_not_lost(people):
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    run_background_tasks()
    services.segment_recompute_now(segment=segment, actor="t")
    # Cyd becomes an expert while the segment is being recomputed.
    with timeline.batched():
        people["cyd"].lifecycle_stage = "expert"
        people["cyd"].save()
        timeline.changed(customer_ids=[people["cyd"].pk], fields=["lifecycle_stage"])
    assert members(segment.pk) == {"ada", "bob"}
    assert SegmentPending.objects.filter(segment_id=segment.pk, customer_id=people["cyd"].pk).exists()
    run_background_tasks()
    assert members(segment.pk) == {"ada", "bob", "cyd"}
    assert not SegmentPending.objects.exists()
    assert Segment.objects.get(pk=segment.pk).member_count == 3


def test_a_campaign_cannot_launch_from_a_segment_still_computing(api, people, topics):
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    created = api.post("/campaigns", {
        "name": "Launch day", "topic": "newsletter", "segment_ids": [segment.pk], "channels": ["email"],
        "content": {"email": {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi"}},
    })
    assert created.status_code == 201, created.content
    Segment.objects.filter(pk=segment.pk).update(compute_estimate_ms=40_000, compute_started_at=timezone.now(),
                                                 compute_phase=Segment.Phase.EVALUATING)
    refused = api.post(f"/campaigns/{created.json()['id']}/launch")
    assert refused.status_code == 400, refused.content
    (error,) = refused.json()["errors"]
    assert error["field"] == "segment_ids"
    assert "“Experts” is still being computed (ready in about 40 s)" in error["message"]
    assert api.get(f"/campaigns/{created.json()['id']}").json()["status"] == "draft"

    run_background_tasks()
    launched = api.post(f"/campaigns/{created.json()['id']}/launch")
    assert launched.status_code == 200, launched.content
    assert launched.json()["audience_size"] == 2


def test_a_journey_cannot_go_live_on_a_segment_still_computing(people):
    from core.errors import InputError
    from journeys import services as journeys
    from tests.journeys.factories import JourneyFactory

    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    graph = {"nodes": [{"id": "start", "type": "trigger", "label": "Enters",
                        "config": {"kind": "segment_entered", "segment": segment.pk}},
                       {"id": "end", "type": "exit", "label": "Exit", "config": {}}],
             "edges": [{"from": "start", "port": "out", "to": "end"}], "settings": {"reentry": {"mode": "once"}}}
    journey = JourneyFactory(draft=graph, status="draft")
    with pytest.raises(InputError) as refused:
        journeys.journey_publish(journey=journey, actor="t")
    assert "“Experts” is still being computed" in refused.value.errors[0].message
    run_background_tasks()
    assert journeys.journey_publish(journey=journey, actor="t").number == 1


def test_entries_of_a_background_recomputation_reach_a_live_journey(people):
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    run_background_tasks()
    graph = {"nodes": [{"id": "start", "type": "trigger", "label": "Enters",
                        "config": {"kind": "segment_entered", "segment": segment.pk}},
                       {"id": "wait", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}},
                       {"id": "end", "type": "exit", "label": "Exit", "config": {}}],
             "edges": [{"from": "start", "port": "out", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"}],
             "settings": {"reentry": {"mode": "once"}}}
    version = live_version(graph)
    services.segment_update(segment=segment, actor="t", rules={"any": [EXPERTS, LEADS]})
    run_background_tasks()
    (run,) = Enrollment.objects.filter(version=version)
    assert run.customer.external_id == "cyd"
    assert run.context["entry"] == {"segment_id": segment.pk, "segment": "Experts"}
    assert segment_events("cyd") == [("segment.entered", segment.pk)]


def test_who_leaves_in_a_recomputation_is_on_their_timeline_and_heard_by_the_stream(api, people):
    from customers.signals import customers_changed

    heard = []

    def listen(sender, change, **kwargs):
        heard.append(change)

    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    run_background_tasks()
    customers_changed.connect(listen)
    try:
        services.segment_update(segment=segment, actor="t", rules=LEADS)
        run_background_tasks()
    finally:
        customers_changed.disconnect(listen)
    assert members(segment.pk) == {"cyd"}
    ada, cyd = people["ada"].pk, people["cyd"].pk
    (change,) = [c for c in heard if c.memberships]
    assert change.memberships[("segment.exited", segment.pk)] == {ada, people["bob"].pk}
    assert change.memberships[("segment.entered", segment.pk)] == {cyd}
    assert {ada, cyd} <= change.by_name["segment.exited"] | change.by_name["segment.entered"]

    # The customer's timeline, through the API, newest first: left, then entered before.
    timeline = api.get(f"/customers/{ada}/timeline", category="segment").json()
    assert [(e["name"], e["properties"]["segment"]) for e in timeline["events"]] == [
        ("segment.exited", "Experts"), ("segment.entered", "Experts"),
    ]
    # Paging goes through the memberships' history like through any event.
    first = api.get(f"/customers/{ada}/timeline", limit=1).json()
    second = api.get(f"/customers/{ada}/timeline", limit=1, cursor=first["next_cursor"]).json()
    assert [e["name"] for e in first["events"] + second["events"]] == ["segment.exited", "segment.entered"]


def test_a_deleted_segment_stays_in_its_members_history_and_its_table_goes(people):
    from django.db import connection

    from segments import storage

    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    segment_id = segment.pk
    run_background_tasks()
    assert storage.attached(segment_id)
    services.segment_delete(segment=segment, actor="marketer")
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [storage.table_name(segment_id)])
        assert cursor.fetchone()[0] is None
    entered, left = segment_history(people["ada"])
    assert (entered.name, left.name, left.actor) == ("segment.entered", "segment.exited", "marketer")
    assert left.properties == {"segment_id": segment_id, "segment": "a deleted segment"}


def test_journeys_hear_entries_as_events_too(people):
    """A trigger on the event segment.entered (with a property filter), and a run waiting for it."""
    from journeys.models import EventWait
    from tests.journeys.factories import waiting_at

    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    run_background_tasks()
    on_event = {"nodes": [{"id": "start", "type": "trigger", "label": "Entered",
                           "config": {"kind": "event", "event": "segment.entered",
                                      "where": [{"prop": "segment_id", "op": "eq", "value": segment.pk}]}},
                          {"id": "wait", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}},
                          {"id": "end", "type": "exit", "label": "Exit", "config": {}}],
                "edges": [{"from": "start", "port": "out", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"}],
                "settings": {"reentry": {"mode": "once"}}}
    version = live_version(on_event)
    waiting = live_version({"nodes": [{"id": "start", "type": "trigger", "label": "API", "config": {"kind": "api"}},
                                      {"id": "until", "type": "wait", "label": "Until a lead",
                                       "config": {"kind": "event", "event": "segment.entered", "timeout_minutes": 600}},
                                      {"id": "end", "type": "exit", "label": "Exit", "config": {}}],
                            "edges": [{"from": "start", "port": "out", "to": "until"},
                                      {"from": "until", "port": "event", "to": "end"},
                                      {"from": "until", "port": "timeout", "to": "end"}],
                            "settings": {"reentry": {"mode": "once"}}})
    run = waiting_at(waiting, "until", customer=people["cyd"])
    EventWait.objects.create(enrollment=run, customer=people["cyd"], event="segment.entered", seq=run.seq, node="until")

    assert (run.node, run.status) == ("until", "waiting")
    # Widened rules let Cyd in.
    services.segment_update(segment=segment, actor="t", rules={"any": [EXPERTS, LEADS]})
    run_background_tasks()
    assert set(Enrollment.objects.filter(version=version).values_list("customer__external_id", flat=True)) == {"cyd"}
    run.refresh_from_db()
    assert (run.node, run.status) == ("end", "completed")


def test_an_exit_rule_on_one_segment_ignores_leaving_another(people):
    from tests.journeys.factories import waiting_at

    experts = services.segment_create(name="Experts", rules=EXPERTS, actor="t")
    leads = services.segment_create(name="Leads", rules=LEADS, actor="t")
    run_background_tasks()
    graph = {"nodes": [{"id": "start", "type": "trigger", "label": "API", "config": {"kind": "api"}},
                       {"id": "wait", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}},
                       {"id": "end", "type": "exit", "label": "Exit", "config": {}}],
             "edges": [{"from": "start", "port": "out", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"}],
             "settings": {"reentry": {"mode": "once"}, "exits": [{"segment_left": experts.pk}]}}
    version = live_version(graph)
    ada, cyd = waiting_at(version, "wait", customer=people["ada"]), waiting_at(version, "wait", customer=people["cyd"])

    # Cyd, never an expert, leaves Leads: her run goes on. Ada leaves Experts: hers ends.
    services.segment_update(segment=leads, actor="t", rules={"attr": "lifecycle_stage", "op": "eq", "value": "none"})
    services.segment_update(segment=experts, actor="t", rules={"attr": "external_id", "op": "eq", "value": "bob"})
    run_background_tasks()
    ada.refresh_from_db()
    cyd.refresh_from_db()
    assert (cyd.status, ada.status) == ("waiting", "exited")
