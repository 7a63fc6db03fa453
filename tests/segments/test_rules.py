"""The compiled SQL must pick exactly the customers an independent evaluation picks."""

import random
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import connection

from customers.models import ChannelStatus, ConsentState, Consent, Customer, Device, Event, Subscription
from segments import rules as rl
from segments import services
from segments.models import SegmentMembership
from tests.factories import TopicFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=dt_timezone.utc)
STAGES = ["lead", "prospect", "customer", "expert", "churned", ""]
PLANS = ["free", "pro", "team", None]
EVENTS = ["order_completed", "app_opened", "message.opened"]
CHANNELS = ["email", "sms", "push"]


@pytest.fixture
def world(db):
    """~150 customers with varied profiles, events, subscriptions, consent and statuses."""
    rng = random.Random(7)
    topics = {key: TopicFactory(key=key) for key in ("coupons", "newsletter")}
    customers = []
    for n in range(150):
        attributes = {}
        if (plan := rng.choice(PLANS)) is not None:
            attributes["plan"] = plan
        if rng.random() < 0.7:
            # Mostly numbers; a number comparison must not match a string, a list or a boolean.
            attributes["ltv"] = rng.choice([0, 10, 99.5, 100, 250, 1000, 0, 10, 99.5, 100, 250, 1000, "250", [1000], True])
        if rng.random() < 0.5:
            attributes["vip"] = rng.random() < 0.5
        if rng.random() < 0.6:
            attributes["signup_date"] = (NOW - timedelta(days=rng.randrange(400))).date().isoformat()
        if rng.random() < 0.05:
            attributes["signup_date"] = "not a date"
        customers.append(
            Customer(
                external_id=f"x{n}" if rng.random() < 0.9 else None,
                email=f"person{n}@{rng.choice(['example.com', 'shop.test'])}" if rng.random() < 0.85 else "",
                phone=f"+3361234{n:04d}" if rng.random() < 0.6 else "",
                first_name=rng.choice(["Ada", "Grace", "Linus", "Ana", ""]),
                lifecycle_stage=rng.choice(STAGES),
                attributes=attributes,
                created_at=NOW - timedelta(days=rng.randrange(300)),
                last_seen_at=None if rng.random() < 0.2 else NOW - timedelta(days=rng.randrange(90)),
            )
        )
    Customer.objects.bulk_create(customers)
    events = []
    for customer in customers:
        for _ in range(rng.randrange(0, 12)):
            name = rng.choice(EVENTS)
            props = {"channel": rng.choice(CHANNELS)} if name == "message.opened" else {"total": rng.choice([5, 50, 100, 150, 500, "100"])}
            events.append(Event(customer=customer, name=name, properties=props, occurred_at=NOW - timedelta(days=rng.uniform(0, 60), minutes=1)))
    Event.objects.bulk_create(events)
    subs = []
    for customer in customers:
        for topic in topics.values():
            for channel in CHANNELS:
                if rng.random() < 0.3:
                    subs.append(Subscription(customer=customer, topic=topic, channel=channel, subscribed=rng.random() < 0.7))
    Subscription.objects.bulk_create(subs)
    for customer in rng.sample(customers, 30):
        channel = rng.choice(CHANNELS)
        entry = Consent.objects.create(customer=customer, channel=channel, granted=rng.random() < 0.4, source="test")
        ConsentState.objects.create(customer=customer, channel=channel, granted=entry.granted, updated_at=entry.occurred_at, consent=entry)
    for customer in rng.sample(customers, 15):
        ChannelStatus.objects.create(customer=customer, channel=rng.choice(CHANNELS), status=rng.choice(["bounced", "unsubscribed", "ok"]))
    for customer in rng.sample(customers, 40):
        Device.objects.create(customer=customer, kind="fcm", token=f"token-{customer.pk}")
    static = services.segment_create(name="VIP list", static=True, actor="test")
    SegmentMembership.objects.bulk_create(SegmentMembership(segment=static, customer=c) for c in rng.sample(customers, 35))
    return {"topics": {k: t.pk for k, t in topics.items()}, "static": static.pk}


