"""Each node type, goals and exit rules, re-entry, caps and versions, run through the
executor with real rows and the real event paths."""

import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Delivery
from customers.models import Customer, Event, Subscription
from journeys import executor
from journeys.models import Enrollment, JourneyVersion, NodeCounter, Step, WakeUp
from journeys import services
from journeys.services import dry_run, journey_create, journey_enroll, journey_publish, journey_stop, migration_preview
from segments.services import segment_create
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.journeys.test_executor import ingest

pytestmark = pytest.mark.django_db(transaction=True)


def chain(*nodes, edges=None, settings=None, trigger=None):
    """A graph: an API trigger, then ``nodes`` joined by their first port, each other port
    (and the last node) to an exit."""
    start = {"id": "start", "type": "trigger", "label": "Start", "config": trigger or {"kind": "api"}}
    exit_node = {"id": "end", "type": "exit", "label": "End", "config": {}}
    all_nodes = [start, *nodes, exit_node]
    if edges is None:
        from journeys.graph import ports

        edges = []
        for here, there in zip(all_nodes, all_nodes[1:]):
            for index, port in enumerate(ports(here)):
                edges.append({"from": here["id"], "port": port, "to": there["id"] if index == 0 else "end"})
    return {"nodes": all_nodes, "edges": edges, "settings": settings or {"reentry": {"mode": "after_exit"}}}


def live(graph, name="J"):
    journey = journey_create(name=name, graph=graph, actor="test")
    journey_publish(journey=journey, actor="test")
    journey.refresh_from_db()
    return journey


def path(enrollment):
    return list(Step.objects.filter(enrollment=enrollment).order_by("id").values_list("node", "port"))


def test_duration_wait_sleeps_until_due_then_moves_on(topics):
    journey = live(chain({"id": "w", "type": "wait", "label": "Wait 2 days",
                          "config": {"kind": "duration", "minutes": 2880}}))
    customer = CustomerFactory()
    enrollment = journey_enroll(journey=journey, customer=customer, context={}, actor="test")
    assert enrollment.status == "waiting" and enrollment.node == "w"
    wake = WakeUp.objects.get(enrollment=enrollment)
    assert abs((wake.due_at - enrollment.entered_at) - timedelta(days=2)) < timedelta(seconds=5)
    assert executor.wake_due(now=timezone.now() + timedelta(days=1)) == 0
    assert executor.wake_due(now=timezone.now() + timedelta(days=2, minutes=1)) == 1
    enrollment.refresh_from_db()
    assert enrollment.status == "completed" and path(enrollment) == [("start", "out"), ("w", "out"), ("end", "")] or \
        path(enrollment) == [("start", "out"), ("w", "out")]


def test_time_of_day_wait_uses_the_customers_timezone(topics):
    journey = live(chain({"id": "w", "type": "wait", "label": "Next 09:00",
                          "config": {"kind": "time_of_day", "at": "09:00"}}))
    tokyo = CustomerFactory(timezone="Asia/Tokyo")
    enrollment = journey_enroll(journey=journey, customer=tokyo, context={}, actor="test")
    due = WakeUp.objects.get(enrollment=enrollment).due_at
    from zoneinfo import ZoneInfo

    local = due.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (9, 0)
    assert timedelta(0) < due - timezone.now() <= timedelta(days=1)


def test_condition_reads_the_profile_and_the_entry_context(topics):
    condition = {"id": "big", "type": "condition", "label": "Big VIP cart?",
                 "config": {"rule": {"attr": "lifecycle_stage", "op": "eq", "value": "vip"},
                            "context": [{"path": "entry.total", "op": "gte", "value": 100}]}}
    graph = chain(condition, edges=[
        {"from": "start", "port": "out", "to": "big"},
        {"from": "big", "port": "yes", "to": "end"},
        {"from": "big", "port": "no", "to": "end"},
    ])
    journey = live(graph)
    vip, other = CustomerFactory(lifecycle_stage="vip"), CustomerFactory(lifecycle_stage="new")
    runs = {
        "vip big": journey_enroll(journey=journey, customer=vip, context={"total": 150}, actor="t"),
        "vip small": None,
        "other big": journey_enroll(journey=journey, customer=other, context={"total": 500}, actor="t"),
    }
    assert path(runs["vip big"])[1] == ("big", "yes")
    assert path(runs["other big"])[1] == ("big", "no")
    runs["vip small"] = journey_enroll(journey=journey, customer=vip, context={"total": 20}, actor="t")
    assert path(runs["vip small"])[1] == ("big", "no")


