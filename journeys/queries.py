"""Reads for journeys, with their permission checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import BooleanField, Count, ExpressionWrapper, Prefetch, Q, Sum
from django.http import Http404

from campaigns.models import Delivery
from customers.models import Customer
from customers.queries import customers_search
from customers.roles import can_use_marketing, can_view_customers

from . import graph as graphs
from .models import Decision, Enrollment, EnrollmentStatus, Journey, JourneyVersion, NodeCounter, Step, WakeUp


def journey_for_user(*, user, journey_id: int) -> Journey:
    """The journey, if ``user`` may work with journeys (marketers and admins)."""
    if not can_use_marketing(user):
        raise PermissionDenied("Your account has no role that allows working with journeys.")
    journey = Journey.objects.filter(pk=journey_id).first()
    if journey is None:
        raise Http404("No such journey.")
    return journey


# --- Journey pages: the list, the live map, a node's panel, test runs, the customer card -----------

def _require_marketing(user) -> None:
    if not can_use_marketing(user):
        raise PermissionDenied("Your account has no role that allows working with journeys.")


@dataclass
class JourneyRow:
    """A journey on the list, with its figures (test runs left out)."""

    journey: Journey
    in_now: int
    entered_today: int
    entered: int
    converted: int
    has_goal: bool

    @property
    def conversion_rate(self) -> float | None:
        """Goal conversions ÷ customers who entered (ended and in flight); None without a goal
        or before anyone entered."""
        if not self.entered or not (self.has_goal or self.converted):
            return None
        return self.converted / self.entered


def journey_rows(*, user, since: datetime) -> list[JourneyRow]:
    """Every journey with its live version, customers in it now, entered since ``since`` (the
    start of today) and goal conversions, in one query."""
    _require_marketing(user)
    return journey_figures(since=since)


def journey_versions(journey: Journey) -> list[JourneyVersion]:
    """The published versions, newest first, each with the customers still on it."""
    return list(
        journey.versions.filter(is_test=False)
        .defer("graph")
        .annotate(in_flight=Count("enrollments", filter=Q(enrollments__ended_at__isnull=True,
                                                           enrollments__test=False)))
        .order_by("-number")
    )


def next_version_number(journey: Journey) -> int:
    """The number the next publish gives its version."""
    last = journey.versions.filter(is_test=False).order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


def map_graph(journey: Journey) -> dict:
    """The graph the live map draws: the live version's, or the draft before the first publish."""
    return journey.live_version.graph if journey.live_version_id else (journey.draft or graphs.empty_graph())


def map_counts(journey_id: int, *, conversion: bool = True) -> dict:
    """The live map's figures in the shape the canvas takes (``JourneyCanvas.setCounts``):

    ``{"nodes": {id: {"now": n, "entered": n}}, "edges": {"from:port": passed},
    "conversion": {"from:port": rate}}``

    ``now`` counts customers in flight at the node (every version: node ids are stable),
    ``entered`` and ``passed`` come from the executor's counters, and an edge's conversion
    rate is the share of the customers who passed it whose run then converted (test runs
    are left out everywhere). One statement; ``conversion=False`` (a journey without a
    goal) skips the step log.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT 'now', node, '', count(*), 0 FROM journeys_enrollment
            WHERE journey_id = %(journey)s AND ended_at IS NULL AND NOT test GROUP BY node
            UNION ALL
            SELECT metric, node, port, sum(value), 0 FROM journeys_nodecounter
            WHERE journey_id = %(journey)s AND grain = 'total' AND metric IN ('entered', 'passed')
            GROUP BY metric, node, port
            UNION ALL
            SELECT 'branch', s.node, s.port, count(DISTINCT s.enrollment_id),
                   count(DISTINCT s.enrollment_id) FILTER (WHERE e.status = 'converted')
            FROM journeys_step s JOIN journeys_enrollment e ON e.id = s.enrollment_id
            WHERE %(conversion)s AND s.journey_id = %(journey)s AND NOT e.test GROUP BY s.node, s.port
            """,
            {"journey": journey_id, "conversion": conversion},
        )
        rows = cursor.fetchall()
    nodes: dict[str, dict] = {}
    edges: dict[str, int] = {}
    rates: dict[str, float] = {}
    for kind, node, port, value, converted in rows:
        if kind == "now":
            nodes.setdefault(node, {"now": 0, "entered": 0})["now"] = int(value)
        elif kind == "entered":
            nodes.setdefault(node, {"now": 0, "entered": 0})["entered"] = int(value)
        elif kind == "passed":
            edges[f"{node}:{port}"] = int(value)
        elif value:
            rates[f"{node}:{port}"] = round(int(converted) / int(value), 4)
    return {"nodes": nodes, "edges": edges, "conversion": rates}


