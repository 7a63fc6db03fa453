"""Validation: a rule tree as a client sent it, checked and normalised, or every problem by path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from customers.models import ChannelKind
from customers.validation import format_path, unstorable

from .language import (
    ALL_OPS,
    BOOL_OPS,
    BUILTIN_FIELDS,
    COUNT_OPS,
    DATE_FIELDS,
    DATE_OPS,
    ISO_DATE,
    KEY,
    MAX_DAYS,
    MAX_DEPTH,
    MAX_NODES,
    NUMBER_OPS,
    TEXT_FIELDS,
    TEXT_OPS,
    RuleError,
)


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
