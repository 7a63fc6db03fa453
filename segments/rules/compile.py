"""Compilation: a normalised tree to one SQL query over ``customers_customer c``."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from customers import reachability

from ..history import source_for
from .language import COMPARE, NOT_NULL_FIELDS, leaves


class _Sql:
    """Collects parameters for SQL text; placeholders are named (``%(p3)s``), so the text
    can be assembled in any order and a fragment can be used more than once."""

    def __init__(self, now: datetime, customer_ids: list[int] | None, prefix: str = "p"):
        self.params: dict[str, Any] = {}
        self.now = now
        self.customer_ids = customer_ids
        self.prefix = prefix

    def param(self, value: Any) -> str:
        key = f"{self.prefix}{len(self.params)}"
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


def _json_value_sql(sql: _Sql, column: str, key: str, cond: dict) -> str:
    """A condition on ``column``'s ``key`` (a JSON object's member: an attribute, a property).

    Keys are validated as identifiers, so they are written into the SQL as literals. A
    number compared by order is one jsonpath match, ``column @? 'strict $."key" ? (@ >= 1900)'``:
    one jsonb operator a row where a cast needs a type test, an extraction and a numeric
    conversion, and the planner estimates it as a match, not as a range over unknown
    values. Strict mode: a string, an array or a missing key never compares (the operator
    answers NULL for a missing key, which a WHERE reads as false).
    """
    if cond["type"] == "number" and cond["op"] in ("lt", "lte", "gt", "gte"):
        number = format(Decimal(repr(cond["value"])), "f")
        path = f'strict $."{key}" ? (@ {COMPARE[cond["op"]]} {number})'
        return f"({column} @? {sql.param(path)}::jsonpath)"
    return _value_sql(sql, f"({column}->>'{key}')", f"({column}->'{key}')", cond)


def _attr_sql(sql: _Sql, node: dict, *, two_valued: bool) -> str:
    name = node["attr"]
    if name.startswith("attributes."):
        key = name.removeprefix("attributes.")
        if node["op"] == "eq" and node["type"] in ("text", "number", "bool"):
            # Containment uses the GIN index on attributes.
            import json

            return f"(c.attributes @> {sql.param(json.dumps({key: node['value']}))}::jsonb)"
        condition = _json_value_sql(sql, "c.attributes", key, node)
    elif name in NOT_NULL_FIELDS:
        # Never NULL, so no COALESCE: the planner then sees a plain column condition.
        return _value_sql(sql, f"c.{name}", None, node, nullable=False)
    else:
        condition = _value_sql(sql, f"c.{name}", None, node)
    if not two_valued:
        # A missing value makes the comparison NULL, which a WHERE reads as false: without a
        # NOT above it, AND and OR give the same rows as with FALSE, and the planner
        # estimates the plain condition far better than a COALESCE around it.
        return condition
    # Under NOT, NULL must still read as "false" (NOT NULL is NULL, not true).
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
        parts.append(_json_value_sql(sql, "e.properties", cond["prop"], cond))
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
        return (f"(NOT EXISTS (SELECT 1 FROM {source_for(node['event'])} e WHERE e.customer_id = c.id"
                f" AND {_event_filter(sql, node)}))")
    inner = (
        f"SELECT e.customer_id FROM {source_for(node['event'])} e WHERE {_event_filter(sql, node)}"
        f"{_ids_filter(sql, 'e.customer_id')}"
    )
    if not simple:
        inner += f" GROUP BY e.customer_id HAVING {having}"
    return f"(c.id NOT IN ({inner}))" if zero_passes else f"(c.id IN ({inner}))"


def _compare(left: int, op: str, right: int) -> bool:
    return {"eq": left == right, "ne": left != right, "lt": left < right, "lte": left <= right,
            "gt": left > right, "gte": left >= right}[op]


def _node_sql(sql: _Sql, node: dict, *, two_valued: bool = False) -> str:
    """A SQL condition for ``node``; ``two_valued`` when it must be TRUE or FALSE, never NULL
    (below a NOT, or read as a value)."""
    if "all" in node:
        return "(" + " AND ".join(_node_sql(sql, child, two_valued=two_valued) for child in node["all"]) + ")"
    if "any" in node:
        return "(" + " OR ".join(_node_sql(sql, child, two_valued=two_valued) for child in node["any"]) + ")"
    if "not" in node:
        return f"(NOT {_node_sql(sql, node['not'], two_valued=True)})"
    if "attr" in node:
        return _attr_sql(sql, node, two_valued=two_valued)
    if "event" in node:
        return _event_sql(sql, node)
    if "subscribed" in node:
        spec = node["subscribed"]
        return (
            f"(c.id IN (SELECT s.customer_id FROM customers_subscription s WHERE s.topic_id = {sql.param(spec['topic_id'])}"
            f" AND s.channel = {sql.param(spec['channel'])} AND s.subscribed{_ids_filter(sql, 's.customer_id')}))"
        )
    if "reachable" in node:
        return reachability.customers_where(node["reachable"])
    if "segment" in node:
        return (
            f"(c.id IN (SELECT m.customer_id FROM segments_segmentmembership m WHERE m.segment_id = "
            f"{sql.param(node['segment'])}{_ids_filter(sql, 'm.customer_id')}))"
        )
    raise AssertionError(f"unhandled rule {node}")


def compile_query(rules: dict, *, now: datetime, customer_ids: list[int] | None = None,
                  prefix: str = "p") -> tuple[str, dict]:
    """``SELECT c.id FROM customers_customer c WHERE …`` for a normalised tree.

    With ``customer_ids`` the query considers only those customers (incremental updates).
    Parameters are named ``<prefix>0``, ``<prefix>1``…, so several compiled trees can share
    one statement under different prefixes.
    """
    sql = _Sql(now, customer_ids, prefix)
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


def compile_event_filter(where: list[dict], *, now: datetime, prefix: str = "ef") -> tuple[str, dict]:
    """A boolean SQL condition on an event row ``e`` for a normalised ``where`` list (the
    property filters of an event rule), with its parameters named ``<prefix>0``, … so it can
    sit in a query beside another compiled tree."""
    sql = _Sql(now, None, prefix)
    parts = [_json_value_sql(sql, "e.properties", cond["prop"], cond) for cond in where]
    return " AND ".join(parts) or "TRUE", sql.params


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
        f"SELECT e.customer_id AS id FROM {source_for(node['event'])} e WHERE {_event_filter(sql, node)}"
        f"{_ids_filter(sql, 'e.customer_id')} GROUP BY e.customer_id HAVING count(*) {COMPARE[op]} {n}"
    )