def has_goal(graph: dict) -> bool:
    return bool((graph.get("settings") or {}).get("goal"))


def map_figures(journey: Journey) -> dict:
    """:func:`map_counts` for the graph the map draws, with every node and edge of it present
    (zero until someone comes by), so the canvas shows a figure on each."""
    graph = map_graph(journey)
    counts = map_counts(journey.pk, conversion=has_goal(graph))
    for node in graph.get("nodes") or []:
        counts["nodes"].setdefault(node["id"], {"now": 0, "entered": 0})
    for edge in graph.get("edges") or []:
        counts["edges"].setdefault(f"{edge['from']}:{edge['port']}", 0)
    # Conversion is shown per branch: the ways out of a node that has more than one.
    branches = {f"{node['id']}:{port}" for node in graph.get("nodes") or [] if len(graphs.ports(node)) > 1
                for port in graphs.ports(node)}
    counts["conversion"] = {key: rate for key, rate in counts["conversion"].items() if key in branches}
    return counts


def map_nodes(graph: dict, counts: dict) -> list[dict]:
    """The graph's nodes in the order a customer meets them (breadth first from the trigger),
    each with its ports and figures: the map's keyboard-usable table."""
    by_id = graphs.nodes_by_id(graph)
    start = graphs.trigger(graph)
    order: list[str] = []
    queue = [start["id"]] if start else []
    while queue:
        node_id = queue.pop(0)
        if node_id in order or node_id not in by_id:
            continue
        order.append(node_id)
        queue += [graphs.next_node(graph, node_id, port) for port in graphs.ports(by_id[node_id])]
    order += [node_id for node_id in by_id if node_id not in order]
    result = []
    for node_id in order:
        node = by_id[node_id]
        figures = counts["nodes"].get(node_id, {})
        result.append({
            "id": node_id,
            "type": node.get("type"),
            "type_label": graphs.NODE_TYPES.get(node.get("type"), ("Node",))[0],
            "label": graphs.node_label(node),
            "now": figures.get("now", 0),
            "entered": figures.get("entered", 0),
            "ports": [
                {"port": port, "passed": counts["edges"].get(f"{node_id}:{port}", 0),
                 "conversion": counts["conversion"].get(f"{node_id}:{port}"),
                 "to": graphs.node_label(by_id.get(graphs.next_node(graph, node_id, port) or "", {}))
                 if graphs.next_node(graph, node_id, port) else ""}
                for port in graphs.ports(node)
            ],
        })
    return result


@dataclass
class NodePanel:
    """One node of the live map: what it is, its figures per minute, and who is there now."""

    node: dict
    label: str
    type_label: str
    ports: list[str]
    minutes: list[datetime]
    entered: list[int]
    passed: dict[str, list[int]]
    here: list[Enrollment]
    here_count: int
    window_hours: int


PANEL_CUSTOMERS = 50
PANEL_HOURS = 6


def node_panel(journey: Journey, node_id: str, *, now: datetime) -> NodePanel | None:
    """The node's panel (None when no version of the journey has that node)."""
    graph = map_graph(journey)
    node = graphs.nodes_by_id(graph).get(node_id)
    if node is None:
        return None
    since = (now - timedelta(hours=PANEL_HOURS)).replace(second=0, microsecond=0)
    rows = (
        NodeCounter.objects.filter(journey_id=journey.pk, grain=NodeCounter.Grain.MINUTE, node=node_id,
                                   metric__in=("entered", "passed"), bucket__gte=since)
        .values_list("bucket", "metric", "port")
        .annotate(total=Sum("value"))
    )
    minutes = [since + timedelta(minutes=i) for i in range(PANEL_HOURS * 60 + 1)]
    index = {minute: i for i, minute in enumerate(minutes)}
    ports = graphs.ports(node)
    entered = [0] * len(minutes)
    passed = {port: [0] * len(minutes) for port in ports}
    for bucket, metric, port, total in rows:
        i = index.get(bucket)
        if i is None:
            continue
        if metric == "entered":
            entered[i] += total
        else:
            passed.setdefault(port, [0] * len(minutes))[i] += total
    here = Enrollment.objects.filter(journey=journey, node=node_id, ended_at__isnull=True, test=False)
    return NodePanel(
        node=node, label=graphs.node_label(node), type_label=graphs.NODE_TYPES.get(node.get("type"), ("Node",))[0],
        ports=ports, minutes=minutes, entered=entered, passed=passed,
        here=list(here.select_related("customer").order_by("updated_at", "id")[:PANEL_CUSTOMERS]),
        here_count=here.count(), window_hours=PANEL_HOURS,
    )


