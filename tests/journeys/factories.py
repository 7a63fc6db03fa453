"""Journey rows made directly, for tests of one node's handler without the executor around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import factory
from django.utils import timezone

from journeys.models import Action, Enrollment, Journey, JourneyVersion, Task, WebhookCall
from journeys.nba import compile_rule
from tests.factories import CustomerFactory


def nba_graph(actions: list[str], *, holdout: int = 0, node_id: str = "offer") -> dict:
    """A trigger, one next-best-action node, and an exit behind each of its ports."""
    ports = [*actions, "none"]
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "Bad experience", "config": {"kind": "api"}},
            {"id": node_id, "type": "nba", "label": "Make it right",
             "config": {"actions": actions, **({"holdout": holdout} if holdout else {})}},
            *({"id": f"after-{port}", "type": "exit", "label": f"After {port}", "config": {}} for port in ports),
        ],
        "edges": [
            {"from": "start", "port": "out", "to": node_id},
            *({"from": node_id, "port": port, "to": f"after-{port}"} for port in ports),
        ],
        "settings": {"reentry": {"mode": "after_exit"}},
    }


class JourneyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Journey

    name = factory.Sequence(lambda n: f"Journey {n}")
    status = Journey.Status.LIVE
    draft = factory.LazyFunction(lambda: nba_graph(["coupon"]))


class JourneyVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = JourneyVersion

    journey = factory.SubFactory(JourneyFactory)
    number = factory.Sequence(lambda n: n + 1)
    graph = factory.LazyAttribute(lambda version: version.journey.draft)


class EnrollmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Enrollment

    version = factory.SubFactory(JourneyVersionFactory)
    journey = factory.LazyAttribute(lambda enrollment: enrollment.version.journey)
    customer = factory.SubFactory(CustomerFactory)
    node = "offer"
    seq = 1
    run_key = factory.Sequence(lambda n: f"run-{n}")


class ActionFactory(factory.django.DjangoModelFactory):
    """An action as the services would store it: its rule validated into ``eligibility_compiled``."""

    class Meta:
        model = Action

    key = factory.Sequence(lambda n: f"action-{n}")
    name = factory.LazyAttribute(lambda action: action.key.replace("-", " ").capitalize())
    accept_event = factory.LazyAttribute(lambda action: f"{action.key.replace('-', '_')}_accepted")
    eligibility = None
    eligibility_compiled = factory.LazyAttribute(lambda action: compile_rule(action.eligibility) if action.eligibility else None)


@dataclass
class Row:
    """What the executor hands a node handler for one enrollment."""

    enrollment_id: int
    customer_id: int
    seq: int
    context: dict = field(default_factory=dict)
    test: bool = False


@dataclass
class Batch:
    """What the executor hands a node handler: the enrollments at one node of one version."""

    journey_id: int
    version_id: int
    node: dict
    rows: list[Row]
    now: datetime = field(default_factory=timezone.now)

    def visit(self, enrollment_id: int) -> int:
        return next(row.seq for row in self.rows if row.enrollment_id == enrollment_id)


def batch_for(enrollments: list[Enrollment], *, now: datetime | None = None) -> Batch:
    """The batch the executor would make of ``enrollments`` (all at the same node of one version)."""
    first = enrollments[0]
    node = next(n for n in first.version.graph["nodes"] if n["id"] == first.node)
    rows = [Row(e.pk, e.customer_id, e.seq, e.context, e.test) for e in enrollments]
    return Batch(journey_id=first.journey_id, version_id=first.version_id, node=node, rows=rows,
                 now=now or timezone.now())


# --- Webhooks and support tasks: customers waiting for something outside the executor -----------


def graph_around(node: dict, ports: list[str]) -> dict:
    """An API trigger → ``node`` → for each of ``ports`` an hour's wait ``after-<port>`` → an
    exit. Waiting at ``after-<port>`` shows which way a customer left ``node``."""
    nodes = [{"id": "start", "type": "trigger", "label": "Trigger", "config": {"kind": "api"}}, node]
    edges = [{"from": "start", "port": "out", "to": node["id"]}]
    for port in ports:
        nodes.append({"id": f"after-{port}", "type": "wait", "label": f"After {port}",
                      "config": {"kind": "duration", "minutes": 60}})
        edges += [{"from": node["id"], "port": port, "to": f"after-{port}"},
                  {"from": f"after-{port}", "port": "out", "to": "end"}]
    nodes.append({"id": "end", "type": "exit", "label": "Exit", "config": {}})
    return {"nodes": nodes, "edges": edges, "settings": {"reentry": {"mode": "once"}}}


def webhook_graph(url: str, **config) -> dict:
    """A journey with one webhook node ``hook`` (``config``: store_as, retries, timeout_seconds)."""
    return graph_around({"id": "hook", "type": "webhook", "label": "Tell the CRM", "config": {"url": url, **config}},
                        ["ok", "failed"])


def task_graph(outcomes=("reached", "no_answer"), **config) -> dict:
    """A journey with one "Hand to a person" node ``call``."""
    node = {"id": "call", "type": "task", "label": "Call back",
            "config": {"title": "Call the customer back", "outcomes": list(outcomes), "timeout_hours": 48, **config}}
    return graph_around(node, [*outcomes, "timeout"])


def live_version(graph: dict, **journey_fields) -> JourneyVersion:
    """A live journey whose published version 1 is ``graph`` (not validated)."""
    version = JourneyVersionFactory(journey=JourneyFactory(draft=graph, **journey_fields), number=1)
    Journey.objects.filter(pk=version.journey_id).update(live_version=version)
    return version


def waiting_at(version: JourneyVersion, node: str, **fields) -> Enrollment:
    """A customer waiting at ``node`` of ``version`` (sequence number 3 unless given)."""
    fields.setdefault("seq", 3)
    return EnrollmentFactory(version=version, node=node, status="waiting", **fields)


def webhook_call(enrollment: Enrollment, url: str, *, payload=None, **fields) -> WebhookCall:
    """The outbox row a webhook step writes for ``enrollment``, waiting at its node."""
    return WebhookCall.objects.create(
        enrollment=enrollment, node=enrollment.node, seq=enrollment.seq, url=url,
        payload=payload if payload is not None else {"customer": {"id": enrollment.customer_id},
                                                      "context": enrollment.context},
        idempotency_key=f"{enrollment.pk}:{enrollment.node}:{enrollment.seq}", **fields,
    )


def support_task(enrollment: Enrollment, **fields) -> Task:
    """The task a "Hand to a person" step writes for ``enrollment``, waiting at its node."""
    config = next(n for n in enrollment.version.graph["nodes"] if n["id"] == enrollment.node).get("config") or {}
    fields.setdefault("title", config.get("title", "Follow up"))
    fields.setdefault("outcomes", list(config.get("outcomes") or ["done"]))
    fields.setdefault("instructions", config.get("instructions", ""))
    return Task.objects.create(
        customer_id=enrollment.customer_id, journey_id=enrollment.journey_id, enrollment=enrollment,
        node=enrollment.node, seq=enrollment.seq, idempotency_key=f"{enrollment.pk}:{enrollment.node}:{enrollment.seq}",
        **fields,
    )
