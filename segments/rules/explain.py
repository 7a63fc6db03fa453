"""Explanation: every condition of a tree evaluated for one customer, and trees in words."""

from __future__ import annotations

from datetime import datetime

from customers import reachability

from ..history import source_for
from .compile import _event_filter, _node_sql, _Sql
from .language import leaves


def _leaf_value_sql(sql: _Sql, node: dict) -> str:
    """An SQL expression (as text) for the value that decides a leaf, for one customer ``c``."""
    if "attr" in node:
        name = node["attr"]
        if name.startswith("attributes."):
            return f"(c.attributes->'{name.removeprefix('attributes.')}')::text"
        return f"c.{name}::text"
    if "event" in node:
        return (f"(SELECT count(*) FROM {source_for(node['event'])} e WHERE e.customer_id = c.id"
                f" AND {_event_filter(sql, node)})::text")
    if "subscribed" in node:
        spec = node["subscribed"]
        return (
            f"(SELECT CASE WHEN s.subscribed THEN 'subscribed' ELSE 'unsubscribed' END FROM customers_subscription s "
            f"WHERE s.customer_id = c.id AND s.topic_id = {sql.param(spec['topic_id'])} AND s.channel = {sql.param(spec['channel'])})"
        )
    if "reachable" in node:
        cases = reachability.reason_cases(channel=node["reachable"], status="a.status", granted="s.granted")
        return (
            f"(SELECT coalesce(CASE {cases} END, 'reachable') FROM (SELECT 1) one"
            f" LEFT JOIN customers_channelstatus a ON a.customer_id = c.id AND a.channel = {sql.param(node['reachable'])}"
            f" LEFT JOIN customers_consentstate s ON s.customer_id = c.id AND s.channel = {sql.param(node['reachable'])})"
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
        columns.append(_node_sql(sql, leaf, two_valued=True))
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
