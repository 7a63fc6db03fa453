"""The journey graph: our own schema, its node types and ports, and its validation.

A graph is JSON::

    {"nodes": [{"id": "welcome", "type": "send", "label": "Welcome email",
                "config": {...}, "x": 120, "y": 40}, ...],
     "edges": [{"from": "start", "port": "out", "to": "welcome"}, ...],
     "settings": {"reentry": {"mode": "once"}, "goal": {"event": "order_completed"},
                  "exits": [{"event": "account_closed"}], "caps": {"entries_per_day": 1000}}}

Node ids are stable across versions (a publish maps old nodes to new ones by id). The
canvas's own JSON is only a view of this: positions and labels are kept here, and the
server validates everything else. :func:`problems` lists every problem by node and field;
:func:`validate` raises :class:`GraphError` with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PORT_RE = re.compile(r"[a-z0-9_-]{1,64}")
EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
PROPERTY_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
TIME_RE = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
CHANNELS = ("email", "sms", "whatsapp", "voice", "push")
MAX_NODES = 200
MAX_MINUTES = 60 * 24 * 366

# Node types: what a marketer calls them, and a one-line description for the palette.
NODE_TYPES: dict[str, tuple[str, str]] = {
    "trigger": ("Trigger", "How customers enter: an event, a segment, a date or the API"),
    "send": ("Send", "A message on a channel, through the send policy"),
    "wait": ("Wait", "A delay, a time of day, a date, or an event with a timeout"),
    "condition": ("Condition", "Yes or no, on the rule language and the journey's context"),
    "split": ("Random split", "Weighted branches, stable per customer, with a holdout"),
    "nba": ("Next best action", "Pick the best action from the catalog for this customer"),
    "update": ("Update profile", "Set an attribute or lifecycle stage, or change a subscription"),
    "webhook": ("Webhook", "POST the customer and context to a URL, signed"),
    "task": ("Hand to a person", "A task for support; branch on its outcome"),
    "exit": ("Exit", "The journey ends here"),
}
# Nodes a customer waits at: a cycle must pass one of these, or it would spin.
WAITING_TYPES = {"wait", "task", "webhook"}
CONTEXT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "not_exists")
REENTRY_MODES = ("once", "after_exit", "per_value")


@dataclass(frozen=True)
class Problem:
    node: str | None
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"node": self.node, "field": self.field, "message": self.message}


class GraphError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.node or 'journey'}: {p.field}: {p.message}" for p in problems))


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else []


def ports(node: dict) -> list[str]:
    """The ports a node leaves by, in the order the canvas shows them (of a draft too: a
    config of the wrong shape has no ports rather than an error; validation names it)."""
    kind, config = node.get("type"), node.get("config")
    config = config if isinstance(config, dict) else {}
    if kind == "trigger":
        return ["out"]
    if kind == "send":
        return ["sent", "suppressed"]
    if kind == "wait":
        return ["event", "timeout"] if config.get("kind") == "event" else ["out"]
    if kind == "condition":
        return ["yes", "no"]
    if kind == "split":
        names = [str(b.get("port")) for b in _listed(config.get("branches")) if isinstance(b, dict)]
        holdout = config.get("holdout")
        positive = isinstance(holdout, int) and not isinstance(holdout, bool) and holdout > 0
        return names + (["holdout"] if positive else [])
    if kind == "nba":
        return [str(key) for key in _listed(config.get("actions"))] + ["none"]
    if kind == "update":
        return ["out"]
    if kind == "webhook":
        return ["ok", "failed"]
    if kind == "task":
        return [str(o) for o in _listed(config.get("outcomes"))] + ["timeout"]
    return []


def node_label(node: dict) -> str:
    return node.get("label") or NODE_TYPES.get(node.get("type"), (node.get("type") or "Node",))[0]


def nodes_by_id(graph: dict) -> dict[str, dict]:
    return {n["id"]: n for n in graph.get("nodes") or [] if isinstance(n, dict) and "id" in n}


def next_node(graph: dict, node_id: str, port: str) -> str | None:
    for edge in graph.get("edges") or []:
        if edge.get("from") == node_id and edge.get("port") == port:
            return edge.get("to")
    return None


def trigger(graph: dict) -> dict | None:
    for node in graph.get("nodes") or []:
        if node.get("type") == "trigger":
            return node
    return None


def empty_graph() -> dict:
    """What a new journey starts with: a trigger and an exit, joined."""
    return {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "Trigger", "config": {}, "x": 80, "y": 60},
            {"id": "end", "type": "exit", "label": "Exit", "config": {}, "x": 80, "y": 240},
        ],
        "edges": [{"from": "start", "port": "out", "to": "end"}],
        "settings": {"reentry": {"mode": "once"}},
    }


# --- Validation --------------------------------------------------------------------------------


@dataclass
class Catalog:
    """What a graph may refer to, looked up once: topic keys, segment ids, action keys."""

    topics: dict[str, int]
    transactional: set[str]
    segments: set[int]
    actions: set[str]

    @classmethod
    def load(cls) -> "Catalog":
        from customers.models import Topic
        from segments.models import Segment

        from .models import Action

        topics = dict(Topic.objects.values_list("key", "id"))
        return cls(
            topics=topics,
            transactional=set(Topic.objects.filter(is_transactional=True).values_list("key", flat=True)),
            segments=set(Segment.objects.values_list("id", flat=True)),
            actions=set(Action.objects.filter(active=True).values_list("key", flat=True)),
        )


def trigger_filter(config: dict, now) -> tuple[str, dict]:
    """The trigger's property filters (``config["where"]``) as a condition on an event ``e``,
    with its parameters."""
    from segments.rules import compile_event_filter, validate

    where = config.get("where") or []
    if where:
        catalog = Catalog.load()
        where = validate({"event": "x", "where": where}, topics=catalog.topics, segment_ids=catalog.segments)["where"]
    return compile_event_filter(where, now=now)


class _Checker:
    def __init__(self, graph: Any, catalog: Catalog):
        self.graph = graph
        self.catalog = catalog
        self.found: list[Problem] = []

    def fail(self, node: str | None, field: str, message: str) -> None:
        self.found.append(Problem(node, field, message))

    # The whole graph ------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        graph = self.graph
        if not isinstance(graph, dict):
            self.fail(None, "graph", "must be an object with nodes, edges and settings")
            return self.found
        unknown = set(graph) - {"nodes", "edges", "settings"}
        if unknown:
            self.fail(None, "graph", f"unknown keys: {', '.join(sorted(unknown))}")
        nodes = graph.get("nodes")
        edges = graph.get("edges", [])
        if not isinstance(nodes, list):
            self.fail(None, "nodes", "must be a list")
            return self.found
        if not isinstance(edges, list):
            self.fail(None, "edges", "must be a list")
            edges = []
        if len(nodes) > MAX_NODES:
            self.fail(None, "nodes", f"at most {MAX_NODES} nodes")
            return self.found
        by_id: dict[str, dict] = {}
        for index, node in enumerate(nodes):
            if not isinstance(node, dict):
                self.fail(None, f"nodes[{index}]", "must be an object")
                continue
            node_id = node.get("id")
            if not isinstance(node_id, str) or not ID_RE.fullmatch(node_id):
                self.fail(None, f"nodes[{index}].id", "must be 1-64 letters, digits, '_' or '-'")
                continue
            if node_id in by_id:
                self.fail(node_id, "id", "is used by more than one node")
                continue
            by_id[node_id] = node
            self.node(node)
        triggers = [n for n in by_id.values() if n.get("type") == "trigger"]
        if len(triggers) != 1:
            self.fail(None, "nodes", f"a journey needs exactly one trigger (found {len(triggers)})")
        self.edges(edges, by_id)
        if len(triggers) == 1:
            self.reachable(triggers[0]["id"], by_id)
        self.cycles(by_id)
        self.settings(graph.get("settings") or {}, triggers[0] if len(triggers) == 1 else None)
        return self.found

    def edges(self, edges: list, by_id: dict[str, dict]) -> None:
        seen: dict[tuple[str, str], int] = {}
        self.out: dict[str, list[str]] = {node_id: [] for node_id in by_id}
        for index, edge in enumerate(edges):
            where = f"edges[{index}]"
            if not isinstance(edge, dict) or set(edge) - {"from", "port", "to"}:
                self.fail(None, where, "must be an object with from, port and to")
                continue
            source, port, target = edge.get("from"), edge.get("port"), edge.get("to")
            if not isinstance(source, str) or source not in by_id:
                self.fail(None, f"{where}.from", f"no node {source!r}")
                continue
            if not isinstance(target, str) or target not in by_id:
                self.fail(source, f"{where}.to", f"no node {target!r}")
                continue
            if port not in ports(by_id[source]):
                self.fail(source, f"ports.{port}", f"{node_label(by_id[source])} has no port {port!r}")
                continue
            if by_id[target].get("type") == "trigger":
                self.fail(target, "in", "nothing may lead into the trigger")
                continue
            if (source, port) in seen:
                self.fail(source, f"ports.{port}", "is connected more than once")
                continue
            seen[(source, port)] = index
            self.out[source].append(target)
        for node_id, node in by_id.items():
            for port in ports(node):
                if (node_id, port) not in seen:
                    self.fail(node_id, f"ports.{port}", f"the {port!r} port is not connected")

    def reachable(self, start: str, by_id: dict[str, dict]) -> None:
        seen, stack = {start}, [start]
        while stack:
            for target in self.out.get(stack.pop(), []):
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        for node_id in by_id:
            if node_id not in seen:
                self.fail(node_id, "in", "cannot be reached from the trigger")

    def cycles(self, by_id: dict[str, dict]) -> None:
        """A cycle that passes no waiting node would run forever in one step."""
        moving = {node_id for node_id, node in by_id.items() if node.get("type") not in WAITING_TYPES}
        state: dict[str, int] = {}
        reported: set[str] = set()

        def visit(node_id: str, path: list[str]) -> None:
            state[node_id] = 1
            path.append(node_id)
            for target in self.out.get(node_id, []):
                if target not in moving:
                    continue
                if state.get(target) == 1:
                    loop = path[path.index(target):]
                    if target not in reported:
                        reported.add(target)
                        self.fail(target, "out", "is on a loop with no wait: " + " → ".join(loop + [target]))
                elif target not in state:
                    visit(target, path)
            path.pop()
            state[node_id] = 2

        for node_id in moving:
            if node_id not in state:
                visit(node_id, [])

    # One node --------------------------------------------------------------------------------

    def node(self, node: dict) -> None:
        node_id, kind = node["id"], node.get("type")
        if kind not in NODE_TYPES:
            self.fail(node_id, "type", f"unknown node type {kind!r}; one of {', '.join(NODE_TYPES)}")
            return
        unknown = set(node) - {"id", "type", "label", "config", "x", "y"}
        if unknown:
            self.fail(node_id, "node", f"unknown keys: {', '.join(sorted(unknown))}")
        label = node.get("label", "")
        if not isinstance(label, str) or len(label) > 120:
            self.fail(node_id, "label", "must be text of at most 120 characters")
        for axis in ("x", "y"):
            if axis in node and not isinstance(node[axis], (int, float)):
                self.fail(node_id, axis, "must be a number")
        config = node.get("config", {})
        if not isinstance(config, dict):
            self.fail(node_id, "config", "must be an object")
            return
        getattr(self, f"_{kind}")(node_id, config)

    def _need(self, node_id: str, config: dict, key: str, what: str) -> Any:
        value = config.get(key)
        if value in (None, "", [], {}):
            self.fail(node_id, f"config.{key}", f"{what} is required")
            return None
        return value

    def _int(self, node_id: str | None, config: dict, key: str, *, low: int, high: int, required: bool = True,
             prefix: str = "config") -> int | None:
        value = config.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(node_id, f"{prefix}.{key}", f"must be a whole number from {low} to {high}")
            return None
        return value

    def _event_name(self, node_id: str, field: str, value: Any) -> None:
        if not isinstance(value, str) or not EVENT_RE.fullmatch(value):
            self.fail(node_id, field, "must be an event name (letters, digits, '_', '.', ':' or '-')")

    def _time(self, node_id: str, field: str, value: Any) -> None:
        if not isinstance(value, str) or not TIME_RE.fullmatch(value):
            self.fail(node_id, field, "must be a time of day as HH:MM")

    def _segment(self, node_id: str, field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(node_id, field, "must be a segment id")
        elif value not in self.catalog.segments:
            self.fail(node_id, field, f"segment {value} does not exist")

    def _filters(self, node_id: str, field: str, where: Any) -> None:
        """Property filters of an event trigger or wait: the rule language's ``where``."""
        if where in (None, []):
            return
        from segments.rules import RuleError, validate

        rule = {"event": "x", "where": where, "count": {"op": "gte", "value": 1}}
        try:
            validate(rule, topics=self.catalog.topics, segment_ids=self.catalog.segments)
        except RuleError as error:
            for item in error.errors:
                self.fail(node_id, f"{field}{item.get('path', '').removeprefix('rules').removeprefix('.where')}",
                          item.get("message", ""))

    def _trigger(self, node_id: str, config: dict) -> None:
        kind = self._need(node_id, config, "kind", "how customers enter")
        if kind is None:
            return
        if kind == "event":
            self._event_name(node_id, "config.event", config.get("event"))
            self._filters(node_id, "config.where", config.get("where"))
        elif kind in ("segment_entered", "segment_exited"):
            self._segment(node_id, "config.segment", config.get("segment"))
        elif kind == "date":
            attr = config.get("attr")
            if not isinstance(attr, str) or not re.fullmatch(r"attributes\.[A-Za-z0-9_-]{1,64}", attr):
                self.fail(node_id, "config.attr", "must name a date attribute, e.g. attributes.birthday")
            self._int(node_id, config, "offset_days", low=-365, high=365)
            self._time(node_id, "config.at", config.get("at"))
        elif kind != "api":
            self.fail(node_id, "config.kind", "must be event, segment_entered, segment_exited, date or api")

    def _send(self, node_id: str, config: dict) -> None:
        from campaigns.personalisation import TemplateProblem, compile_content

        topic = self._need(node_id, config, "topic", "a topic")
        if topic is not None and (not isinstance(topic, str) or topic not in self.catalog.topics):
            self.fail(node_id, "config.topic", f"topic {topic!r} does not exist")
        channel = self._need(node_id, config, "channel", "a channel")
        content = config.get("content")
        if not isinstance(content, dict) or not content:
            self.fail(node_id, "config.content", "content for at least one channel is required")
            return
        if channel is not None and channel != "preferred" and channel not in CHANNELS:
            self.fail(node_id, "config.channel", f"must be 'preferred' or one of {', '.join(CHANNELS)}")
        elif channel in CHANNELS and channel not in content:
            self.fail(node_id, f"config.content.{channel}", f"content for {channel} is required")
        for name, body in content.items():
            if name not in CHANNELS:
                self.fail(node_id, f"config.content.{name}", "is not a channel")
                continue
            try:
                compile_content(name, body if isinstance(body, dict) else {})
            except TemplateProblem as problem:
                self.fail(node_id, f"config.content.{name}.{problem.field}", problem.message)

    def _wait(self, node_id: str, config: dict) -> None:
        kind = self._need(node_id, config, "kind", "what to wait for")
        if kind == "duration":
            self._int(node_id, config, "minutes", low=1, high=MAX_MINUTES)
        elif kind == "time_of_day":
            self._time(node_id, "config.at", config.get("at"))
            days = config.get("weekdays", [])
            if not isinstance(days, list) or any(d not in range(7) for d in days):
                self.fail(node_id, "config.weekdays", "must be a list of weekdays, 0 (Monday) to 6 (Sunday)")
        elif kind == "date_attr":
            attr = config.get("attr")
            if not isinstance(attr, str) or not re.fullmatch(r"attributes\.[A-Za-z0-9_-]{1,64}", attr):
                self.fail(node_id, "config.attr", "must name a date attribute, e.g. attributes.renewal_date")
            self._int(node_id, config, "offset_days", low=-365, high=365)
            self._time(node_id, "config.at", config.get("at"))
        elif kind == "event":
            self._event_name(node_id, "config.event", config.get("event"))
            match = config.get("match", "")
            if match and (not isinstance(match, str) or not PROPERTY_RE.fullmatch(match)):
                self.fail(node_id, "config.match", "must be a property name of the entry event")
            self._int(node_id, config, "timeout_minutes", low=1, high=MAX_MINUTES)
        elif kind is not None:
            self.fail(node_id, "config.kind", "must be duration, time_of_day, date_attr or event")

    def _condition(self, node_id: str, config: dict) -> None:
        from segments.rules import RuleError, validate

        rule, context = config.get("rule"), config.get("context") or []
        if not rule and not context:
            self.fail(node_id, "config.rule", "a rule or a context condition is required")
        if rule:
            try:
                validate(rule, topics=self.catalog.topics, segment_ids=self.catalog.segments)
            except RuleError as error:
                for item in error.errors:
                    self.fail(node_id, f"config.rule{item.get('path', '').removeprefix('rules')}", item.get("message", ""))
        if not isinstance(context, list):
            self.fail(node_id, "config.context", "must be a list of conditions")
            return
        for index, item in enumerate(context):
            where = f"config.context[{index}]"
            if not isinstance(item, dict):
                self.fail(node_id, where, "must be an object with path, op and value")
                continue
            path = item.get("path")
            if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,4}", path):
                self.fail(node_id, f"{where}.path", "must be a dotted path into the context, e.g. entry.cart_total")
            op = item.get("op")
            if op not in CONTEXT_OPS:
                self.fail(node_id, f"{where}.op", f"must be one of {', '.join(CONTEXT_OPS)}")
            elif op in ("gt", "gte", "lt", "lte") and (
                isinstance(item.get("value"), bool) or not isinstance(item.get("value"), (int, float))
            ):
                self.fail(node_id, f"{where}.value", "must be a number")
            elif op == "in" and not isinstance(item.get("value"), list):
                self.fail(node_id, f"{where}.value", "must be a list")

    def _split(self, node_id: str, config: dict) -> None:
        branches = config.get("branches")
        if not isinstance(branches, list) or not 2 <= len(branches) <= 10:
            self.fail(node_id, "config.branches", "from 2 to 10 branches are required")
            return
        names = set()
        for index, branch in enumerate(branches):
            where = f"config.branches[{index}]"
            if not isinstance(branch, dict):
                self.fail(node_id, where, "must be an object with port and weight")
                continue
            port, weight = branch.get("port"), branch.get("weight")
            if not isinstance(port, str) or not PORT_RE.fullmatch(port) or port == "holdout":
                self.fail(node_id, f"{where}.port", "must be a lower-case name (not 'holdout')")
            elif port in names:
                self.fail(node_id, f"{where}.port", f"{port!r} is used twice")
            names.add(port)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
                self.fail(node_id, f"{where}.weight", "must be a whole number from 1 to 100")
        self._int(node_id, config, "holdout", low=0, high=50, required=False)

    def _nba(self, node_id: str, config: dict) -> None:
        actions = config.get("actions")
        if not isinstance(actions, list) or not actions:
            self.fail(node_id, "config.actions", "choose at least one action from the catalog")
            return
        for index, key in enumerate(actions):
            if not isinstance(key, str) or key not in self.catalog.actions:
                self.fail(node_id, f"config.actions[{index}]", f"no active action {key!r} in the catalog")
            if key == "none":
                self.fail(node_id, f"config.actions[{index}]", "'none' is the port for no action")
        if len(set(map(str, actions))) != len(actions):
            self.fail(node_id, "config.actions", "lists an action twice")
        self._int(node_id, config, "holdout", low=0, high=50, required=False)

    def _update(self, node_id: str, config: dict) -> None:
        kind = self._need(node_id, config, "kind", "what to update")
        if kind == "attribute":
            key = config.get("key")
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
                self.fail(node_id, "config.key", "must be an attribute name (letters, digits, '_' or '-')")
            if "value" not in config:
                self.fail(node_id, "config.value", "a value is required")
        elif kind == "lifecycle_stage":
            value = config.get("value")
            if not isinstance(value, str) or not 1 <= len(value) <= 64:
                self.fail(node_id, "config.value", "must be a stage name of 1-64 characters")
        elif kind == "subscription":
            topic = config.get("topic")
            if not isinstance(topic, str) or topic not in self.catalog.topics:
                self.fail(node_id, "config.topic", f"topic {topic!r} does not exist")
            if config.get("channel") not in CHANNELS:
                self.fail(node_id, "config.channel", f"must be one of {', '.join(CHANNELS)}")
            if not isinstance(config.get("subscribed"), bool):
                self.fail(node_id, "config.subscribed", "must be true or false")
        elif kind is not None:
            self.fail(node_id, "config.kind", "must be attribute, lifecycle_stage or subscription")

    def _webhook(self, node_id: str, config: dict) -> None:
        from .webhooks import url_problem

        url = self._need(node_id, config, "url", "a URL")
        if url is not None:
            problem = url_problem(url)
            if problem:
                self.fail(node_id, "config.url", problem)
        store = config.get("store_as", "")
        if store and (not isinstance(store, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", store)):
            self.fail(node_id, "config.store_as", "must be a context key (letters, digits, '_' or '-')")
        self._int(node_id, config, "timeout_seconds", low=1, high=30, required=False)
        self._int(node_id, config, "retries", low=0, high=10, required=False)

    def _task(self, node_id: str, config: dict) -> None:
        title = self._need(node_id, config, "title", "a title")
        if title is not None and (not isinstance(title, str) or len(title) > 200):
            self.fail(node_id, "config.title", "must be text of at most 200 characters")
        outcomes = config.get("outcomes")
        if not isinstance(outcomes, list) or not 1 <= len(outcomes) <= 8:
            self.fail(node_id, "config.outcomes", "from 1 to 8 outcomes are required")
        else:
            for index, outcome in enumerate(outcomes):
                if not isinstance(outcome, str) or not PORT_RE.fullmatch(outcome) or outcome == "timeout":
                    self.fail(node_id, f"config.outcomes[{index}]", "must be a lower-case name (not 'timeout')")
            if len(set(map(str, outcomes))) != len(outcomes):
                self.fail(node_id, "config.outcomes", "lists an outcome twice")
        self._int(node_id, config, "timeout_hours", low=1, high=24 * 90)

    def _exit(self, node_id: str, config: dict) -> None:
        pass

    # Journey settings ------------------------------------------------------------------------

    def settings(self, settings: Any, trigger_node: dict | None) -> None:
        if not isinstance(settings, dict):
            self.fail(None, "settings", "must be an object")
            return
        unknown = set(settings) - {"reentry", "goal", "exits", "caps"}
        if unknown:
            self.fail(None, "settings", f"unknown keys: {', '.join(sorted(unknown))}")
        reentry = settings.get("reentry") or {"mode": "once"}
        mode = reentry.get("mode") if isinstance(reentry, dict) else None
        if mode not in REENTRY_MODES:
            self.fail(None, "settings.reentry.mode", f"must be one of {', '.join(REENTRY_MODES)}")
        elif mode == "after_exit":
            self._int(None, reentry, "cooldown_hours", low=0, high=24 * 365, required=False,
                      prefix="settings.reentry")
        elif mode == "per_value":
            prop = reentry.get("property")
            if not isinstance(prop, str) or not PROPERTY_RE.fullmatch(prop):
                self.fail(None, "settings.reentry.property", "must name a property of the trigger event")
            trigger_config = (trigger_node or {}).get("config")
            kind = trigger_config.get("kind") if isinstance(trigger_config, dict) else None
            if trigger_node is not None and kind not in ("event", "api"):
                self.fail(None, "settings.reentry.mode", "once per value needs an event or API trigger")
        goal = settings.get("goal")
        if goal:
            if not isinstance(goal, dict) or len(goal) != 1 or not ({"event", "segment"} & set(goal)):
                self.fail(None, "settings.goal", "must be {\"event\": name} or {\"segment\": id}")
            elif "event" in goal:
                self._event_name(None, "settings.goal.event", goal["event"])
            else:
                self._segment(None, "settings.goal.segment", goal["segment"])
        exits = settings.get("exits") or []
        if not isinstance(exits, list):
            self.fail(None, "settings.exits", "must be a list")
            exits = []
        for index, rule in enumerate(exits):
            where = f"settings.exits[{index}]"
            if not isinstance(rule, dict) or len(rule) != 1:
                self.fail(None, where, "must be {\"event\": …}, {\"segment_left\": id} or {\"unsubscribed\": topic}")
            elif "event" in rule:
                self._event_name(None, f"{where}.event", rule["event"])
            elif "segment_left" in rule:
                self._segment(None, f"{where}.segment_left", rule["segment_left"])
            elif "unsubscribed" in rule:
                topic = rule["unsubscribed"]
                if not isinstance(topic, str) or topic not in self.catalog.topics:
                    self.fail(None, f"{where}.unsubscribed", f"topic {rule['unsubscribed']!r} does not exist")
            else:
                self.fail(None, where, "must be {\"event\": …}, {\"segment_left\": id} or {\"unsubscribed\": topic}")
        caps = settings.get("caps") or {}
        if not isinstance(caps, dict) or set(caps) - {"entries_per_day", "sends_per_customer"}:
            self.fail(None, "settings.caps", "may hold entries_per_day and sends_per_customer")
        else:
            self._int(None, caps, "entries_per_day", low=1, high=10_000_000, required=False, prefix="settings.caps")
            self._int(None, caps, "sends_per_customer", low=1, high=1000, required=False, prefix="settings.caps")


def problems(graph: Any, catalog: Catalog | None = None) -> list[Problem]:
    """Every problem of ``graph``, by node and field (node None for the journey's settings)."""
    return _Checker(graph, catalog or Catalog.load()).run()


def validate(graph: Any, catalog: Catalog | None = None) -> dict:
    """The graph, if it has no problem; raises :class:`GraphError` naming them all."""
    found = problems(graph, catalog)
    if found:
        raise GraphError(found)
    return graph


def test_wait_seconds() -> int:
    """How long every wait lasts in test mode."""
    return int(getattr(django_settings, "JOURNEY_TEST_WAIT_SECONDS", 5))
