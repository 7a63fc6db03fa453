"""The rule language: validation, compilation to one SQL query, and per-customer explanation.

A rule tree is JSON (see the README, "Rule language")::

    {"all": [
      {"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
      {"event": "message.opened", "where": [{"prop": "channel", "op": "eq", "value": "email"}],
       "within_days": 21, "count": {"op": "eq", "value": 0}},
      {"any": [{"subscribed": {"topic": "coupons", "channel": "sms"}}, {"not": {"segment": 12}}]},
      {"reachable": "sms"}
    ]}

``validate`` returns a normalised tree (topic keys resolved to ids, counts filled in) or
raises :class:`RuleError` naming every problem by its path in the tree. ``compile_where``
turns a normalised tree into one SQL condition over ``customers_customer c``: behaviour
rules become semi-joins (``c.id IN (SELECT customer_id … GROUP BY … HAVING …)``), which
PostgreSQL runs as hash joins over the whole customer table, so a full evaluation is one
scan of each table it needs. ``explain`` evaluates every node of a tree for one customer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from customers.models import ChannelKind
from customers.validation import format_path, unstorable

TEXT_FIELDS = ("external_id", "email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage")
DATE_FIELDS = ("created_at", "updated_at", "last_seen_at")
BUILTIN_FIELDS = TEXT_FIELDS + DATE_FIELDS
NOT_NULL_FIELDS = {"email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage",
                   "created_at", "updated_at"}

COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
TEXT_OPS = {"eq", "ne", "in", "not_in", "contains", "starts_with", "exists", "not_exists"}
NUMBER_OPS = {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists", "not_exists"}
DATE_OPS = {"lt", "lte", "gt", "gte", "within_days", "before_days", "exists", "not_exists"}
BOOL_OPS = {"eq", "ne", "exists", "not_exists"}
ALL_OPS = TEXT_OPS | NUMBER_OPS | DATE_OPS
COUNT_OPS = set(COMPARE)
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # use with fullmatch
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")
MAX_DEPTH = 12
# within_days / before_days: a century either way is more than any audience needs, and keeps
# "now minus that many days" a date Python and PostgreSQL can both represent.
MAX_DAYS = 36_500
MAX_NODES = 200


class RuleError(ValueError):
    """A rule tree that cannot be used; ``errors`` lists {path, message} for each problem."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass
