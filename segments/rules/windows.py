"""Time windows: which customers a relative window ("in the last 21 days") may have moved since the last pass."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..history import source_for
from .compile import _Sql
from .language import leaves


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
                    f"SELECT e.customer_id FROM {source_for(node['event'])} e WHERE e.name = {sql.param(node['event'])}"
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