# --- Steps, as people read them -----------------------------------------------------------------


@dataclass
class StepLine:
    node: str
    label: str
    port: str
    at: datetime
    next_label: str = ""


def step_lines(steps: list[Step], graph: dict) -> list[StepLine]:
    by_id = graphs.nodes_by_id(graph)
    lines = []
    for step in steps:
        node = by_id.get(step.node, {"id": step.node})
        target = graphs.next_node(graph, step.node, step.port) if step.port else None
        lines.append(StepLine(step.node, graphs.node_label(node), step.port, step.at,
                              graphs.node_label(by_id[target]) if target in by_id else ""))
    return lines


@dataclass
class EnrollmentView:
    """An enrollment with what the pages say about it: where it is, how it got there."""

    enrollment: Enrollment
    node_label: str
    steps: list[StepLine]
    decisions: list[Decision] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def in_flight(self) -> bool:
        return self.enrollment.ended_at is None


def _view(enrollment: Enrollment, graph: dict, steps: list[Step]) -> EnrollmentView:
    node = graphs.nodes_by_id(graph).get(enrollment.node, {"id": enrollment.node})
    return EnrollmentView(enrollment, graphs.node_label(node), step_lines(steps, graph))


# --- Test mode --------------------------------------------------------------------------------------


def test_run_view(*, user, journey: Journey, enrollment_id: int) -> EnrollmentView:
    """A test run of ``journey`` with its steps, its messages and its next wake-up."""
    _require_marketing(user)
    enrollment = (
        Enrollment.objects.filter(pk=enrollment_id, journey=journey, test=True)
        .select_related("customer", "version").first()
    )
    if enrollment is None:
        raise Http404("No such test run.")
    steps = list(Step.objects.filter(enrollment=enrollment).order_by("at", "id"))
    view = _view(enrollment, enrollment.version.graph, steps)
    view.deliveries = list(
        Delivery.objects.filter(idempotency_key__startswith=f"{enrollment.pk}:").order_by("created_at", "id")
    )
    wakeup = WakeUp.objects.filter(enrollment=enrollment).values_list("due_at", flat=True).first()
    if wakeup and not enrollment.wake_at:
        enrollment.wake_at = wakeup
    return view


TEST_CANDIDATES = 10


def test_candidates(term: str) -> list[Customer]:
    """Customers to choose from for a test run: the customers search (email, external id,
    name, phone), newest first."""
    if not term.strip():
        return []
    return list(customers_search(term=term)[:TEST_CANDIDATES])


def test_customer(customer_id: str) -> Customer | None:
    """The customer chosen for a test run, from the form's value (None when there is none)."""
    return Customer.objects.filter(pk=int(customer_id)).first() if customer_id.isdigit() else None


def test_runs(journey: Journey, *, limit: int = 10) -> list[Enrollment]:
    """The journey's latest test runs."""
    return list(
        Enrollment.objects.filter(journey=journey, test=True).select_related("customer")
        .order_by("-entered_at", "-id")[:limit]
    )


# --- The customer page's Journeys card -------------------------------------------------------------

CARD_ENROLLMENTS = 20


@dataclass
class CustomerJourneys:
    views: list[EnrollmentView]
    total: int


