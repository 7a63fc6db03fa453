"""Writes for the next-best-action catalog: create, change, and retire actions.

Every write checks all of its input at once and raises :class:`~core.errors.InputError`
naming each bad field (an eligibility rule's problems by their path, ``eligibility.all[0].op``),
and is recorded in the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from customers.schemas import EVENT_NAME
from customers.validation import EARLIEST, LATEST

from .graph import PORT_RE
from .models import Action, Decision, Journey, JourneyVersion
from .nba import NONE_PORT, compile_rule

# Upper bounds of the stored decimals (max_digits - decimal_places digits before the point).
MAX_VALUE = Decimal("9999999999.99")
MAX_PRIORITY = Decimal("9999.99")
MAX_OFFERS = 1000
MAX_DAYS = 3650

# What a write may set; offered and accepted are learnt, never written by a person.
FIELDS = (
    "key", "name", "kind", "description", "eligibility", "valid_from", "valid_until", "value", "priority",
    "max_offers", "window_days", "cooldown_after_accept_days", "cooldown_after_reject_days",
    "accept_event", "reject_event", "active",
)
DEFAULTS: dict[str, Any] = {
    "kind": Action.Kind.OFFER.value, "description": "", "eligibility": None, "valid_from": None, "valid_until": None,
    "value": Decimal("1"), "priority": Decimal("1"), "max_offers": 3, "window_days": 30,
    "cooldown_after_accept_days": 30, "cooldown_after_reject_days": 7, "reject_event": "", "active": True,
}


class _Checker:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def text(self, field: str, value: Any, *, limit: int, required: bool) -> str | None:
        if not isinstance(value, str):
            self.fail(field, "must be text")
            return None
        value = value.strip()
        if required and not value:
            self.fail(field, "is required")
        elif len(value) > limit:
            self.fail(field, f"must be at most {limit} characters")
        return value

    def decimal(self, field: str, value: Any, *, high: Decimal) -> Decimal | None:
        if isinstance(value, bool):
            self.fail(field, "must be a number")
            return None
        try:
            number = Decimal(str(value))
        except (InvalidOperation, ValueError):
            self.fail(field, "must be a number")
            return None
        if not number.is_finite():
            self.fail(field, "must be a number")
        elif number < 0:
            self.fail(field, "must be 0 or more")
        elif number > high:
            self.fail(field, f"must be at most {high:,}")
        elif number != number.quantize(Decimal("0.01")):
            self.fail(field, "must have at most 2 decimal places")
        else:
            return number.quantize(Decimal("0.01"))
        return None

    def whole(self, field: str, value: Any, *, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, "must be a whole number")
            return None
        if not low <= value <= high:
            self.fail(field, f"must be from {low} to {high:,}")
            return None
        return value

    def moment(self, field: str, value: Any) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            self.fail(field, "must be a date and time")
            return None
        if timezone.is_naive(value):
            self.fail(field, "must include a time zone")
            return None
        if not EARLIEST <= value < LATEST:
            self.fail(field, "must be between 1970 and 2100")
            return None
        # In UTC: Python reads offsets up to ±23:59, PostgreSQL stores at most ±15:59.
        return value.astimezone(UTC)

    def event(self, field: str, value: Any, *, required: bool) -> str | None:
        value = self.text(field, value, limit=128, required=required)
        if value and not EVENT_NAME.fullmatch(value):
            self.fail(field, "must be an event name: a letter, then letters, digits, '_', '.', ':' or '-'")
        return value


def _checked(values: dict[str, Any], *, action: Action | None) -> dict[str, Any]:
    """``values`` cleaned, with ``eligibility_compiled`` for a rule; InputError naming every problem."""
    check = _Checker()
    clean: dict[str, Any] = {}
    if "key" in values:
        key = check.text("key", values["key"], limit=64, required=True)
        if action is not None:
            if key != action.key:
                check.fail("key", "cannot change: journeys leave their next-best-action nodes by it")
        elif key:
            if not PORT_RE.fullmatch(key) or key == NONE_PORT:
                check.fail("key", "must be lower-case letters, digits, '_' or '-' (and not 'none')")
            elif Action.objects.filter(key=key).exists():
                check.fail("key", f"an action with the key '{key}' already exists")
            else:
                clean["key"] = key
    if "name" in values:
        clean["name"] = check.text("name", values["name"], limit=120, required=True)
    if "kind" in values:
        if values["kind"] not in Action.Kind.values:
            check.fail("kind", f"must be one of {', '.join(Action.Kind.values)}")
        else:
            clean["kind"] = values["kind"]
    if "description" in values:
        clean["description"] = check.text("description", values["description"], limit=2000, required=False)
    if "eligibility" in values:
        rules = values["eligibility"]
        if rules in (None, {}):
            clean["eligibility"] = clean["eligibility_compiled"] = None
        else:
            from segments.rules import RuleError

            try:
                clean["eligibility_compiled"] = compile_rule(rules)
                clean["eligibility"] = rules
            except RuleError as exc:
                for error in exc.errors:
                    check.fail("eligibility" + error["path"].removeprefix("rules"), error["message"])
    for field in ("valid_from", "valid_until"):
        if field in values:
            clean[field] = check.moment(field, values[field])
    if "value" in values:
        clean["value"] = check.decimal("value", values["value"], high=MAX_VALUE)
    if "priority" in values:
        clean["priority"] = check.decimal("priority", values["priority"], high=MAX_PRIORITY)
    if "max_offers" in values:
        clean["max_offers"] = check.whole("max_offers", values["max_offers"], low=1, high=MAX_OFFERS)
    if "window_days" in values:
        clean["window_days"] = check.whole("window_days", values["window_days"], low=1, high=MAX_DAYS)
    for field in ("cooldown_after_accept_days", "cooldown_after_reject_days"):
        if field in values:
            clean[field] = check.whole(field, values[field], low=0, high=MAX_DAYS)
    if "accept_event" in values:
        clean["accept_event"] = check.event("accept_event", values["accept_event"], required=True)
    if "reject_event" in values:
        clean["reject_event"] = check.event("reject_event", values["reject_event"], required=False)
    if "active" in values:
        if not isinstance(values["active"], bool):
            check.fail("active", "must be true or false")
        else:
            clean["active"] = values["active"]
    # Rules across fields, on the values the action will have.
    merged = {field: getattr(action, field) for field in FIELDS} if action is not None else {}
    merged.update(clean)
    start, end = merged.get("valid_from"), merged.get("valid_until")
    if start is not None and end is not None and end <= start and not _failed(check, "valid_from", "valid_until"):
        check.fail("valid_until", "must be after valid_from")
    accept, reject = merged.get("accept_event"), merged.get("reject_event")
    if accept and reject and accept == reject and not _failed(check, "accept_event", "reject_event"):
        check.fail("reject_event", "must differ from accept_event")
    if check.errors:
        raise InputError(check.errors, "The action was not saved; nothing was written.")
    return clean


def action_problems(*, values: dict[str, Any], action: Action | None = None) -> list[FieldError]:
    """What a create (or, with ``action``, an update) would refuse in ``values``; writes nothing.
    Only the fields in ``values`` are checked, so a form can check the fields it could read."""
    try:
        _checked(values, action=action)
    except InputError as exc:
        return exc.errors
    return []


def _failed(check: _Checker, *fields: str) -> bool:
    return any(error.field in fields for error in check.errors)


def action_create(*, key: str, name: str, accept_event: str, actor: str, **fields: Any) -> Action:
    """Add an action to the catalog. ``fields`` may set any other of :data:`FIELDS`
    (unset ones take :data:`DEFAULTS`). Raises InputError naming every bad field."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"action_create() got unknown fields: {', '.join(sorted(unknown))}")
    values = {**DEFAULTS, **fields, "key": key, "name": name, "accept_event": accept_event}
    clean = _checked(values, action=None)
    now = timezone.now()
    with transaction.atomic():
        action = Action.objects.create(**clean, created_at=now, updated_at=now)
        audit(actor=actor, action="action.created", object_type="action", object_id=action.pk,
              details={"key": action.key, "name": action.name})
    return action