def test_random_split_is_stable_and_keeps_a_holdout(topics):
    split = {"id": "s", "type": "split", "label": "A/B",
             "config": {"branches": [{"port": "a", "weight": 50}, {"port": "b", "weight": 50}], "holdout": 10}}
    graph = chain(split, edges=[
        {"from": "start", "port": "out", "to": "s"},
        {"from": "s", "port": "a", "to": "end"}, {"from": "s", "port": "b", "to": "end"},
        {"from": "s", "port": "holdout", "to": "end"},
    ])
    journey = live(graph)
    customers = [CustomerFactory() for _ in range(300)]
    version = journey.live_version
    with connection.cursor():
        from django.db import transaction

        with transaction.atomic():
            executor.enter(journey=journey, version=version, entries=[executor.Entry(c.pk) for c in customers])
    ports = dict(Step.objects.filter(node="s").values_list("enrollment__customer_id", "port"))
    counts = {port: list(ports.values()).count(port) for port in ("a", "b", "holdout")}
    assert 10 <= counts["holdout"] <= 60 and counts["a"] > 80 and counts["b"] > 80
    # The same customers, again: the same ports.
    with transaction.atomic():
        executor.enter(journey=journey, version=version, entries=[executor.Entry(c.pk) for c in customers])
    again = {}
    for customer_id, port in Step.objects.filter(node="s").order_by("id").values_list("enrollment__customer_id", "port"):
        again.setdefault(customer_id, []).append(port)
    assert all(len(set(p)) == 1 and len(p) == 2 for p in again.values())


def test_update_profile_changes_the_customer_and_segments_follow(topics):
    segment = segment_create(name="Promoted", rules={"attr": "lifecycle_stage", "op": "eq", "value": "promoted"},
                             actor="test")
    update = {"id": "u", "type": "update", "label": "Promote",
              "config": {"kind": "lifecycle_stage", "value": "promoted"}}
    attribute = {"id": "a", "type": "update", "label": "Mark", "config": {"kind": "attribute", "key": "tier",
                                                                           "value": 3}}
    subscribe = {"id": "s", "type": "update", "label": "Subscribe",
                 "config": {"kind": "subscription", "topic": "coupons", "channel": "sms", "subscribed": True}}
    journey = live(chain(update, attribute, subscribe))
    customer = CustomerFactory(lifecycle_stage="new")
    journey_enroll(journey=journey, customer=customer, context={}, actor="t")
    customer.refresh_from_db()
    assert customer.lifecycle_stage == "promoted" and customer.attributes["tier"] == 3
    assert Subscription.objects.get(customer=customer, topic=topics["coupons"], channel="sms").subscribed
    assert segment.memberships.filter(customer=customer).exists()
    updated = Event.objects.filter(customer=customer, name="customer.updated").count()
    assert updated == 2