def customer_journeys(*, user, customer_id: int) -> CustomerJourneys:
    """The customer's runs through journeys (test runs left out), in flight first, newest
    first, with their steps and next-best-action decisions: four queries whatever the count."""
    if not can_view_customers(user):
        raise PermissionDenied("Your account has no role that allows viewing customers.")
    runs = Enrollment.objects.filter(customer_id=customer_id, test=False)
    enrollments = list(
        runs.select_related("journey", "version")
        .only("id", "journey_id", "version_id", "customer_id", "node", "status", "entered_at", "ended_at",
              "wake_at", "updated_at", "journey__id", "journey__name", "version__id", "version__number",
              "version__graph")
        .prefetch_related(Prefetch("steps", queryset=Step.objects.order_by("at", "id")))
        .order_by(ExpressionWrapper(Q(ended_at__isnull=True), output_field=BooleanField()).desc(),
                  "-entered_at", "-id")[:CARD_ENROLLMENTS]
    )
    if len(enrollments) < CARD_ENROLLMENTS:
        total = len(enrollments)
    else:
        total = runs.count()
    decisions: dict[int, list[Decision]] = {}
    if enrollments:
        for decision in (Decision.objects.filter(enrollment_id__in=[e.pk for e in enrollments])
                         .select_related("action").order_by("decided_at", "id")):
            decisions.setdefault(decision.enrollment_id, []).append(decision)
    views = []
    for enrollment in enrollments:
        view = _view(enrollment, enrollment.version.graph, list(enrollment.steps.all()))
        view.decisions = decisions.get(enrollment.pk, [])
        views.append(view)
    return CustomerJourneys(views, total)


# --- Reads for the JSON API (journeys.api): an API key may read every journey, so these take no user.


def journey_figures(*, since: datetime) -> list[JourneyRow]:
    """:func:`journey_rows` without the user check (the API's caller is a key): every journey
    with its live version and figures, in one query whatever their number."""
    real = Q(enrollments__test=False)
    journeys = (
        Journey.objects.select_related("live_version")
        .only("id", "name", "description", "status", "updated_at", "live_version__id", "live_version__number",
              "live_version__published_at")
        .annotate(
            in_now=Count("enrollments", filter=real & Q(enrollments__ended_at__isnull=True)),
            entered_today=Count("enrollments", filter=real & Q(enrollments__entered_at__gte=since)),
            entered=Count("enrollments", filter=real),
            converted=Count("enrollments", filter=real & Q(enrollments__status=EnrollmentStatus.CONVERTED)),
            has_goal=ExpressionWrapper(Q(live_version__graph__settings__goal__isnull=False),
                                       output_field=BooleanField()),
        )
        .order_by("name")
    )
    return [JourneyRow(j, j.in_now, j.entered_today, j.entered, j.converted, bool(j.has_goal)) for j in journeys]


def _version_labels(version_ids: set[int]) -> tuple[dict[int, int], dict[int, dict[str, str]]]:
    """{version id: number} and {version id: {node id: label}} for the given versions, in one
    query (a page of enrollments mostly shares one or two versions)."""
    numbers, labels = {}, {}
    for pk, number, graph in JourneyVersion.objects.filter(pk__in=version_ids).values_list("pk", "number", "graph"):
        numbers[pk] = number
        labels[pk] = {node_id: graphs.node_label(node) for node_id, node in graphs.nodes_by_id(graph or {}).items()}
    return numbers, labels


def _due_at(enrollment: Enrollment) -> datetime | None:
    """The next wake-up, from the timer itself (loaded with ``select_related("wakeup")``)."""
    try:
        return enrollment.wakeup.due_at
    except WakeUp.DoesNotExist:  # no timer: the reverse accessor raises
        return None


def _enrollment_row(enrollment: Enrollment, numbers: dict, labels: dict) -> dict:
    return {
        "id": enrollment.pk, "journey": enrollment.journey_id, "version": numbers.get(enrollment.version_id, 0),
        "customer": {"id": enrollment.customer_id, "external_id": enrollment.customer.external_id,
                     "email": enrollment.customer.email},
        "node": enrollment.node,
        "node_label": labels.get(enrollment.version_id, {}).get(enrollment.node, enrollment.node),
        "status": enrollment.status, "test": enrollment.test, "entered_at": enrollment.entered_at,
        "updated_at": enrollment.updated_at, "ended_at": enrollment.ended_at, "wake_at": _due_at(enrollment),
        "context": enrollment.context,
    }


def enrollments_page(journey: Journey, *, node: str = "", status: str = "", test: bool = False,
                     before: int | None = None, limit: int = 100) -> tuple[list[dict], int | None]:
    """A page of the journey's enrollments, newest first, keyset on id (``before``: the last id
    of the previous page), and the id to continue before (None on the last page). Three
    queries whatever the page size."""
    rows = (Enrollment.objects.filter(journey=journey, test=test).select_related("customer", "wakeup")
            .order_by("-id"))
    if node:
        rows = rows.filter(node=node)
    if status:
        rows = rows.filter(status=status)
    if before is not None:
        rows = rows.filter(id__lt=before)
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    numbers, labels = _version_labels({e.version_id for e in page}) if page else ({}, {})
    return [_enrollment_row(e, numbers, labels) for e in page], (page[-1].pk if more else None)


