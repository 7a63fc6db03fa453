"""Support tasks handed over by journeys: the queue, assigning, resolving with an outcome (which
moves the customer on in the journey), the timeline and the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEntry
from customers.models import Event
from journeys import executor
from journeys.models import Enrollment, Task
from journeys.task_services import task_resolve, tasks_announce, tasks_expire
from tests.factories import CustomerFactory, UserFactory
from tests.journeys.factories import live_version, support_task, task_graph, waiting_at

pytestmark = pytest.mark.django_db

QUEUE = reverse("journeys:tasks")


@pytest.fixture
def version():
    return live_version(task_graph(outcomes=("reached", "no_answer"),
                                   instructions="Call about the failed delivery.\nOffer a redelivery slot."),
                        name="Service recovery")


def waiting_task(version, *, customer=None, created_ago=timedelta(hours=1), **fields):
    enrollment = waiting_at(version, "call", customer=customer or CustomerFactory(),
                            context={"entry": {"order": "SO-1042"}})
    return support_task(enrollment, created_at=timezone.now() - created_ago,
                        due_at=timezone.now() - created_ago + timedelta(hours=48), **fields)


def signed_in(client, user):
    client.force_login(user)
    return client


def where(task) -> tuple[str, str]:
    enrollment = Enrollment.objects.get(pk=task.enrollment_id)
    return enrollment.node, enrollment.status


# --- The queue ------------------------------------------------------------------------------------


def test_support_sees_open_tasks_oldest_first_with_a_link_to_each_customer(client, support, version):
    waiting_task(version, customer=CustomerFactory(first_name="Grace", last_name="Hopper"),
                 created_ago=timedelta(minutes=5))
    older = waiting_task(version, customer=CustomerFactory(first_name="Ada", last_name="Lovelace"),
                         created_ago=timedelta(days=3))
    done = waiting_task(version, created_ago=timedelta(days=5))
    Task.objects.filter(pk=done.pk).update(status="resolved", outcome="reached", resolved_at=timezone.now())

    page = signed_in(client, support).get(QUEUE).content.decode()

    assert page.index("Ada Lovelace") < page.index("Grace Hopper") < page.index(f'id="task-{done.pk}"')
    assert reverse("customers:detail", args=[older.customer_id]) in page
    assert reverse("journeys:task", args=[older.pk]) in page
    assert "Call the customer back" in page and "Service recovery" in page
    assert page.count("Overdue") == 1  # the three-day-old task was due after 48 hours; the closed one is not
    assert page.count("Assign to me") == 2  # open and unassigned only


def test_marketers_see_the_queue_and_outsiders_are_refused(client, marketer, outsider, version):
    task = waiting_task(version)
    assert signed_in(client, marketer).get(QUEUE).status_code == 200
    client.logout()
    client.force_login(outsider)
    for response in (client.get(QUEUE), client.get(reverse("journeys:task", args=[task.pk])),
                     client.post(reverse("journeys:task_assign", args=[task.pk])),
                     client.post(reverse("journeys:task", args=[task.pk]), {"outcome": "reached"})):
        assert response.status_code == 403
        assert "has no Switchboard role" in response.content.decode()
    task.refresh_from_db()
    assert task.status == "open" and task.assignee is None
    client.logout()
    assert client.get(QUEUE).status_code == 302  # to sign in


def test_the_filters_show_mine_unassigned_and_resolved(client, support, version):
    colleague = UserFactory(username="colleague")
    mine = waiting_task(version, assignee=support, title="Mine")
    theirs = waiting_task(version, assignee=colleague, title="Theirs")
    nobody = waiting_task(version, title="Nobody's")
    closed = waiting_task(version, title="Closed")
    Task.objects.filter(pk=closed.pk).update(status="resolved", outcome="no_answer", resolved_at=timezone.now())
    signed_in(client, support)

    def shown(show):
        page = client.get(QUEUE, {"show": show}).content.decode()
        return {task.title for task in (mine, theirs, nobody, closed) if f'id="task-{task.pk}"' in page}

    assert shown("mine") == {"Mine"}
    assert shown("unassigned") == {"Nobody's"}
    assert shown("resolved") == {"Closed"}
    assert shown("all") == {"Mine", "Theirs", "Nobody's", "Closed"}
    assert "No answer" in client.get(QUEUE, {"show": "resolved"}).content.decode()
    # htmx asks for the results only.
    partial = client.get(QUEUE, {"show": "mine"}, headers={"HX-Request": "true"}).content.decode()
    assert 'id="results"' in partial and "<html" not in partial


def test_the_queue_takes_the_same_number_of_queries_for_many_tasks(client, support, version,
                                                                  django_assert_num_queries):
    signed_in(client, support)
    waiting_task(version)
    with django_assert_num_queries(5) as few:
        client.get(QUEUE)
    colleague = UserFactory(username="colleague")  # one: hashing a password is slow
    for _ in range(10):
        waiting_task(version, assignee=colleague)
    with django_assert_num_queries(len(few.captured_queries)):
        client.get(QUEUE)


# --- Assigning --------------------------------------------------------------------------------------


def test_assign_to_me_from_the_queue(client, support, version):
    task = waiting_task(version)
    signed_in(client, support)
    response = client.post(reverse("journeys:task_assign", args=[task.pk]), {"from": "queue"},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="task-{task.pk}"' in html and "<strong>You</strong>" in html and "assigned to you" in html
    task.refresh_from_db()
    assert task.assignee == support
    entry = AuditEntry.objects.get(action="journey_task.assigned")
    assert (entry.actor, entry.object_id, entry.details["assignee"]) == ("support", str(task.pk), "support")
    assert f'id="task-{task.pk}"' in client.get(QUEUE, {"show": "mine"}).content.decode()


def test_assign_to_me_from_the_task_page_takes_it_from_a_colleague(client, support, version):
    task = waiting_task(version, assignee=UserFactory(username="colleague"))
    response = signed_in(client, support).post(reverse("journeys:task_assign", args=[task.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("journeys:task", args=[task.pk])
    task.refresh_from_db()
    assert task.assignee == support
    assert AuditEntry.objects.get(action="journey_task.assigned").details["previous"] == "colleague"


# --- Resolving --------------------------------------------------------------------------------------


def test_the_task_page_shows_the_instructions_the_customer_and_the_outcomes(client, support, version):
    customer = CustomerFactory(first_name="Ada", last_name="Lovelace", email="ada@example.com", phone="+14155550100")
    task = waiting_task(version, customer=customer)
    page = signed_in(client, support).get(reverse("journeys:task", args=[task.pk])).content.decode()
    assert "Call about the failed delivery.<br>Offer a redelivery slot." in page
    assert "ada@example.com" in page and "+14155550100" in page
    assert reverse("customers:detail", args=[customer.pk]) in page
    assert 'name="outcome" value="reached"' in page and 'name="outcome" value="no_answer"' in page
    assert "No answer" in page
    assert "SO-1042" in page  # what the journey knows


@pytest.mark.parametrize("outcome", ["maybe", "", "timeout"])
def test_an_outcome_the_task_does_not_offer_is_refused_inline_and_changes_nothing(client, support, version, outcome):
    task = waiting_task(version)
    events_before = Event.objects.count()
    response = signed_in(client, support).post(reverse("journeys:task", args=[task.pk]),
                                               {"outcome": outcome, "note": "Spoke to her husband"})
    assert response.status_code == 422
    page = response.content.decode()
    assert 'class="field-error"' in page and "Choose an outcome" in page and "Reached, No answer" in page
    assert "Spoke to her husband" in page  # what was typed is kept
    task.refresh_from_db()
    assert (task.status, task.outcome, task.note, task.resolved_at) == ("open", "", "", None)
    assert Event.objects.count() == events_before
    assert not AuditEntry.objects.filter(action="journey_task.resolved").exists()
    assert where(task) == ("call", "waiting")


def test_an_htmx_refusal_answers_the_form_alone(client, support, version):
    task = waiting_task(version)
    response = signed_in(client, support).post(reverse("journeys:task", args=[task.pk]), {"outcome": "maybe"},
                                               headers={"HX-Request": "true"})
    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="task"') and "Choose an outcome" in html


def test_resolving_writes_the_timeline_and_the_audit_and_moves_the_journey_on(client, support, version):
    task = waiting_task(version)
    response = signed_in(client, support).post(reverse("journeys:task", args=[task.pk]),
                                               {"outcome": "reached", "note": "  Redelivery booked for Friday  "})
    assert response.status_code == 302
    task.refresh_from_db()
    assert (task.status, task.outcome, task.note, task.resolved_by) == (
        "resolved", "reached", "Redelivery booked for Friday", "support")
    assert task.resolved_at is not None

    event = Event.objects.get(customer_id=task.customer_id, name="journey.task_resolved")
    assert event.category == "journey" and event.actor == "support" and event.source == "support"
    assert event.properties["outcome"] == "reached"
    assert event.properties["note"] == "Redelivery booked for Friday"
    assert event.properties["task"] == "Call the customer back" and event.properties["journey"] == "Service recovery"

    entry = AuditEntry.objects.get(action="journey_task.resolved")
    assert (entry.actor, entry.object_type, entry.object_id, entry.details["outcome"]) == (
        "support", "journey_task", str(task.pk), "reached")

    # The journey went on by the "reached" branch, with the outcome in its context.
    enrollment = Enrollment.objects.get(pk=task.enrollment_id)
    assert (enrollment.node, enrollment.status) == ("after-reached", "waiting")
    assert enrollment.context["task"] == {"outcome": "reached", "note": "Redelivery booked for Friday"}
    assert enrollment.steps.get(node="call").port == "reached"

    page = client.get(response["Location"]).content.decode()
    assert "the journey goes on by that branch" in page
    assert "Redelivery booked for Friday" in page and 'name="outcome"' not in page


def test_resolving_with_htmx_answers_the_resolved_task_and_the_notice(client, support, version):
    task = waiting_task(version)
    response = signed_in(client, support).post(reverse("journeys:task", args=[task.pk]), {"outcome": "no_answer"},
                                               headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-status="resolved"' in html and 'id="flash"' in html and "No answer" in html
    assert where(task) == ("after-no_answer", "waiting")


def test_a_task_is_resolved_once(client, support, version):
    task = waiting_task(version)
    signed_in(client, support)
    url = reverse("journeys:task", args=[task.pk])
    client.post(url, {"outcome": "reached"})
    response = client.post(url, {"outcome": "no_answer", "note": "again"})
    assert response.status_code == 422
    assert "This task is already resolved" in response.content.decode()
    task.refresh_from_db()
    assert (task.outcome, task.note) == ("reached", "")
    assert Event.objects.filter(name="journey.task_resolved").count() == 1
    assert where(task) == ("after-reached", "waiting")


def test_a_note_that_is_too_long_is_refused(version, support):
    from core.errors import InputError

    task = waiting_task(version)
    with pytest.raises(InputError) as refused:
        task_resolve(task=task, outcome="reached", note="x" * 5001, actor="support")
    assert [e.field for e in refused.value.errors] == ["note"]
    task.refresh_from_db()
    assert task.status == "open"


def test_resolving_after_the_customer_left_the_journey_records_the_outcome_only(version):
    task = waiting_task(version)
    Enrollment.objects.filter(pk=task.enrollment_id).update(status="exited", ended_at=timezone.now())
    assert task_resolve(task=task, outcome="reached", note="", actor="support") is False
    task.refresh_from_db()
    assert task.status == "resolved"
    assert where(task) == ("call", "exited")


# --- With the executor: created, announced, timed out ----------------------------------------------------


def test_a_customer_reaching_the_node_gets_a_task_on_the_timeline_and_the_timeout_expires_it(version):
    customer = CustomerFactory()
    start = timezone.now()
    (enrollment_id,) = executor.enter(journey=version.journey, version=version,
                                      entries=[executor.Entry(customer.pk, {"order": "SO-7"})], now=start)
    task = Task.objects.get(enrollment_id=enrollment_id)
    assert (task.status, task.title, task.outcomes) == ("open", "Call the customer back", ["reached", "no_answer"])
    created = Event.objects.get(customer=customer, name="journey.task_created")
    assert created.properties["task_id"] == task.pk and created.properties["journey"] == "Service recovery"
    # Announcing again writes nothing more.
    assert tasks_announce([task.pk]) == 0

    executor.wake_due(now=start + timedelta(hours=49))
    task.refresh_from_db()
    assert task.status == "expired"
    assert where(task) == ("after-timeout", "waiting")
    from core.errors import InputError

    with pytest.raises(InputError):
        task_resolve(task=task, outcome="reached", note="too late", actor="support")


def test_tasks_expire_closes_the_open_tasks_of_enrollments_with_a_timeline_entry(version):
    first, second, other = waiting_task(version), waiting_task(version), waiting_task(version)
    assert tasks_expire([first.enrollment_id, second.enrollment_id], timezone.now()) == 2
    assert tasks_expire([first.enrollment_id], timezone.now()) == 0
    assert dict(Task.objects.values_list("pk", "status")) == {first.pk: "expired", second.pk: "expired",
                                                               other.pk: "open"}
    assert Event.objects.filter(name="journey.task_expired").count() == 2


def test_tasks_of_test_runs_stay_off_the_timeline(version):
    enrollment = waiting_at(version, "call", test=True)
    task = support_task(enrollment)
    assert tasks_announce([task.pk]) == 0
    task_resolve(task=task, outcome="reached", note="", actor="marketer")
    assert not Event.objects.filter(name__startswith="journey.task").exists()
    assert Enrollment.objects.get(pk=enrollment.pk).node == "after-reached"