def test_send_goes_through_the_policy_and_a_suppressed_send_takes_its_own_port(topics):
    send = {"id": "m", "type": "send", "label": "Coupon",
            "config": {"topic": "coupons", "channel": "preferred",
                       "content": {"sms": {"body": "10% off"}, "email": {"subject": "10% off", "html": "<p>Hi</p>"}}}}
    graph = chain(send, edges=[
        {"from": "start", "port": "out", "to": "m"},
        {"from": "m", "port": "sent", "to": "end"},
        {"from": "m", "port": "suppressed", "to": "end"},
    ])
    journey = live(graph)
    subscribed = CustomerFactory(phone="+14155550123", email="a@example.com")
    SubscriptionFactory(customer=subscribed, topic=topics["coupons"], channel="sms", subscribed=True)
    stranger = CustomerFactory(phone="+14155550124", email="b@example.com")
    first = journey_enroll(journey=journey, customer=subscribed, context={}, actor="t")
    second = journey_enroll(journey=journey, customer=stranger, context={}, actor="t")
    assert path(first)[1] == ("m", "sent")
    assert path(second)[1] == ("m", "suppressed")
    delivery = Delivery.objects.get(customer=subscribed)
    assert (delivery.channel, delivery.status, delivery.journey_id, delivery.journey_step) == (
        "sms", "planned", journey.pk, "m")
    assert Delivery.objects.get(customer=stranger).reason == "not_subscribed"


def test_goal_converts_and_exit_rules_end_without_one(topics):
    buyer, closer, leaver, quitter = (CustomerFactory(lifecycle_stage="active") for _ in range(4))
    segment = segment_create(name="Active", rules={"attr": "lifecycle_stage", "op": "eq", "value": "active"},
                             actor="test")
    wait = {"id": "w", "type": "wait", "label": "Wait a week", "config": {"kind": "duration", "minutes": 10080}}
    journey = live(chain(wait, settings={
        "reentry": {"mode": "after_exit"},
        "goal": {"event": "order_completed"},
        "exits": [{"event": "account_closed"}, {"segment_left": segment.pk}, {"unsubscribed": "newsletter"}],
    }))
    SubscriptionFactory(customer=quitter, topic=topics["newsletter"], channel="email", subscribed=True)
    runs = {c.pk: journey_enroll(journey=journey, customer=c, context={}, actor="t")
            for c in (buyer, closer, leaver, quitter)}
    ingest(buyer, "order_completed")
    ingest(closer, "account_closed")
    from customers.services.profiles import customers_field_set
    from django.db import transaction

    with transaction.atomic():
        customers_field_set(customer_ids=[leaver.pk], field="lifecycle_stage", value="gone", source="t", actor="t")
    from customers.services.preferences import subscription_set

    subscription_set(customer=quitter, topic=topics["newsletter"], channel="email", subscribed=False,
                     source="t", actor="t")
    status = {pk: Enrollment.objects.get(pk=run.pk).status for pk, run in runs.items()}
    assert status == {buyer.pk: "converted", closer.pk: "exited", leaver.pk: "exited", quitter.pk: "exited"}
    converted = Event.objects.get(customer=buyer, name="journey.converted")
    assert converted.properties["node"] == "start"
    assert not WakeUp.objects.filter(enrollment__in=runs.values()).exists()
    total = NodeCounter.objects.filter(journey_id=journey.pk, grain="total", metric="converted").values_list(
        "value", flat=True)
    assert sum(total) == 1


def test_reentry_once_after_exit_with_cooldown(topics):
    once = live(chain(settings={"reentry": {"mode": "once"}}), name="Once")
    again = live(chain(settings={"reentry": {"mode": "after_exit", "cooldown_hours": 24}}), name="Again")
    free = live(chain(settings={"reentry": {"mode": "after_exit"}}), name="Free")
    customer = CustomerFactory()
    for _ in range(2):
        journey_enroll(journey=once, customer=customer, context={}, actor="t")
        journey_enroll(journey=again, customer=customer, context={}, actor="t")
        journey_enroll(journey=free, customer=customer, context={}, actor="t")
    counts = {j.name: Enrollment.objects.filter(journey=j).count() for j in (once, again, free)}
    assert counts == {"Once": 1, "Again": 1, "Free": 2}
    Enrollment.objects.filter(journey=again).update(ended_at=timezone.now() - timedelta(hours=25))
    journey_enroll(journey=again, customer=customer, context={}, actor="t")
    assert Enrollment.objects.filter(journey=again).count() == 2


def test_entry_cap_per_day(topics):
    journey = live(chain(settings={"reentry": {"mode": "after_exit"}, "caps": {"entries_per_day": 2}}))
    for _ in range(4):
        journey_enroll(journey=journey, customer=CustomerFactory(), context={}, actor="t")
    assert Enrollment.objects.filter(journey=journey).count() == 2