def enrollment_row(enrollment_id: int) -> dict:
    """One enrollment as :func:`enrollments_page` shows it."""
    enrollment = Enrollment.objects.select_related("customer", "wakeup").get(pk=enrollment_id)
    numbers, labels = _version_labels({enrollment.version_id})
    return _enrollment_row(enrollment, numbers, labels)


def customer_enrollments(customer_id: int) -> list[dict]:
    """Every run of a customer through journeys (test runs left out), newest first: where they
    are, how they got there (the step log with each step's port) and the next wake-up. Like
    the customer page's card (:func:`customer_journeys`) but all of them: three queries."""
    enrollments = (
        Enrollment.objects.filter(customer_id=customer_id, test=False)
        .select_related("journey", "version", "wakeup")
        .only("id", "journey_id", "version_id", "customer_id", "node", "status", "entered_at", "ended_at",
              "journey__id", "journey__name", "version__id", "version__number", "version__graph",
              "wakeup__id", "wakeup__due_at")
        .prefetch_related(Prefetch("steps", queryset=Step.objects.order_by("at", "id")))
        .order_by("-entered_at", "-id")
    )
    result = []
    for enrollment in enrollments:
        steps = list(enrollment.steps.all())
        view = _view(enrollment, enrollment.version.graph, steps)
        result.append({
            "enrollment": enrollment.pk, "journey": {"id": enrollment.journey_id, "name": enrollment.journey.name},
            "version": enrollment.version.number, "node": enrollment.node, "node_label": view.node_label,
            "status": enrollment.status, "entered_at": enrollment.entered_at, "ended_at": enrollment.ended_at,
            "wake_at": _due_at(enrollment),
            "steps": [{"node": step.node, "label": line.label, "port": step.port, "visit": step.visit, "at": step.at}
                      for step, line in zip(steps, view.steps)],
        })
    return result


def enrollment_refusal(journey: Journey, *, customer_id: int, context: dict) -> str:
    """Why no new run of ``customer_id`` was let in, in a sentence: the tests
    ``executor.enter`` makes (the live version's re-entry rule, then its entry cap)."""
    settings_ = (journey.live_version.graph.get("settings") or {}) if journey.live_version_id else {}
    reentry = settings_.get("reentry") or {"mode": "once"}
    mode, prop = reentry.get("mode", "once"), reentry.get("property")
    run_key = str(context.get(prop, "")) if mode == "per_value" else ""
    earlier = Enrollment.objects.filter(journey=journey, customer_id=customer_id, run_key=run_key, test=False)
    current = earlier.filter(ended_at__isnull=True).order_by("-id").first()
    if current is not None:
        return (f"the customer is in this journey now (since {current.entered_at:%Y-%m-%d %H:%M} UTC), and the "
                "re-entry rule lets a customer run it only once at a time")
    last = earlier.order_by("-ended_at", "-id").first()
    if last is not None and mode == "once":
        return f"the re-entry rule lets each customer in once, and this customer entered on {last.entered_at:%Y-%m-%d}"
    if last is not None and mode == "per_value":
        return f"the re-entry rule allows one run per {prop}, and this customer already had one for {prop} {run_key!r}"
    if last is not None and mode == "after_exit" and last.ended_at:
        hours = reentry.get("cooldown_hours") or 0
        return (f"the re-entry rule waits {hours} hours after a customer leaves, and this customer left at "
                f"{last.ended_at:%Y-%m-%d %H:%M} UTC")
    cap = (settings_.get("caps") or {}).get("entries_per_day")
    if cap:
        return f"the journey's cap of {cap} entries a day is reached"
    return "the journey's re-entry rule let no new run in"


def published_node_ids(journey: Journey) -> set[str]:
    """Every node id of the journey's published versions: where customers in flight can be."""
    ids: set[str] = set()
    for graph in JourneyVersion.objects.filter(journey=journey, is_test=False).values_list("graph", flat=True):
        ids |= set(graphs.nodes_by_id(graph or {}))
    return ids


def published_graph(journey: Journey, number: int) -> dict | None:
    """The graph of the journey's published version ``number`` (None when there is no such version)."""
    return (JourneyVersion.objects.filter(journey=journey, number=number, is_test=False)
            .values_list("graph", flat=True).first())