# --- An independent evaluator, in plain Python over plain rows ------------------------------------


class Reference:
    def __init__(self):
        self.customers = {c.pk: c for c in Customer.objects.all()}
        self.events = {}
        for e in Event.objects.all():
            self.events.setdefault(e.customer_id, []).append(e)
        self.subs = {(s.customer_id, s.topic.key, s.channel): s.subscribed for s in Subscription.objects.select_related("topic")}
        self.consent = {(s.customer_id, s.channel): s.granted for s in ConsentState.objects.all()}
        self.status = {(s.customer_id, s.channel): s.status for s in ChannelStatus.objects.all()}
        self.devices = set(Device.objects.values_list("customer_id", flat=True))
        self.members = {}
        for m in SegmentMembership.objects.all():
            self.members.setdefault(m.segment_id, set()).add(m.customer_id)

    def audience(self, rule):
        return {pk for pk, c in self.customers.items() if self.test(rule, c)}

    def test(self, rule, c):
        if "all" in rule:
            return all(self.test(r, c) for r in rule["all"])
        if "any" in rule:
            return any(self.test(r, c) for r in rule["any"])
        if "not" in rule:
            return not self.test(rule["not"], c)
        if "attr" in rule:
            name = rule["attr"]
            if name.startswith("attributes."):
                value = c.attributes.get(name.removeprefix("attributes."))
            else:
                value = getattr(c, name)
            return compare(value, rule, builtin=not name.startswith("attributes."))
        if "event" in rule:
            count = 0
            for e in self.events.get(c.pk, ()):
                if e.name != rule["event"]:
                    continue
                if "within_days" in rule and e.occurred_at < NOW - timedelta(days=rule["within_days"]):
                    continue
                if all(compare(e.properties.get(w["prop"]), w, builtin=False) for w in rule.get("where", [])):
                    count += 1
            spec = rule.get("count", {"op": "gte", "value": 1})
            return NUMERIC[spec["op"]](count, spec["value"])
        if "subscribed" in rule:
            return self.subs.get((c.pk, rule["subscribed"]["topic"], rule["subscribed"]["channel"])) is True
        if "reachable" in rule:
            ch = rule["reachable"]
            has = bool(c.email) if ch == "email" else c.pk in self.devices if ch == "push" else bool(c.phone)
            return has and self.consent.get((c.pk, ch)) is not False and self.status.get((c.pk, ch), "ok") == "ok"
        if "segment" in rule:
            return c.pk in self.members.get(rule["segment"], set())
        raise AssertionError(rule)


NUMERIC = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
}


def as_date(value):
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt_timezone.utc)


def compare(value, rule, *, builtin):
    op, target = rule["op"], rule.get("value")
    present = value not in (None, "") if builtin else value is not None
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if op in ("within_days", "before_days") or (isinstance(target, str) and rl.ISO_DATE.match(target) and op in ("lt", "lte", "gt", "gte")):
        moment = as_date(value)
        if moment is None:
            return False
        if op == "within_days":
            return NOW - timedelta(days=target) <= moment <= NOW
        if op == "before_days":
            return moment < NOW - timedelta(days=target)
        return NUMERIC[op](moment, as_date(target))
    sample = target[0] if isinstance(target, list) else target
    if isinstance(sample, bool):
        return value is target if op == "eq" else value is not target
    if isinstance(sample, (int, float)):
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if op == "in":
            return number is not None and number in target
        if op == "not_in":
            return number is None or number not in target
        if op == "ne":
            return number is None or number != target
        return number is not None and NUMERIC[op](number, target)
    text = "" if value is None else str(value) if builtin or isinstance(value, str) else None
    if text is None:  # a JSON number or boolean compared with a string
        text = "true" if value is True else "false" if value is False else str(value)
    if op == "eq":
        return text == target
    if op == "ne":
        return text != target
    if op == "in":
        return text in target
    if op == "not_in":
        return text not in target
    if op == "contains":
        return target.lower() in text.lower()
    if op == "starts_with":
        return text.lower().startswith(target.lower())
    raise AssertionError(rule)


