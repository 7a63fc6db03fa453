"""The journey pages: the list, the journey page with its live map and node panel, pause /
resume / stop, publish with the customers in flight, dry run, test mode, and the Journeys
card on the customer page."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from campaigns.models import Delivery
from journeys import executor
from journeys.models import Decision, Enrollment, Journey, JourneyVersion, WakeUp
from journeys.services import journey_draft_save
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.journeys.welcome import ingest, welcome_graph, welcome_journey

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}


@pytest.fixture
def journey(topics):
    return welcome_journey()


@pytest.fixture
def signed_up(journey, topics):
    """Three customers who signed up: ada (pro) and bob wait at "Wait 2 days"; cy ordered (the goal)."""
    people = {}
    for name, plan in (("ada", "pro"), ("bob", "basic"), ("cy", "basic")):
        people[name] = CustomerFactory(first_name=name.capitalize(), email=f"{name}@example.com", phone="")
        ingest(people[name], "signed_up", plan=plan)
    ingest(people["cy"], "order_completed", total=42)
    return people


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def map_data(response) -> dict:
    found = re.search(r'<script id="journey-map-data" type="application/json">(.*?)</script>',
                      response.content.decode(), re.S)
    return json.loads(found.group(1))


def table_counts() -> dict[str, int]:
    """Rows in the tables a dry run or a preview must not touch."""
    tables = ["journeys_enrollment", "journeys_journeyversion", "journeys_step", "journeys_wakeup",
              "journeys_nodecounter", "campaigns_delivery", "customers_event", "customers_auditentry"]
    counts = {}
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")
            counts[table] = cursor.fetchone()[0]
    return counts


# --- Who may see what -----------------------------------------------------------------------------


def marketing_pages(journey, customer):
    run = Enrollment.objects.filter(journey=journey).first()
    return [
        ("get", "/journeys/"),
        ("get", f"/journeys/{journey.pk}/"),
        ("get", f"/journeys/{journey.pk}/map/nodes/wait/"),
        ("get", f"/journeys/{journey.pk}/publish/"),
        ("post", f"/journeys/{journey.pk}/publish/"),
        ("post", f"/journeys/{journey.pk}/dry-run/"),
        ("get", f"/journeys/{journey.pk}/test/"),
        ("post", f"/journeys/{journey.pk}/test/"),
        ("get", f"/journeys/{journey.pk}/test/{run.pk}/"),
        ("post", f"/journeys/{journey.pk}/pause/"),
        ("post", f"/journeys/{journey.pk}/stop/"),
    ]


def test_marketing_pages_answer_marketers_and_refuse_support_and_outsiders(journey, marketer, support, outsider):
    customer = CustomerFactory()
    executor_run = Enrollment.objects.create(journey=journey, version=journey.live_version, customer=customer,
                                             node="wait", status="waiting", test=True, run_key="test:x")
    assert executor_run.pk
    pages = marketing_pages(journey, customer)
    for user in (support, outsider):
        client = signed_in(user)
        for method, url in pages:
            response = getattr(client, method)(url)
            assert response.status_code == 403, (user.username, method, url)
            assert "has no Switchboard role" in response.content.decode() or user is support
    anonymous = Client()
    for method, url in pages:
        assert getattr(anonymous, method)(url).status_code == 302, url
    journey.refresh_from_db()
    assert journey.status == "live"  # nobody refused paused or stopped it
    client = signed_in(marketer)
    for method, url in pages:
        if method == "get":
            assert client.get(url, headers=HTMX if "/map/" in url else {}).status_code == 200, url


def test_the_customer_card_is_for_support_and_marketers_only(signed_up, marketer, support, outsider):
    ada = signed_up["ada"]
    url = f"/journeys/customers/{ada.pk}/card/"
    for user in (marketer, support):
        response = signed_in(user).get(url, headers=HTMX)
        assert response.status_code == 200 and "Welcome series" in response.content.decode()
    assert signed_in(outsider).get(url, headers=HTMX).status_code == 403
    assert Client().get(url, headers=HTMX).status_code == 302


# --- The list --------------------------------------------------------------------------------------


def test_the_list_shows_each_journeys_figures_in_a_fixed_number_of_queries(
    signed_up, journey, marketer, django_assert_num_queries
):
    welcome_journey(name="Birthday", publish=False)
    client = signed_in(marketer)
    client.get("/journeys/")  # the session and the user's roles, once
    # Session, user, roles, and the journeys with all their figures in one statement.
    with django_assert_num_queries(4):
        response = client.get("/journeys/")
    page = response.content.decode()
    row = re.search(rf'<tr data-href="/journeys/{journey.pk}/".*?</tr>', page, re.S).group(0)
    assert 'data-status="live"' in row and "v1" in row
    assert re.search(r'data-stat="in-now">2<', row)  # ada and bob wait; cy converted
    assert re.search(r'data-stat="entered-today">3<', row)
    assert re.search(r'data-stat="conversion">33%', row) and "1/3" in row
    draft = re.search(r'<tr data-href="/journeys/\d+/" data-journey="\d+">\s*<td class="name-cell">\s*<a[^>]*>Birthday</a>.*?</tr>',
                      page, re.S).group(0)
    assert 'data-status="draft"' in draft and "not published" in draft


def test_a_new_journey_starts_empty_and_opens_in_the_builder(marketer, topics):
    response = signed_in(marketer).post("/journeys/", {"name": "Win-back"})
    journey = Journey.objects.get(name="Win-back")
    assert response.status_code == 302 and response["Location"] == f"/journeys/{journey.pk}/edit/"
    assert [node["type"] for node in journey.draft["nodes"]] == ["trigger", "exit"]
    response = signed_in(marketer).post("/journeys/", {"name": "Win-back"})
    assert response.status_code == 422 and "already exists" in response.content.decode()
    assert Journey.objects.filter(name="Win-back").count() == 1


# --- The journey page and its live map ----------------------------------------------------------------


def test_the_journey_page_draws_the_live_version_with_its_counts(signed_up, journey, marketer):
    response = signed_in(marketer).get(f"/journeys/{journey.pk}/")
    assert response.status_code == 200
    data = map_data(response)
    assert data["graph"] == journey.live_version.graph and data["socket"] == f"/ws/journeys/{journey.pk}/"
    counts = data["counts"]
    assert counts["nodes"]["wait"] == {"now": 2, "entered": 3}
    assert counts["nodes"]["start"]["entered"] == 3 and counts["nodes"]["check"]["now"] == 0
    assert counts["edges"]["start:out"] == 3 and counts["edges"]["welcome:suppressed"] == 3  # no SMS subscription
    # All three passed the welcome step; one of them then reached the goal.
    assert counts["conversion"]["welcome:suppressed"] == pytest.approx(1 / 3, abs=1e-3)
    page = response.content.decode()
    assert re.search(r'data-node-now="wait">2<', page)
    assert "Version 1" in page and 'action="/journeys/%d/pause/"' % journey.pk in page


def test_a_nodes_panel_charts_it_and_lists_who_is_there(signed_up, journey, marketer):
    client = signed_in(marketer)
    response = client.get(f"/journeys/{journey.pk}/map/nodes/wait/", headers=HTMX)
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page
    for person in ("ada", "bob"):
        assert f'href="/customers/{signed_up[person].pk}/"' in page
    assert f'href="/customers/{signed_up["cy"].pk}/"' not in page
    chart = json.loads(re.search(r'<script type="application/json" id="node-chart-data">(.*?)</script>', page, re.S)
                       .group(1))
    traces = {trace["name"]: trace for trace in chart["data"]}
    # All three arrived; nobody has left by its one port yet (cy's order ended her run there).
    assert sum(traces["Entered"]["y"]) == 3 and sum(traces["Left by out"]["y"]) == 0
    assert client.get(f"/journeys/{journey.pk}/map/nodes/nowhere/", headers=HTMX).status_code == 404
    # Without htmx: the journey page with the panel open.
    response = client.get(f"/journeys/{journey.pk}/map/nodes/wait/")
    assert response.status_code == 302 and response["Location"].endswith("?node=wait#node-panel")
    assert 'data-panel-node="wait"' in client.get(response["Location"]).content.decode()


def test_pause_resume_and_stop(signed_up, journey, marketer):
    client = signed_in(marketer)
    response = client.post(f"/journeys/{journey.pk}/pause/", follow=True)
    assert Journey.objects.get(pk=journey.pk).status == "paused" and "is paused" in response.content.decode()
    response = client.post(f"/journeys/{journey.pk}/pause/", follow=True)
    assert "cannot be paused" in response.content.decode()  # the service's refusal, shown
    client.post(f"/journeys/{journey.pk}/resume/")
    assert Journey.objects.get(pk=journey.pk).status == "live"
    page = client.get(f"/journeys/{journey.pk}/").content.decode()
    assert "Stop the journey" in page and "the 2 customers in it now leave at once" in page
    client.post(f"/journeys/{journey.pk}/stop/")
    assert Journey.objects.get(pk=journey.pk).status == "stopped"
    assert not Enrollment.objects.filter(journey=journey, ended_at__isnull=True).exists()
    assert client.get(f"/journeys/{journey.pk}/pause/").status_code == 405


# --- Publish --------------------------------------------------------------------------------------


def test_the_publish_page_lists_the_drafts_problems_and_will_not_publish(journey, marketer):
    graph = welcome_graph()
    graph["edges"] = [edge for edge in graph["edges"] if edge["from"] != "check"]
    journey_draft_save(journey=journey, graph=graph, actor="test")
    client = signed_in(marketer)
    page = client.get(f"/journeys/{journey.pk}/publish/").content.decode()
    # Both ports of "Pro plan?" unconnected, so neither exit can be reached.
    assert "4 problems to fix first" in page
    assert f'href="/journeys/{journey.pk}/edit/?node=check">Pro plan?</a>' in page
    assert f'href="/journeys/{journey.pk}/edit/?node=basic">Basic done</a>' in page
    assert re.search(r'<button type="submit" class="btn btn-primary btn-launch" name="action" value="publish" disabled', page)
    response = client.post(f"/journeys/{journey.pk}/publish/", {"action": "publish"})
    assert response.status_code == 422
    assert JourneyVersion.objects.filter(journey=journey, is_test=False).count() == 1


def test_the_preview_writes_nothing_and_publishing_moves_customers_as_chosen(signed_up, journey, marketer):
    journey_draft_save(journey=journey, graph=welcome_graph(wait_minutes=1440, wait_label="Wait 1 day"), actor="test")
    client = signed_in(marketer)
    page = client.get(f"/journeys/{journey.pk}/publish/").content.decode()
    row = re.search(r'<li class="migration-row" data-migrate-node="wait">.*?</li>\s*</ul>', page, re.S).group(0)
    assert "2 waiting" in row and 'value="stay" checked' in row
    assert re.search(r'<option value="wait" selected>Wait 1 day \(Wait\)</option>', row)  # the suggestion

    before = table_counts()
    choice = {"choice-wait": "move", "target-wait": "wait"}
    response = client.post(f"/journeys/{journey.pk}/publish/", {**choice, "action": "preview"}, headers=HTMX)
    assert response.status_code == 200
    assert "2 customers at &#x27;Wait 2 days&#x27; will move to &#x27;Wait 1 day&#x27;" in response.content.decode()
    assert table_counts() == before
    assert set(Enrollment.objects.filter(journey=journey, ended_at__isnull=True)
               .values_list("version__number", flat=True)) == {1}

    response = client.post(f"/journeys/{journey.pk}/publish/", {**choice, "action": "publish"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == f"/journeys/{journey.pk}/"
    assert "Version 2 is live. 2 customers at “Wait 2 days” moved to “Wait 1 day”." in page
    waiting = Enrollment.objects.filter(journey=journey, ended_at__isnull=True)
    assert {(e.version.number, e.node, e.status) for e in waiting} == {(2, "wait", "waiting")}
    # The day they have waited counts: "wait 1 day" releases them a day after they arrived.
    for enrollment in waiting:
        due = WakeUp.objects.get(enrollment=enrollment).due_at
        assert abs((due - enrollment.entered_at) - timedelta(days=1)) < timedelta(seconds=5)


def test_publishing_can_end_the_runs_waiting_at_a_node(signed_up, journey, marketer):
    journey_draft_save(journey=journey, graph=welcome_graph(wait_minutes=60, wait_label="Wait an hour"), actor="test")
    response = signed_in(marketer).post(f"/journeys/{journey.pk}/publish/",
                                        {"choice-wait": "exit", "target-wait": "wait", "action": "publish"}, follow=True)
    assert "2 customers at “Wait 2 days” left the journey" in response.content.decode()
    assert not Enrollment.objects.filter(journey=journey, ended_at__isnull=True).exists()
    assert Enrollment.objects.filter(journey=journey, status="exited").count() == 2


def test_a_move_needs_a_target(signed_up, journey, marketer):
    response = signed_in(marketer).post(f"/journeys/{journey.pk}/publish/",
                                        {"choice-wait": "move", "target-wait": "start", "action": "publish"})
    assert response.status_code == 422 and "cannot be moved back to the trigger" in response.content.decode()
    assert JourneyVersion.objects.filter(journey=journey, is_test=False).count() == 1


# --- Dry run --------------------------------------------------------------------------------------


def test_a_dry_run_shows_who_would_enter_and_how_they_split_and_writes_nothing(topics, marketer):
    draft = welcome_journey(name="Not yet live", publish=False)
    for name, plan in (("ann", "pro"), ("ben", "pro"), ("col", "basic")):
        customer = CustomerFactory(first_name=name, phone="+1415555%04d" % len(name + plan))
        SubscriptionFactory(customer=customer, topic=topics["coupons"], channel="sms")
        ingest(customer, "signed_up", plan=plan)
    client = signed_in(marketer)
    before = table_counts()
    response = client.post(f"/journeys/{draft.pk}/dry-run/", headers=HTMX)
    assert table_counts() == before
    page = response.content.decode()
    assert response.status_code == 200 and 'id="dry-run-result"' in page and "<html" not in page
    assert re.search(r"data-dry-run-entering>3<", page)
    assert "Customers with a signed_up event in the last 24 hours." in page
    assert "Nothing was sent or written" in page
    assert re.search(r'data-dry-port="check:yes">2<', page) and re.search(r'data-dry-port="check:no">1<', page)
    assert re.search(r'data-dry-port="welcome:sent">3<', page)


def test_a_dry_run_of_a_draft_with_problems_shows_them(journey, marketer):
    graph = welcome_graph()
    graph["nodes"][1]["config"]["topic"] = "no-such-topic"
    journey_draft_save(journey=journey, graph=graph, actor="test")
    page = signed_in(marketer).post(f"/journeys/{journey.pk}/dry-run/", headers=HTMX).content.decode()
    assert "The draft has 1 problem to fix before it can run." in page and "no-such-topic" in page
    assert "data-dry-run-entering" not in page


# --- Test mode -------------------------------------------------------------------------------------


def test_test_mode_sends_one_customer_through_the_draft_and_shows_the_path(journey, marketer, topics):
    ada = CustomerFactory(first_name="Ada", last_name="Tester", email="ada.tester@example.com", phone="+14155550199")
    SubscriptionFactory(customer=ada, topic=topics["coupons"], channel="sms")
    client = signed_in(marketer)
    page = client.get(f"/journeys/{journey.pk}/test/").content.decode()
    assert f"every wait lasts {settings.JOURNEY_TEST_WAIT_SECONDS} seconds" in page
    results = client.get(f"/journeys/{journey.pk}/test/", {"q": "ada.tester"}, headers=HTMX).content.decode()
    assert f'value="{ada.pk}"' in results and "Ada Tester" in results and "<html" not in results

    response = client.post(f"/journeys/{journey.pk}/test/", {"customer": "", "context": "{oops"})
    assert response.status_code == 422
    assert "Choose the customer" in response.content.decode() and "not valid JSON" in response.content.decode()
    assert not Enrollment.objects.filter(test=True).exists()

    response = client.post(f"/journeys/{journey.pk}/test/", {"customer": ada.pk, "context": '{"plan": "pro"}'})
    run = Enrollment.objects.get(journey=journey, test=True)
    assert response.status_code == 302 and response["Location"] == f"/journeys/{journey.pk}/test/{run.pk}/"
    assert run.node == "wait" and run.status == "waiting"
    page = client.get(response["Location"]).content.decode()
    assert 'data-step-node="start"' in page and 'data-step-node="welcome"' in page
    assert re.search(r'data-stat="node">Wait 2 days<', page)
    assert re.search(r'data-stat="wake">(in \d+ s|now)<', page)
    assert 'hx-trigger="every 2s"' in page
    delivery = Delivery.objects.get(idempotency_key__startswith=f"{run.pk}:")
    assert f'data-delivery="{delivery.pk}"' in page and delivery.provider == "sandbox"
    # Nothing of a test run reaches the live map.
    assert map_data(client.get(f"/journeys/{journey.pk}/"))["counts"]["nodes"]["wait"]["now"] == 0

    executor.wake_due(now=timezone.now() + timedelta(seconds=settings.JOURNEY_TEST_WAIT_SECONDS + 1))
    part = client.get(f"/journeys/{journey.pk}/test/{run.pk}/", headers=HTMX).content.decode()
    assert "<html" not in part and "hx-trigger" not in part  # ended: the page stops asking
    assert re.search(r'data-stat="status">Completed<', part) and re.search(r'data-stat="node">Pro done<', part)
    assert 'data-step-node="check"' in part


# --- The customer page's card -------------------------------------------------------------------------


def test_the_customer_card_shows_each_run_its_steps_and_next_wake_up(
    signed_up, journey, support, marketer, django_assert_num_queries
):
    ada = signed_up["ada"]
    run = Enrollment.objects.get(journey=journey, customer=ada)
    decision = Decision.objects.create(enrollment=run, journey_id=journey.pk, node="wait", customer=ada,
                                       idempotency_key="card-test")
    other = welcome_journey(name="Second welcome")
    Enrollment.objects.create(journey=other, version=other.live_version, customer=ada, node="basic",
                              status="completed", ended_at=timezone.now() - timedelta(days=3),
                              entered_at=timezone.now() - timedelta(days=4))
    client = signed_in(support)
    client.get(f"/journeys/customers/{ada.pk}/card/", headers=HTMX)
    # Session, user, roles, the customer, the runs (with journey and version), their steps,
    # their decisions.
    with django_assert_num_queries(7):
        response = client.get(f"/journeys/customers/{ada.pk}/card/", headers=HTMX)
    card = response.content.decode()
    runs = re.findall(r'<li data-enrollment="(\d+)"', card)
    assert runs[0] == str(run.pk) and len(runs) == 2  # in flight first
    assert "Welcome series" in card and f'href="/journeys/{journey.pk}/"' not in card  # no journey pages for support
    assert 'data-run-node="wait">Wait 2 days<' in card
    assert re.search(r"Next wake-up <strong>in 2 d</strong>", card)
    assert re.search(r"Signed up <code>out</code> → Welcome SMS", card)
    assert re.search(r"Welcome SMS <code>suppressed</code> → Wait 2 days", card)
    assert f'href="/journeys/decisions/{decision.pk}/"' in card
    marketer_card = signed_in(marketer).get(f"/journeys/customers/{ada.pk}/card/", headers=HTMX).content.decode()
    assert f'href="/journeys/{journey.pk}/"' in marketer_card
    # Asked for without htmx: the customer page, where the card loads itself.
    response = client.get(f"/journeys/customers/{ada.pk}/card/")
    assert response.status_code == 302 and response["Location"] == f"/customers/{ada.pk}/#customer-journeys"
    page = client.get(f"/customers/{ada.pk}/").content.decode()
    assert f'hx-get="/journeys/customers/{ada.pk}/card/"' in page


def test_test_runs_stay_off_the_customer_card(journey, marketer, topics):
    ada = CustomerFactory()
    signed_in(marketer).post(f"/journeys/{journey.pk}/test/", {"customer": ada.pk, "context": ""})
    assert Enrollment.objects.filter(customer=ada, test=True).exists()
    card = signed_in(marketer).get(f"/journeys/customers/{ada.pk}/card/", headers=HTMX).content.decode()
    assert "Not in any journey." in card