def test_customers_in_flight_stay_on_their_version_unless_moved(topics):
    wait = {"id": "w", "type": "wait", "label": "Wait 2 days", "config": {"kind": "duration", "minutes": 2880}}
    journey = live(chain(wait))
    stay, move = CustomerFactory(), CustomerFactory()
    first = journey_enroll(journey=journey, customer=stay, context={}, actor="t")
    # Backdate one customer's wait by 30 hours: a "wait 1 day" releases them at once.
    Enrollment.objects.filter(pk=first.pk).update(updated_at=timezone.now() - timedelta(hours=30))
    second = journey_enroll(journey=journey, customer=move, context={}, actor="t")
    new_graph = chain({"id": "w", "type": "wait", "label": "Wait 1 day", "config": {"kind": "duration",
                                                                                   "minutes": 1440}})
    journey.draft = new_graph
    journey.save()
    lines = migration_preview(journey=journey, mapping={"w": "w"})
    assert [line.sentence for line in lines] == ["2 customers at 'Wait 2 days' will move to 'Wait 1 day'"]
    assert Enrollment.objects.filter(version__number=1).count() == 2  # the preview wrote nothing
    journey_publish(journey=journey, actor="t", mapping={"w": "w"})
    assert set(Enrollment.objects.values_list("version__number", flat=True)) == {2}
    due = dict(WakeUp.objects.values_list("enrollment_id", "due_at"))
    assert due[first.pk] <= timezone.now() + timedelta(seconds=5)
    assert timedelta(hours=23) < due[second.pk] - timezone.now() < timedelta(hours=25)
    # Without a mapping, a publish leaves people on the version they entered.
    third = journey_enroll(journey=journey, customer=CustomerFactory(), context={}, actor="t")
    journey_publish(journey=journey, actor="t")
    assert Enrollment.objects.get(pk=third.pk).version.number == 2


def test_stop_ends_every_run(topics):
    wait = {"id": "w", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}}
    journey = live(chain(wait))
    runs = [journey_enroll(journey=journey, customer=CustomerFactory(), context={}, actor="t") for _ in range(3)]
    journey_stop(journey=journey, actor="t")
    assert set(Enrollment.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"exited"}
    assert not WakeUp.objects.exists()


def test_a_retried_resume_or_wake_up_runs_the_step_once(topics):
    wait = {"id": "w", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}}
    journey = live(chain(wait))
    run = journey_enroll(journey=journey, customer=CustomerFactory(), context={}, actor="t")
    stale = executor.Resume(run.pk, run.seq, "w", "out")
    assert executor.resume_many([stale]) == 1
    assert executor.resume_many([stale]) == 0
    assert executor.wake_due(now=timezone.now() + timedelta(hours=2)) == 0
    assert Step.objects.filter(enrollment=run, node="w").count() == 1


