"""Segments populate themselves and stay true as customers behave, without anyone pressing a button."""

from datetime import timedelta

import pytest
from django.utils import timezone

from customers.services import preferences, profiles
from customers.models import Customer, Event, Topic
from customers.services.ingestion import EventInput, events_ingest
from segments import services
from segments.models import Segment, SegmentMembership, SegmentSize
from tests.factories import CustomerFactory, EventFactory, segment_history

pytestmark = pytest.mark.django_db(transaction=True)

REENGAGE = {
    "event": "message.opened",
    "where": [{"prop": "channel", "op": "eq", "value": "email"}],
    "within_days": 21,
    "count": {"op": "eq", "value": 0},
}


def members(segment) -> set[str]:
    return set(SegmentMembership.objects.filter(segment=segment).values_list("customer__external_id", flat=True))


def platform_event(customer, name, days_ago=0, **properties):
    events_ingest(
        items=[EventInput(customer_id=customer.pk, external_id=None, email=None, name=name, properties=properties,
                          occurred_at=timezone.now() - timedelta(days=days_ago), idempotency_key=None)],
        source="platform",
    )


def test_a_new_segment_populates_itself_and_writes_the_timeline():
    ada = CustomerFactory(external_id="ada", lifecycle_stage="expert")
    CustomerFactory(external_id="bob", lifecycle_stage="lead")
    segment = services.segment_create(name="Experts", rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"}, actor="t")
    assert members(segment) == {"ada"}
    assert segment.member_count == 1 and segment.computed_at is not None
    (entered,) = segment_history(ada)
    assert entered.name == "segment.entered" and entered.occurred_at == segment.computed_at
    assert entered.properties == {"segment_id": segment.pk, "segment": "Experts"}


def test_reengage_drops_in_and_leaves_the_moment_they_open_an_email():
    quiet = CustomerFactory(external_id="quiet")
    active = CustomerFactory(external_id="active")
    platform_event(active, "message.opened", days_ago=3, channel="email")
    platform_event(quiet, "message.opened", days_ago=30, channel="email")
    segment = services.segment_create(name="Re-engage", rules=REENGAGE, actor="t")
    assert members(segment) == {"quiet"}

    platform_event(quiet, "message.opened", channel="email")  # real time, no button
    assert members(segment) == set()
    assert [event.name for event in segment_history(quiet)] == ["segment.entered", "segment.exited"]
    segment.refresh_from_db()
    assert segment.member_count == 0 and segment.last_lag_ms is not None


def test_time_windows_are_kept_true_by_the_sweep():
    customer = CustomerFactory(external_id="c")
    platform_event(customer, "message.opened", days_ago=20, channel="email")
    segment = services.segment_create(name="Re-engage", rules=REENGAGE, actor="t")
    assert members(segment) == set()
    # Two days later nothing has happened, yet the last open is now 22 days old.
    services.segments_sweep(now=timezone.now() + timedelta(days=2))
    assert members(segment) == {"c"}
    assert SegmentSize.objects.filter(segment=segment).exists()


def test_the_sweep_re_evaluates_only_customers_crossing_a_window_edge():
    crossing = CustomerFactory(external_id="crossing", lifecycle_stage="lead")
    platform_event(crossing, "message.opened", days_ago=21 - 1 / 24, channel="email")  # 21 days minus an hour
    unrelated = CustomerFactory(external_id="unrelated", lifecycle_stage="lead")
    platform_event(unrelated, "message.opened", days_ago=2, channel="email")
    segment = services.segment_create(
        name="Quiet leads", rules={"all": [REENGAGE, {"attr": "lifecycle_stage", "op": "eq", "value": "lead"}]}, actor="t"
    )
    assert members(segment) == set()
    # Changed behind the platform's back: only a full computation can notice.
    Customer.objects.filter(pk=unrelated.pk).update(lifecycle_stage="expert")
    Event.objects.filter(customer=unrelated, name="message.opened").delete()

    services.segments_sweep(now=timezone.now() + timedelta(hours=2))
    assert members(segment) == {"crossing"}

    services.segments_sweep(now=timezone.now() + timedelta(hours=25))  # the daily full computation
    assert members(segment) == {"crossing"}
    Customer.objects.filter(pk=unrelated.pk).update(lifecycle_stage="lead")
    services.segments_sweep(now=timezone.now() + timedelta(hours=50))
    assert members(segment) == {"crossing", "unrelated"}


def test_api_events_update_segments_before_the_call_returns(client, api):
    segment = services.segment_create(
        name="Big spenders",
        rules={"event": "order_completed", "where": [{"prop": "total", "op": "gte", "value": 100}], "within_days": 30,
               "count": {"op": "gte", "value": 2}},
        actor="t",
    )
    order = {"customer": {"external_id": "newbie"}, "name": "order_completed", "properties": {"total": 150}}
    api.post("/events", {"events": [order]})
    assert members(segment) == set()
    api.post("/events", {"events": [order]})
    assert members(segment) == {"newbie"}


def test_new_customers_enter_absence_segments():
    segment = services.segment_create(name="Never ordered", rules={"event": "order_completed", "count": {"op": "eq", "value": 0}}, actor="t")
    events_ingest(
        items=[EventInput(customer_id=None, external_id="fresh", email=None, name="app_opened", properties={},
                          occurred_at=None, idempotency_key=None)],
        source="app",
    )
    assert members(segment) == {"fresh"}


def test_profile_subscription_and_consent_changes_apply_in_real_time():
    topic = Topic.objects.create(key="coupons", name="Coupons")
    customer = CustomerFactory(external_id="c", lifecycle_stage="lead", phone="+33612345678")
    experts = services.segment_create(name="Experts", rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"}, actor="t")
    sms_coupons = services.segment_create(
        name="SMS coupons", rules={"all": [{"subscribed": {"topic": "coupons", "channel": "sms"}}, {"reachable": "sms"}]},
        actor="t",
    )
    profiles.customers_upsert(
        items=[profiles.CustomerInput(external_id="c", lifecycle_stage="expert")], source="api", actor="t"
    )
    assert members(experts) == {"c"}
    preferences.subscription_set(customer=customer, topic=topic, channel="sms", subscribed=True, source="t", actor="t")
    assert members(sms_coupons) == {"c"}
    preferences.consent_record(customer=customer, channel="sms", granted=False, source="ivr", actor="t")
    assert members(sms_coupons) == set()


def test_segments_of_segments_follow_in_order():
    CustomerFactory(external_id="c", lifecycle_stage="lead")
    experts = services.segment_create(name="Experts", rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"}, actor="t")
    not_experts = services.segment_create(name="Not experts", rules={"not": {"segment": experts.pk}}, actor="t")
    assert members(not_experts) == {"c"}
    profiles.customers_upsert(
        items=[profiles.CustomerInput(external_id="c", lifecycle_stage="expert")], source="api", actor="t"
    )
    assert members(experts) == {"c"} and members(not_experts) == set()


def test_only_the_customers_concerned_are_re_evaluated():
    watched = CustomerFactory(external_id="watched", lifecycle_stage="lead")
    other = CustomerFactory(external_id="other", lifecycle_stage="lead")
    segment = services.segment_create(
        name="Experts who order", rules={"any": [{"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
                                                  {"event": "order_completed"}]}, actor="t",
    )
    # A change made behind the platform's back (no signal) is not picked up by someone else's event...
    Customer.objects.filter(pk=other.pk).update(lifecycle_stage="expert")
    platform_event(watched, "order_completed")
    assert members(segment) == {"watched"}
    # ...until a full computation.
    services.segment_recompute(segment_id=segment.pk)
    assert members(segment) == {"watched", "other"}


def test_unrelated_events_leave_segments_alone(django_assert_max_num_queries):
    customer = CustomerFactory()
    services.segment_create(name="Experts", rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"}, actor="t")
    services.segment_create(name="Openers", rules={"event": "message.opened"}, actor="t")
    # Two more than the segments need: the journeys' listener asks once what live journeys
    # hear, and the outgoing webhooks' listener once which endpoints there are.
    with django_assert_max_num_queries(10):
        platform_event(customer, "page_viewed")
    assert segment_history(customer) == []


def test_cycles_are_rejected_with_the_chain():
    from core.errors import InputError

    a = services.segment_create(name="A", rules={"attr": "lifecycle_stage", "op": "eq", "value": "x"}, actor="t")
    b = services.segment_create(name="B", rules={"segment": a.pk}, actor="t")
    with pytest.raises(InputError) as caught:
        services.segment_update(segment=a, rules={"not": {"segment": b.pk}}, actor="t")
    assert "cycle" in caught.value.errors[0].message and "B" in caught.value.errors[0].message
    a.refresh_from_db()
    assert a.rules == {"attr": "lifecycle_stage", "op": "eq", "value": "x"}


def test_changing_rules_moves_members_both_ways():
    CustomerFactory(external_id="lead", lifecycle_stage="lead")
    CustomerFactory(external_id="expert", lifecycle_stage="expert")
    segment = services.segment_create(name="S", rules={"attr": "lifecycle_stage", "op": "eq", "value": "lead"}, actor="t")
    services.segment_update(segment=segment, rules={"attr": "lifecycle_stage", "op": "eq", "value": "expert"}, actor="t")
    assert members(segment) == {"expert"}
    lead = Customer.objects.get(external_id="lead")
    assert [event.name for event in segment_history(lead)] == ["segment.entered", "segment.exited"]


def test_static_segments_by_email_and_external_id():
    CustomerFactory(external_id="a", email="a@example.com")
    CustomerFactory(external_id="b", email="b@example.com")
    static = services.segment_create(name="Imported", static=True, actor="t")
    vip_openers = services.segment_create(name="In the import", rules={"segment": static.pk}, actor="t")
    change = services.static_members_change(
        segment=static, add=True, actor="t", emails=["A@example.com", "ghost@example.com"], external_ids=["b"]
    )
    assert change.changed == 2 and change.not_found == ["ghost@example.com"]
    static.refresh_from_db()
    assert static.member_count == 2 and members(static) == {"a", "b"}
    assert members(vip_openers) == {"a", "b"}
    services.static_members_change(segment=static, add=False, actor="t", external_ids=["a"])
    assert members(static) == {"b"} and members(vip_openers) == {"b"}


def test_explain_shows_each_rule_with_its_deciding_value():
    from segments.queries import segment_explain

    customer = CustomerFactory(lifecycle_stage="expert", attributes={"plan": "free"})
    EventFactory(customer=customer, name="order_completed")
    segment = services.segment_create(
        name="Why", rules={"all": [{"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
                                   {"attr": "attributes.plan", "op": "in", "value": ["pro", "team"]},
                                   {"event": "order_completed", "count": {"op": "gte", "value": 1}}]},
        actor="t",
    )
    tree = segment_explain(segment, customer)
    assert tree["passed"] is False
    stage, plan, orders = tree["children"]
    assert (stage["passed"], stage["value"]) == (True, "expert")
    assert (plan["passed"], plan["value"]) == (False, '"free"')
    assert (orders["passed"], orders["value"]) == (True, "1")
    assert plan["summary"] == "attributes.plan is one of pro, team"


def test_demo_segments_load_once_through_the_services():
    from django.core.management import call_command

    call_command("seed_demo", customers=300)
    call_command("seed_segments", "--if-empty")
    names = set(Segment.objects.values_list("name", flat=True))
    assert {"Re-engage", "Recent buyers", "Churn risk", "Beta testers"} <= names
    assert all(s.member_count > 0 for s in Segment.objects.all())
    entries = sum(1 for customer in Customer.objects.all() for event in segment_history(customer)
                  if event.name == "segment.entered")
    assert entries == sum(Segment.objects.values_list("member_count", flat=True))
    call_command("seed_segments", "--if-empty")
    assert Segment.objects.count() == len(names)


def test_saving_rules_that_mean_the_same_recomputes_nothing():
    CustomerFactory(external_id="e", lifecycle_stage="expert")
    rules = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}
    segment = services.segment_create(name="Experts", rules=rules, actor="t")
    computed_at = segment.computed_at
    same = {"value": "expert", "op": "eq", "attr": "lifecycle_stage"}
    services.segment_update(segment=segment, rules=same, actor="t")
    assert segment.computed_at == computed_at
    assert [event.name for event in segment_history(Customer.objects.get(external_id="e"))] == ["segment.entered"]