def compiled_audience(rule, world):
    normalised = rl.validate(rule, topics=world["topics"], segment_ids={world["static"]})
    query, params = rl.compile_query(normalised, now=NOW)
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return {row[0] for row in cursor.fetchall()}


# --- Random rule trees ------------------------------------------------------------------------


def random_leaf(rng, world):
    kind = rng.choice(["attr", "attr", "attr", "event", "event", "subscribed", "reachable", "segment"])
    if kind == "attr":
        field, ops, values = rng.choice([
            ("lifecycle_stage", ["eq", "ne", "in", "not_in", "exists", "not_exists", "starts_with"], STAGES[:-1] + ["ex"]),
            ("email", ["contains", "starts_with", "exists", "not_exists", "eq"], ["shop.test", "person1", "PERSON2"]),
            ("attributes.plan", ["eq", "ne", "in", "not_in", "exists", "not_exists", "contains"], ["free", "pro", "team"]),
            ("attributes.ltv", ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists"], [0, 10, 99.5, 100, 500]),
            ("attributes.vip", ["eq", "ne", "exists", "not_exists"], [True, False]),
            ("attributes.signup_date", ["within_days", "before_days", "lt", "gte", "exists"], ["2026-06-01", 30, 200]),
            ("last_seen_at", ["within_days", "before_days", "exists", "not_exists", "gt"], [7, 30, "2026-10-01"]),
            ("created_at", ["within_days", "before_days", "lt"], [10, 100, "2026-05-01T00:00:00+00:00"]),
        ])
        op = rng.choice(ops)
        if op in ("exists", "not_exists"):
            return {"attr": field, "op": op}
        if op in ("within_days", "before_days"):
            return {"attr": field, "op": op, "value": rng.choice([7, 30, 90, 200])}
        candidates = [v for v in values if bool(isinstance(v, str) and rl.ISO_DATE.match(v)) == (op in ("lt", "lte", "gt", "gte") and field in ("attributes.signup_date", "last_seen_at", "created_at"))]
        candidates = [v for v in candidates if not isinstance(v, int) or field == "attributes.ltv"] or values
        if field in ("attributes.ltv",):
            candidates = [v for v in values if isinstance(v, (int, float))]
        if field == "attributes.vip":
            candidates = [True, False]
        if op in ("in", "not_in"):
            return {"attr": field, "op": op, "value": rng.sample(candidates, min(2, len(candidates)))}
        return {"attr": field, "op": op, "value": rng.choice(candidates)}
    if kind == "event":
        rule = {"event": rng.choice(EVENTS)}
        if rng.random() < 0.6:
            rule["within_days"] = rng.choice([7, 21, 45])
        if rule["event"] == "message.opened" and rng.random() < 0.6:
            rule["where"] = [{"prop": "channel", "op": rng.choice(["eq", "ne"]), "value": rng.choice(CHANNELS)}]
        elif rng.random() < 0.4:
            rule["where"] = [{"prop": "total", "op": rng.choice(["gte", "lt", "eq"]), "value": rng.choice([50, 100, 150])}]
        if rng.random() < 0.7:
            rule["count"] = {"op": rng.choice(list(rl.COUNT_OPS)), "value": rng.choice([0, 1, 2, 3, 5])}
        return rule
    if kind == "subscribed":
        return {"subscribed": {"topic": rng.choice(["coupons", "newsletter"]), "channel": rng.choice(CHANNELS)}}
    if kind == "reachable":
        return {"reachable": rng.choice(CHANNELS)}
    return {"segment": world["static"]}


def random_tree(rng, world, depth=0):
    if depth >= 3 or rng.random() < 0.45:
        return random_leaf(rng, world)
    kind = rng.choice(["all", "any", "not"])
    if kind == "not":
        return {"not": random_tree(rng, world, depth + 1)}
    return {kind: [random_tree(rng, world, depth + 1) for _ in range(rng.randint(1, 3))]}


def disagreements(rule, reference, world):
    """The leaves on which the two evaluations differ, to make a failure readable."""
    return [
        (leaf, sorted(compiled_audience(leaf, world) ^ reference.audience(leaf))[:5])
        for leaf in rl.leaves(rule)
        if compiled_audience(leaf, world) != reference.audience(leaf)
    ] or rule


def test_random_rule_trees_match_an_independent_evaluation(world):
    reference = Reference()
    rng = random.Random(2026)
    checked = nonempty = 0
    for _ in range(250):
        rule = random_tree(rng, world)
        expected = reference.audience(rule)
        assert compiled_audience(rule, world) == expected, disagreements(rule, reference, world)
        checked += 1
        nonempty += 0 < len(expected) < len(reference.customers)
    # The generator must produce discriminating rules, or the comparison proves little.
    assert nonempty > checked // 2


@pytest.mark.parametrize(
    "rule",
    [
        {"all": [{"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
                 {"event": "order_completed", "within_days": 30, "count": {"op": "gte", "value": 3}}]},
        {"all": [{"event": "message.opened", "where": [{"prop": "channel", "op": "eq", "value": "email"}],
                  "within_days": 21, "count": {"op": "eq", "value": 0}},
                 {"subscribed": {"topic": "coupons", "channel": "sms"}}]},
        {"any": [{"not": {"segment": "STATIC"}}, {"attr": "attributes.plan", "op": "in", "value": ["pro", "team"]}]},
        {"attr": "attributes.ltv", "op": "gte", "value": 100},
        {"attr": "attributes.signup_date", "op": "within_days", "value": 90},
        {"reachable": "sms"},
    ],
)
def test_representative_segments(world, rule):
    import json

    rule = json.loads(json.dumps(rule).replace('"STATIC"', str(world["static"])))
    expected = Reference().audience(rule)
    assert expected, "the fixture should have members for each representative rule"
    assert compiled_audience(rule, world) == expected


# --- Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, path, words",
    [
        ({"attr": "favourite_colour", "op": "eq", "value": "red"}, "rules.attr", "unknown field"),
        ({"attr": "lifecycle_stage", "op": "gt", "value": 3}, "rules.value", "text"),
        ({"attr": "lifecycle_stage", "op": "between", "value": 3}, "rules.op", "unknown operator"),
        ({"attr": "attributes.vip", "op": "gt", "value": True}, "rules.op", "does not apply"),
        ({"attr": "last_seen_at", "op": "eq", "value": "x"}, "rules.op", "is a date"),
        ({"attr": "lifecycle_stage", "op": "eq"}, "rules.value", "needs a value"),
        ({"attr": "lifecycle_stage", "op": "in", "value": []}, "rules.value", "non-empty list"),
        ({"subscribed": {"topic": "gossip", "channel": "sms"}}, "rules.subscribed.topic", "unknown topic"),
        ({"subscribed": {"topic": "coupons", "channel": "fax"}}, "rules.subscribed.channel", "unknown channel"),
        ({"all": []}, "rules.all", "non-empty"),
        ({"all": [{"reachable": "email"}, {"any": [{"segment": 999999}]}]}, "rules.all[1].any[0].segment", "no segment"),
        ({"event": "order_completed", "count": {"op": "gte", "value": -1}}, "rules.count", "whole number"),
        ({"event": "order_completed", "within_days": 0}, "rules.within_days", "positive"),
        ({"attr": "lifecycle_stage", "op": "eq", "value": "x", "extra": 1}, "rules.extra", "unknown key"),
        ({"attr": "lifecycle_stage", "event": "x"}, "rules", "exactly one"),
        ("lifecycle_stage = expert", "rules", "must be an object"),
    ],
)
def test_invalid_rules_name_the_problem(world, rule, path, words):
    with pytest.raises(rl.RuleError) as caught:
        rl.validate(rule, topics=world["topics"], segment_ids={world["static"]})
    assert any(e["path"] == path and words in e["message"] for e in caught.value.errors), caught.value.errors