def action_update(*, action: Action, actor: str, **changes: Any) -> Action:
    """Change the fields of :data:`FIELDS` given in ``changes`` (the key cannot change:
    journeys use it as a port). Raises InputError naming every bad field."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise TypeError(f"action_update() got unknown fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        action = Action.objects.select_for_update().get(pk=action.pk)
        clean = _checked(changes, action=action)
        changed = sorted(
            field for field, value in clean.items()
            if field != "eligibility_compiled" and getattr(action, field) != value
        )
        if not changed:
            return action
        for field, value in clean.items():
            setattr(action, field, value)
        action.updated_at = timezone.now()
        action.save()
        audit(actor=actor, action="action.updated", object_type="action", object_id=action.pk,
              details={"key": action.key, "changed": changed})
    return action


def action_in_use(action: Action) -> bool:
    """Whether a decision or a journey (a draft or a published version) refers to the action."""
    uses = [{"type": "nba", "config": {"actions": [action.key]}}]
    return (
        Decision.objects.filter(action=action).exists()
        or Journey.objects.filter(draft__nodes__contains=uses).exists()
        or JourneyVersion.objects.filter(graph__nodes__contains=uses).exists()
    )


def action_delete(*, action: Action, actor: str) -> bool:
    """Delete an action nobody refers to and return True; deactivate one that decisions or
    journeys refer to (its history stays readable) and return False."""
    with transaction.atomic():
        action = Action.objects.select_for_update().get(pk=action.pk)
        if action_in_use(action):
            if action.active:
                action.active = False
                action.updated_at = timezone.now()
                action.save(update_fields=["active", "updated_at"])
            audit(actor=actor, action="action.deactivated", object_type="action", object_id=action.pk,
                  details={"key": action.key, "reason": "decisions or journeys refer to it"})
            return False
        audit(actor=actor, action="action.deleted", object_type="action", object_id=action.pk,
              details={"key": action.key, "name": action.name})
        action.delete()
        return True