def test_a_worker_killed_mid_herd_leaves_its_wake_ups_for_the_next(topics, live_server_db_name=None):
    wait = {"id": "w", "type": "wait", "label": "Wait", "config": {"kind": "duration", "minutes": 60}}
    journey = live(chain(wait))
    runs = [journey_enroll(journey=journey, customer=CustomerFactory(), context={}, actor="t") for _ in range(20)]
    WakeUp.objects.update(due_at=timezone.now() - timedelta(seconds=1))
    # A worker that claims the herd and dies before committing: its transaction rolls back.
    script = textwrap.dedent(f"""
        import os, django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        django.setup()
        from django.db import connection
        connection.settings_dict["NAME"] = {connection.settings_dict["NAME"]!r}
        from journeys import executor
        def die(*a, **k):
            os.kill(os.getpid(), 9)
        executor.advance = die
        executor.wake_due()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert WakeUp.objects.count() == 20
    assert executor.wake_due() == 20
    assert Step.objects.filter(node="w").count() == 20
    assert set(Enrollment.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"completed"}


def test_dry_run_counts_the_split_and_writes_nothing(topics):
    condition = {"id": "vip", "type": "condition", "label": "VIP?",
                 "config": {"rule": {"attr": "lifecycle_stage", "op": "eq", "value": "vip"}}}
    trigger = {"kind": "event", "event": "cart_abandoned"}
    graph = chain(condition, trigger=trigger, edges=[
        {"from": "start", "port": "out", "to": "vip"},
        {"from": "vip", "port": "yes", "to": "end"}, {"from": "vip", "port": "no", "to": "end"},
    ])
    journey = journey_create(name="Dry", graph=graph, actor="t")
    for stage in ("vip", "vip", "new"):
        ingest(CustomerFactory(lifecycle_stage=stage), "cart_abandoned")
    before = (Enrollment.objects.count(), Event.objects.count(), JourneyVersion.objects.count(), Step.objects.count())
    result = dry_run(journey=journey)
    assert result.entering == 3
    assert result.nodes["vip"]["ports"] == {"yes": 2, "no": 1}
    after = (Enrollment.objects.count(), Event.objects.count(), JourneyVersion.objects.count(), Step.objects.count())
    assert before == after


def test_test_mode_runs_one_customer_through_the_draft_with_short_waits(topics, settings):
    settings.JOURNEY_TEST_WAIT_SECONDS = 2
    wait = {"id": "w", "type": "wait", "label": "Wait 3 days", "config": {"kind": "duration", "minutes": 4320}}
    send = {"id": "m", "type": "send", "label": "Hello", "config": {
        "topic": "alerts", "channel": "sms", "content": {"sms": {"body": "Hello"}}}}
    journey = journey_create(name="Draft only", graph=chain(wait, send), actor="t")
    customer = CustomerFactory(phone="+14155550199", lifecycle_stage="new")
    run = services.test_run(journey=journey, customer=customer, context={}, actor="t")
    assert run.test and run.node == "w"
    due = WakeUp.objects.get(enrollment=run).due_at
    assert due - timezone.now() <= timedelta(seconds=3)
    assert executor.wake_due(now=timezone.now() + timedelta(seconds=3)) == 1
    run.refresh_from_db()
    assert run.status == "completed"
    delivery = Delivery.objects.get(customer=customer)
    assert delivery.provider == "sandbox"
    # Nothing counted on the live map or in the journey's message figures, nothing on the timeline.
    assert not NodeCounter.objects.filter(journey_id=journey.pk).exists()
    from campaigns.models import Counter

    assert not Counter.objects.filter(journey_id=journey.pk).exists()
    assert not Event.objects.filter(customer=customer, name__startswith="journey.").exists()


def test_a_date_trigger_lets_customers_in_on_the_day_at_their_local_time_once(topics):
    journey = live(chain(trigger={"kind": "date", "attr": "attributes.renewal", "offset_days": -3, "at": "09:00"},
                         settings={"reentry": {"mode": "once"}}))
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from journeys.triggers import date_triggers_run

    # 10:00 in Paris on 2026-06-07: three days before a renewal on the 10th.
    now = datetime(2026, 6, 7, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
    due = CustomerFactory(timezone="Europe/Paris", attributes={"renewal": "2026-06-10"})
    early = CustomerFactory(timezone="America/Los_Angeles", attributes={"renewal": "2026-06-10"})  # 01:00 there
    other_day = CustomerFactory(timezone="Europe/Paris", attributes={"renewal": "2026-06-11"})
    CustomerFactory(timezone="Europe/Paris", attributes={"renewal": "not a date"})
    assert date_triggers_run(now=now) == 1
    assert date_triggers_run(now=now) == 0
    assert list(Enrollment.objects.filter(journey=journey).values_list("customer_id", flat=True)) == [due.pk]
    assert date_triggers_run(now=now + timedelta(hours=9)) == 1  # 09:00 in Los Angeles
    entered = set(Enrollment.objects.filter(journey=journey).values_list("customer_id", flat=True))
    assert entered == {due.pk, early.pk} and other_day.pk not in entered
