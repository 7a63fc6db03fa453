"""The vocabulary of the rule language: fields, operators, limits, errors, what a tree reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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