class Dependencies:
    """What a rule tree reads, so a change re-evaluates only the segments it can affect."""

    event_names: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)  # "lifecycle_stage", "attributes.plan"
    subscriptions: bool = False
    reachability: set[str] = field(default_factory=set)  # channels
    segments: set[int] = field(default_factory=set)
    time_based: bool = False

    def as_dict(self) -> dict:
        return {
            "event_names": sorted(self.event_names),
            "fields": sorted(self.fields),
            "subscriptions": self.subscriptions,
            "reachability": sorted(self.reachability),
            "segments": sorted(self.segments),
            "time_based": self.time_based,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Dependencies":
        return cls(
            event_names=set(data.get("event_names", ())),
            fields=set(data.get("fields", ())),
            subscriptions=bool(data.get("subscriptions")),
            reachability=set(data.get("reachability", ())),
            segments=set(data.get("segments", ())),
            time_based=bool(data.get("time_based")),
        )


# --- Validation ---------------------------------------------------------------------------


class _Validator:
    def __init__(self, *, topics: dict[str, int], segment_ids: set[int], self_id: int | None):
        self.topics = topics
        self.segment_ids = segment_ids
        self.self_id = self_id
        self.errors: list[dict] = []
        self.nodes = 0

    def fail(self, path: str, message: str) -> None:
        self.errors.append({"path": path, "message": message})

    def node(self, rule: Any, path: str, depth: int) -> dict | None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            self.fail(path, f"rules are nested more than {MAX_DEPTH} levels deep")
            return None
        if not isinstance(rule, dict):
            self.fail(path, "a rule must be an object such as {\"attr\": …} or {\"all\": […]}")
            return None
        kinds = [k for k in ("all", "any", "not", "attr", "event", "subscribed", "reachable", "segment") if k in rule]
        if len(kinds) != 1:
            self.fail(
                path,
                "a rule needs exactly one of all, any, not, attr, event, subscribed, reachable, segment"
                + (f" (found {', '.join(kinds)})" if kinds else f" (found {', '.join(map(str, rule)) or 'nothing'})"),
            )
            return None
        kind = kinds[0]
        return getattr(self, f"_{kind}")(rule, path, depth)

    def _unknown_keys(self, rule: dict, allowed: set[str], path: str) -> None:
        for key in rule:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")

    def _group(self, rule, path, depth, kind):
        self._unknown_keys(rule, {kind}, path)
        children = rule[kind]
        if not isinstance(children, list) or not children:
            self.fail(f"{path}.{kind}", f"'{kind}' needs a non-empty list of rules")
            return None
        normalised = [self.node(child, f"{path}.{kind}[{i}]", depth + 1) for i, child in enumerate(children)]
        return {kind: normalised}

    def _all(self, rule, path, depth):
        return self._group(rule, path, depth, "all")

    def _any(self, rule, path, depth):
        return self._group(rule, path, depth, "any")

    def _not(self, rule, path, depth):
        self._unknown_keys(rule, {"not"}, path)
        return {"not": self.node(rule["not"], f"{path}.not", depth + 1)}

    def _attr(self, rule, path, depth):
        self._unknown_keys(rule, {"attr", "op", "value"}, path)
        name = rule["attr"]
        if not isinstance(name, str):
            self.fail(f"{path}.attr", "attr must be a field name such as lifecycle_stage or attributes.plan")
            return None
        if name.startswith("attributes."):
            key = name.removeprefix("attributes.")
            if not KEY.fullmatch(key):
                self.fail(f"{path}.attr", f"'{key}' is not an attribute name (letters, digits and _)")
                return None
            kind = None  # decided by the value
        elif name in TEXT_FIELDS:
            kind = "text"
        elif name in DATE_FIELDS:
            kind = "date"
        else:
            self.fail(
                f"{path}.attr",
                f"unknown field '{name}'; use one of {', '.join(BUILTIN_FIELDS)} or attributes.<key>",
            )
            return None
        condition = self._condition(rule, path, kind, subject=name)
        if condition is None:
            return None
        return {"attr": name, **condition}

    def _condition(self, rule: dict, path: str, kind: str | None, *, subject: str) -> dict | None:
        """Validate op/value for ``kind`` (text, date, or None: inferred from the value)."""
        op = rule.get("op")
        if op not in ALL_OPS:
            self.fail(f"{path}.op", f"unknown operator {op!r}; use one of {', '.join(sorted(ALL_OPS))}")
            return None
        if op in ("exists", "not_exists"):
            if "value" in rule and rule["value"] is not None:
                self.fail(f"{path}.value", f"'{op}' takes no value")
                return None
            return {"op": op, "type": kind or "any"}
        if "value" not in rule:
            self.fail(f"{path}.value", f"'{op}' needs a value")
            return None
        value = rule["value"]
        if op in ("within_days", "before_days"):
            if kind not in (None, "date"):
                self.fail(f"{path}.op", f"'{op}' compares dates, and {subject} is text")
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DAYS:
                self.fail(f"{path}.value", f"'{op}' needs a number of days from 0 to {MAX_DAYS:,}")
                return None
            return {"op": op, "value": value, "type": "date"}
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(f"{path}.value", f"'{op}' needs a non-empty list of values")
                return None
            types = {_value_type(v) for v in value}
            if len(types) != 1 or types & {None, "bool"}:
                self.fail(f"{path}.value", f"'{op}' needs a list of all strings or all numbers")
                return None
            value_type = types.pop()
        else:
            value_type = _value_type(value)
            if value_type is None:
                self.fail(f"{path}.value", "value must be a string, a number, a boolean or an ISO date")
                return None
        if kind == "text" and value_type not in ("text", "date"):
            self.fail(f"{path}.value", f"{subject} is text; compare it with a string")
            return None
        if kind == "text":
            value_type = "text"
        if kind == "date":
            if value_type != "date" or op not in DATE_OPS:
                self.fail(
                    f"{path}.op" if op not in DATE_OPS else f"{path}.value",
                    f"{subject} is a date: use lt, lte, gt, gte with an ISO date, or within_days / before_days",
                )
                return None
        allowed = {"text": TEXT_OPS, "number": NUMBER_OPS, "date": DATE_OPS | {"eq", "ne"}, "bool": BOOL_OPS}[value_type]
        if op not in allowed:
            self.fail(f"{path}.op", f"'{op}' does not apply to a {value_type} value; use one of {', '.join(sorted(allowed))}")
            return None
        if value_type == "date" and op in ("eq", "ne"):
            value_type = "text"  # exact match on the stored text
        elif value_type == "date" and not _is_real_date(value):
            self.fail(f"{path}.value", f"'{value}' is not a real date and time")
            return None
        return {"op": op, "value": value, "type": value_type}

    def _event(self, rule, path, depth):
        self._unknown_keys(rule, {"event", "where", "within_days", "count"}, path)
        name = rule["event"]
        if not isinstance(name, str) or not name or len(name) > 128:
            self.fail(f"{path}.event", "event must be an event name such as order_completed")
            return None
        out: dict = {"event": name, "where": []}
        where = rule.get("where", [])
        if not isinstance(where, list):
            self.fail(f"{path}.where", "where must be a list of {prop, op, value} conditions")
            return None
        for i, condition in enumerate(where):
            cpath = f"{path}.where[{i}]"
            if not isinstance(condition, dict) or not isinstance(condition.get("prop"), str) or not KEY.fullmatch(
                condition.get("prop", "")
            ):
                self.fail(f"{cpath}.prop", "each condition needs a prop (a property name of the event)")
                continue
            self._unknown_keys(condition, {"prop", "op", "value"}, cpath)
            checked = self._condition(condition, cpath, None, subject=f"property {condition['prop']}")
            if checked is not None:
                out["where"].append({"prop": condition["prop"], **checked})
        if "within_days" in rule and rule["within_days"] is not None:
            days = rule["within_days"]
            if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= MAX_DAYS:
                self.fail(f"{path}.within_days", f"within_days must be a positive number of days, at most {MAX_DAYS:,}")
            else:
                out["within_days"] = days
        count = rule.get("count", {"op": "gte", "value": 1})
        if (
            not isinstance(count, dict)
            or count.get("op") not in COUNT_OPS
            or isinstance(count.get("value"), bool)
            or not isinstance(count.get("value"), int)
            or count["value"] < 0
        ):
            self.fail(f"{path}.count", "count must be {\"op\": eq|ne|lt|lte|gt|gte, \"value\": a whole number ≥ 0}")
        else:
            out["count"] = {"op": count["op"], "value": count["value"]}
        return out

    def _subscribed(self, rule, path, depth):
        self._unknown_keys(rule, {"subscribed"}, path)
        spec = rule["subscribed"]
        if not isinstance(spec, dict):
            self.fail(f"{path}.subscribed", "subscribed needs {\"topic\": key, \"channel\": channel}")
            return None
        topic, channel = spec.get("topic"), spec.get("channel")
        ok = True
        if topic not in self.topics:
            known = ", ".join(sorted(self.topics)) or "none yet"
            self.fail(f"{path}.subscribed.topic", f"unknown topic {topic!r} (known topics: {known})")
            ok = False
        if channel not in ChannelKind.values:
            self.fail(f"{path}.subscribed.channel", f"unknown channel {channel!r}; use one of {', '.join(ChannelKind.values)}")
            ok = False
        return {"subscribed": {"topic": topic, "topic_id": self.topics.get(topic), "channel": channel}} if ok else None

    def _reachable(self, rule, path, depth):
        self._unknown_keys(rule, {"reachable"}, path)
        channel = rule["reachable"]
        if channel not in ChannelKind.values:
            self.fail(f"{path}.reachable", f"unknown channel {channel!r}; use one of {', '.join(ChannelKind.values)}")
            return None
        return {"reachable": channel}

    def _segment(self, rule, path, depth):
        self._unknown_keys(rule, {"segment"}, path)
        segment_id = rule["segment"]
        if isinstance(segment_id, bool) or not isinstance(segment_id, int):
            self.fail(f"{path}.segment", "segment must be a segment id (a number)")
            return None
        if segment_id == self.self_id:
            self.fail(f"{path}.segment", "a segment cannot include itself")
            return None
        if segment_id not in self.segment_ids:
            self.fail(f"{path}.segment", f"no segment has id {segment_id}")
            return None
        return {"segment": segment_id}


def _is_real_date(value: str) -> bool:
    """Whether an ISO_DATE-shaped string names a moment that exists (no month 13, no year 0)."""
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _value_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "date" if ISO_DATE.fullmatch(value) else "text"
    return None


def validate(rules: Any, *, topics: dict[str, int], segment_ids: set[int], self_id: int | None = None) -> dict:
    """Check a rule tree and return its normalised form, or raise :class:`RuleError`.

    ``topics`` maps topic keys to ids; ``segment_ids`` are the segments a rule may refer to.
    Cycles through other segments are checked by the caller, which knows their rules.
    """
    # NUL characters and NaN / Infinity cannot reach SQL parameters or stored JSON.
    unusable = [{"path": format_path(("rules", *where)), "message": message} for where, message in unstorable(rules)]
    if unusable:
        raise RuleError(unusable)
    validator = _Validator(topics=topics, segment_ids=segment_ids, self_id=self_id)
    normalised = validator.node(rules, "rules", 0)
    if validator.nodes > MAX_NODES:
        validator.fail("rules", f"a segment can have at most {MAX_NODES} rules")
    if validator.errors:
        raise RuleError(validator.errors)
    return normalised


def leaves(node: dict):
    """The conditions of a normalised tree, left to right, without the groups around them."""
    if "all" in node or "any" in node:
        for child in node.get("all") or node.get("any"):
            yield from leaves(child)
    elif "not" in node:
        yield from leaves(node["not"])
    else:
        yield node


def dependencies(rules: dict) -> Dependencies:
    deps = Dependencies()
    for node in leaves(rules):
        if "attr" in node:
            deps.fields.add(node["attr"])
            if node["op"] in ("within_days", "before_days"):
                deps.time_based = True
        elif "event" in node:
            deps.event_names.add(node["event"])
            if "within_days" in node or any(c["op"] in ("within_days", "before_days") for c in node["where"]):
                deps.time_based = True
        elif "subscribed" in node:
            deps.subscriptions = True
        elif "reachable" in node:
            deps.reachability.add(node["reachable"])
        elif "segment" in node:
            deps.segments.add(node["segment"])
    return deps


# --- Compilation --------------------------------------------------------------------------------


class _Sql:
    """Collects parameters for SQL text; placeholders are named (``%(p3)s``), so the text
    can be assembled in any order and a fragment can be used more than once."""

    def __init__(self, now: datetime, customer_ids: list[int] | None):
        self.params: dict[str, Any] = {}
        self.now = now
        self.customer_ids = customer_ids

    def param(self, value: Any) -> str:
        key = f"p{len(self.params)}"
        self.params[key] = value
        return f"%({key})s"


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _value_sql(sql: _Sql, expr_text: str, expr_json: str | None, cond: dict, *, nullable: bool = True) -> str:
    """A boolean SQL condition for ``cond`` on a value.

    ``expr_text`` is the value as text (``c.email`` or ``c.attributes->>'plan'``);
    ``expr_json`` the jsonb value for JSON sources (None for built-in columns);
    ``nullable`` False for NOT NULL columns, whose conditions stay index-friendly.
    """
    op, kind, value = cond["op"], cond["type"], cond.get("value")
    if op in ("exists", "not_exists"):
        if expr_json:
            present = f"({expr_json} IS NOT NULL AND {expr_json} <> 'null'::jsonb)"
        elif kind == "date":
            present = f"({expr_text} IS NOT NULL)"
        else:
            present = f"({expr_text} IS NOT NULL AND {expr_text} <> '')"
        return present if op == "exists" else f"(NOT {present})"
    if kind == "number":
        # CASE, not AND: PostgreSQL may evaluate AND operands in any order, and casting a
        # JSON string to numeric fails.
        number = f"(CASE WHEN jsonb_typeof({expr_json}) = 'number' THEN ({expr_json})::numeric END)"
        if op == "in":
            return f"({number} = ANY({sql.param([float(v) for v in value])}::numeric[]))"
        if op == "not_in":
            return f"({number} IS NULL OR NOT ({number} = ANY({sql.param([float(v) for v in value])}::numeric[])))"
        if op == "ne":
            return f"({number} IS NULL OR {number} <> {sql.param(value)}::numeric)"
        return f"({number} {COMPARE[op]} {sql.param(value)}::numeric)"
    if kind == "bool":
        test = f"{expr_json} = {sql.param('true' if value else 'false')}::jsonb"
        return f"({test})" if op == "eq" else f"({expr_json} IS NULL OR NOT ({test}))"
    if kind == "date":
        stamp = f"sb_to_timestamptz({expr_text})" if expr_json else expr_text
        if op == "within_days":
            return f"({stamp} >= {sql.param(sql.now - timedelta(days=value))} AND {stamp} <= {sql.param(sql.now)})"
        if op == "before_days":
            return f"({stamp} < {sql.param(sql.now - timedelta(days=value))})"
        return f"({stamp} {COMPARE[op]} {sql.param(value)}::timestamptz)"
    # text
    text = f"coalesce({expr_text}, '')" if nullable else expr_text
    if op == "eq":
        return f"({text} = {sql.param(value)})"
    if op == "ne":
        return f"({text} <> {sql.param(value)})"
    if op == "in":
        return f"({text} = ANY({sql.param([str(v) for v in value])}::text[]))"
    if op == "not_in":
        return f"(NOT ({text} = ANY({sql.param([str(v) for v in value])}::text[])))"
    if op == "contains":
        return f"({text} ILIKE {sql.param('%' + _like(value) + '%')})"
    if op == "starts_with":
        return f"({text} ILIKE {sql.param(_like(value) + '%')})"
    if op in COMPARE:
        return f"({text} {COMPARE[op]} {sql.param(value)})"
    raise AssertionError(f"unhandled operator {op}")


def _attr_sql(sql: _Sql, node: dict) -> str:
    name = node["attr"]
    if name.startswith("attributes."):
        key = name.removeprefix("attributes.")
        if node["op"] == "eq" and node["type"] in ("text", "number", "bool"):
            # Containment uses the GIN index on attributes.
            import json

            return f"(c.attributes @> {sql.param(json.dumps({key: node['value']}))}::jsonb)"
        # Keys are validated as identifiers, so they can be written into the SQL as literals;
        # placeholders here would repeat whenever the expression does.
        condition = _value_sql(sql, f"(c.attributes->>'{key}')", f"(c.attributes->'{key}')", node)
    elif name in NOT_NULL_FIELDS:
        # Never NULL, so no COALESCE: the planner then sees a plain column condition.
        return _value_sql(sql, f"c.{name}", None, node, nullable=False)
    else:
        condition = _value_sql(sql, f"c.{name}", None, node)
    # A missing value makes a comparison NULL; under NOT that must still read as "false".
    return f"COALESCE({condition}, FALSE)"


def _ids_filter(sql: _Sql, column: str) -> str:
    if sql.customer_ids is None:
        return ""
    return f" AND {column} = ANY({sql.param(sql.customer_ids)}::bigint[])"


def _event_filter(sql: _Sql, node: dict) -> str:
    parts = [f"e.name = {sql.param(node['event'])}"]
    if "within_days" in node:
        parts.append(f"e.occurred_at >= {sql.param(sql.now - timedelta(days=node['within_days']))}")
    for cond in node["where"]:
        prop = cond["prop"]
        parts.append(_value_sql(sql, f"(e.properties->>'{prop}')", f"(e.properties->'{prop}')", cond))
    return " AND ".join(parts)


def _event_sql(sql: _Sql, node: dict) -> str:
    """Customers whose count of matching events satisfies ``count``, as a semi-join."""
    op, n = node["count"]["op"], node["count"]["value"]
    zero_passes = _compare(0, op, n)
    # The customers with at least one matching event whose count decides against
    # (zero_passes) or for (not zero_passes) membership.
    having = f"NOT (count(*) {COMPARE[op]} {n})" if zero_passes else f"count(*) {COMPARE[op]} {n}"
    simple = (op, n) in (("gte", 1), ("gt", 0), ("eq", 0), ("lt", 1), ("lte", 0))
    if zero_passes and simple:
        # "Did not do X": an anti-join, which PostgreSQL can run (and spill) at any size.
        return f"(NOT EXISTS (SELECT 1 FROM customers_event e WHERE e.customer_id = c.id AND {_event_filter(sql, node)}))"
    inner = (
        f"SELECT e.customer_id FROM customers_event e WHERE {_event_filter(sql, node)}"
        f"{_ids_filter(sql, 'e.customer_id')}"
    )
    if not simple:
        inner += f" GROUP BY e.customer_id HAVING {having}"
    return f"(c.id NOT IN ({inner}))" if zero_passes else f"(c.id IN ({inner}))"


def _compare(left: int, op: str, right: int) -> bool:
    return {"eq": left == right, "ne": left != right, "lt": left < right, "lte": left <= right,
            "gt": left > right, "gte": left >= right}[op]


REACHABLE_ADDRESS = {
    ChannelKind.EMAIL: "c.email <> ''",
    ChannelKind.SMS: "c.phone <> ''",
    ChannelKind.WHATSAPP: "c.phone <> ''",
    ChannelKind.VOICE: "c.phone <> ''",
    ChannelKind.PUSH: "c.id IN (SELECT d.customer_id FROM customers_device d)",
}


def _reachable_sql(sql: _Sql, channel: str) -> str:
    p = sql.param(channel)
    return (
        f"({REACHABLE_ADDRESS[ChannelKind(channel)]}"
        f" AND c.id NOT IN (SELECT s.customer_id FROM customers_consentstate s WHERE s.channel = {p} AND NOT s.granted)"
        f" AND c.id NOT IN (SELECT a.customer_id FROM customers_channelstatus a WHERE a.channel = {sql.param(channel)}"
        f" AND a.status <> 'ok'))"
    )


def _node_sql(sql: _Sql, node: dict) -> str:
    if "all" in node:
        return "(" + " AND ".join(_node_sql(sql, child) for child in node["all"]) + ")"
    if "any" in node:
        return "(" + " OR ".join(_node_sql(sql, child) for child in node["any"]) + ")"
    if "not" in node:
        return f"(NOT {_node_sql(sql, node['not'])})"
    if "attr" in node:
        return _attr_sql(sql, node)
    if "event" in node:
        return _event_sql(sql, node)
    if "subscribed" in node:
        spec = node["subscribed"]
        return (
            f"(c.id IN (SELECT s.customer_id FROM customers_subscription s WHERE s.topic_id = {sql.param(spec['topic_id'])}"
            f" AND s.channel = {sql.param(spec['channel'])} AND s.subscribed{_ids_filter(sql, 's.customer_id')}))"
        )
    if "reachable" in node:
        return _reachable_sql(sql, node["reachable"])
    if "segment" in node:
        return (
            f"(c.id IN (SELECT m.customer_id FROM segments_segmentmembership m WHERE m.segment_id = "
            f"{sql.param(node['segment'])}{_ids_filter(sql, 'm.customer_id')}))"
        )
    raise AssertionError(f"unhandled rule {node}")


def compile_query(rules: dict, *, now: datetime, customer_ids: list[int] | None = None) -> tuple[str, dict]:
    """``SELECT c.id FROM customers_customer c WHERE …`` for a normalised tree.

    With ``customer_ids`` the query considers only those customers (incremental updates).
    """
    sql = _Sql(now, customer_ids)
    driver, rest = _driver(rules)
    if driver is not None:
        # Nothing reads the customer row itself: start from the table that selects the
        # audience (subscriptions, events, a segment's members) instead of scanning every
        # customer, as one would write it by hand.
        source = _driver_sql(sql, driver)
        where = " AND ".join(_node_sql(sql, node) for node in rest) or "TRUE"
        return f"SELECT c.id FROM ({source}) c WHERE {where}", sql.params
    where = _node_sql(sql, rules)
    ids = _ids_filter(sql, "c.id")
    return f"SELECT c.id FROM customers_customer c WHERE {where}{ids}", sql.params


def _reads_customer_row(node: dict) -> bool:
    return any("attr" in leaf or "reachable" in leaf for leaf in leaves(node))


def _selects_customers(node: dict) -> bool:
    """A leaf whose matches are exactly the customer ids of one subquery."""
    if "subscribed" in node or "segment" in node:
        return True
    if "event" in node:
        return not _compare(0, node["count"]["op"], node["count"]["value"])
    return False


def _driver(rules: dict) -> tuple[dict | None, list[dict]]:
    """The leaf to start from (and the other conditions), when no rule reads the customer row."""
    if _reads_customer_row(rules):
        return None, []
    children = rules["all"] if "all" in rules else [rules]
    for child in children:
        if _selects_customers(child):
            return child, [other for other in children if other is not child]
    return None, []


def _driver_sql(sql: _Sql, node: dict) -> str:
    """``SELECT <customer id> AS id …`` with one row per matching customer."""
    if "subscribed" in node:
        spec = node["subscribed"]
        return (
            f"SELECT s.customer_id AS id FROM customers_subscription s WHERE s.topic_id = {sql.param(spec['topic_id'])}"
            f" AND s.channel = {sql.param(spec['channel'])} AND s.subscribed{_ids_filter(sql, 's.customer_id')}"
        )
    if "segment" in node:
        return (
            f"SELECT m.customer_id AS id FROM segments_segmentmembership m WHERE m.segment_id = "
            f"{sql.param(node['segment'])}{_ids_filter(sql, 'm.customer_id')}"
        )
    op, n = node["count"]["op"], node["count"]["value"]
    return (
        f"SELECT e.customer_id AS id FROM customers_event e WHERE {_event_filter(sql, node)}"
        f"{_ids_filter(sql, 'e.customer_id')} GROUP BY e.customer_id HAVING count(*) {COMPARE[op]} {n}"
    )


# --- Time windows -------------------------------------------------------------------------------


def window_crossings_query(rules: dict, *, since: datetime, now: datetime) -> tuple[str, dict] | None:
    """Customers whose relative time windows may have changed between ``since`` and ``now``.

    A rule like "opened an email in the last 21 days" changes for a customer only when one
    of their matching events ages past the window edge, i.e. occurred in
    [since − 21 days, now − 21 days); a date attribute likewise only when its value crosses
    an edge. Returns (sql, params) selecting those customer ids, or None when the tree has
    no relative windows.
    """
    sql = _Sql(now, None)
    parts: list[str] = []

    def edges(days) -> tuple[str, str]:
        return sql.param(since - timedelta(days=days)), sql.param(now - timedelta(days=days))

    for node in leaves(rules):
        if "event" in node:
            # Any event of that name crossing an edge is enough to re-evaluate the customer;
            # the recomputation itself applies the rest of the rule exactly.
            moments = [("e.occurred_at", node["within_days"])] if "within_days" in node else []
            moments += [
                (f"sb_to_timestamptz(e.properties->>'{c['prop']}')", c["value"])
                for c in node["where"]
                if c["op"] in ("within_days", "before_days")
            ]
            for moment, days in moments:
                low, high = edges(days)
                parts.append(
                    f"SELECT e.customer_id FROM customers_event e WHERE e.name = {sql.param(node['event'])}"
                    f" AND {moment} >= {low} AND {moment} < {high}"
                )
        elif "attr" in node and node["op"] in ("within_days", "before_days"):
            name = node["attr"]
            value = f"sb_to_timestamptz(c.attributes->>'{name.removeprefix('attributes.')}')" if name.startswith(
                "attributes."
            ) else f"c.{name}"
            low, high = edges(node["value"])
            parts.append(f"SELECT c.id FROM customers_customer c WHERE {value} >= {low} AND {value} < {high}")
            if node["op"] == "within_days":
                # Future dates entering the window's upper edge ("now").
                parts.append(
                    f"SELECT c.id FROM customers_customer c WHERE {value} > {sql.param(since)} AND {value} <= {sql.param(now)}"
                )

    if not parts:
        return None
    return " UNION ".join(parts), sql.params


# --- Explanation --------------------------------------------------------------------------------


def _leaf_value_sql(sql: _Sql, node: dict) -> str:
    """An SQL expression (as text) for the value that decides a leaf, for one customer ``c``."""
    if "attr" in node:
        name = node["attr"]
        if name.startswith("attributes."):
            return f"(c.attributes->'{name.removeprefix('attributes.')}')::text"
        return f"c.{name}::text"
    if "event" in node:
        return f"(SELECT count(*) FROM customers_event e WHERE e.customer_id = c.id AND {_event_filter(sql, node)})::text"
    if "subscribed" in node:
        spec = node["subscribed"]
        return (
            f"(SELECT CASE WHEN s.subscribed THEN 'subscribed' ELSE 'unsubscribed' END FROM customers_subscription s "
            f"WHERE s.customer_id = c.id AND s.topic_id = {sql.param(spec['topic_id'])} AND s.channel = {sql.param(spec['channel'])})"
        )
    if "reachable" in node:
        channel = node["reachable"]
        return (
            f"concat_ws(', ', CASE WHEN {REACHABLE_ADDRESS[ChannelKind(channel)]} THEN 'has an address' ELSE 'no address' END,"
            f" (SELECT CASE WHEN s.granted THEN 'consent granted' ELSE 'consent revoked' END FROM customers_consentstate s"
            f" WHERE s.customer_id = c.id AND s.channel = {sql.param(channel)}),"
            f" (SELECT a.status FROM customers_channelstatus a WHERE a.customer_id = c.id AND a.channel = {sql.param(channel)}"
            f" AND a.status <> 'ok'))"
        )
    if "segment" in node:
        return (
            f"(SELECT CASE WHEN count(*) > 0 THEN 'member' ELSE 'not a member' END FROM segments_segmentmembership m"
            f" WHERE m.segment_id = {sql.param(node['segment'])} AND m.customer_id = c.id)"
        )
    raise AssertionError(node)


def explain_query(rules: dict, *, customer_id: int, now: datetime) -> tuple[str, dict, list[dict]]:
    """One query that evaluates every leaf of ``rules`` for one customer.

    Returns (sql, params, leaves): the row holds ``passed, value`` for each leaf in order.
    """
    conditions = list(leaves(rules))
    sql = _Sql(now, [customer_id])
    columns = []
    for leaf in conditions:
        columns.append(f"{_node_sql(sql, leaf)}")
        columns.append(_leaf_value_sql(sql, leaf))
    query = f"SELECT {', '.join(columns)} FROM customers_customer c WHERE c.id = {sql.param(customer_id)}"
    return query, sql.params, conditions


def explain_tree(rules: dict, leaf_results: list[tuple[bool, str | None]]) -> dict:
    """Combine per-leaf results into a tree of {rule, passed, value, children}."""
    results = iter(leaf_results)

    def build(node):
        for kind in ("all", "any"):
            if kind in node:
                children = [build(child) for child in node[kind]]
                passed = all(c["passed"] for c in children) if kind == "all" else any(c["passed"] for c in children)
                return {"kind": kind, "passed": passed, "children": children, "summary": describe(node)}
        if "not" in node:
            child = build(node["not"])
            return {"kind": "not", "passed": not child["passed"], "children": [child], "summary": describe(node)}
        passed, value = next(results)
        return {"kind": "leaf", "passed": bool(passed), "value": value, "children": [], "summary": describe(node)}

    return build(rules)


OP_WORDS = {
    "eq": "is", "ne": "is not", "lt": "is less than", "lte": "is at most", "gt": "is more than", "gte": "is at least",
    "in": "is one of", "not_in": "is none of", "contains": "contains", "starts_with": "starts with",
    "exists": "is set", "not_exists": "is not set", "within_days": "is within the last", "before_days": "is more than",
}


def _value_words(cond: dict) -> str:
    op, value = cond["op"], cond.get("value")
    if op in ("exists", "not_exists"):
        return ""
    if op == "within_days":
        return f" {value} days"
    if op == "before_days":
        return f" {value} days ago"
    if isinstance(value, list):
        return " " + ", ".join(map(str, value))
    return f" {value!r}" if isinstance(value, str) else f" {value}"


def describe(node: dict) -> str:
    """A sentence for one node, as a marketer would read it."""
    if "all" in node:
        return "All of these are true"
    if "any" in node:
        return "At least one of these is true"
    if "not" in node:
        return "This is not true"
    if "attr" in node:
        return f"{node['attr']} {OP_WORDS[node['op']]}{_value_words(node)}"
    if "event" in node:
        count = node["count"]
        text = f"{node['event']} happened"
        if (count["op"], count["value"]) == ("gte", 1):
            text += " at least once"
        elif (count["op"], count["value"]) == ("eq", 0):
            text = f"{node['event']} did not happen"
        else:
            text += f" {OP_WORDS[count['op']].removeprefix('is ')} {count['value']} times"
        if node["where"]:
            text += " where " + " and ".join(f"{c['prop']} {OP_WORDS[c['op']]}{_value_words(c)}" for c in node["where"])
        if "within_days" in node:
            text += f" in the last {node['within_days']} days"
        return text
    if "subscribed" in node:
        return f"subscribed to {node['subscribed']['topic']} by {node['subscribed']['channel']}"
    if "reachable" in node:
        return f"reachable by {node['reachable']}"
    if "segment" in node:
        return f"member of segment {node['segment']}"
    return str(node)

