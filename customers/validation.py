"""Normalisation shared by the API schemas, the UI forms and the demo data."""

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers


class InvalidValue(ValueError):
    """A value a person sent that we cannot accept; the message says why."""


def normalize_phone(raw: str, *, region: str | None = None) -> str:
    """Return ``raw`` as E.164 (``+14155550123``) or raise :class:`InvalidValue`.

    Numbers without a leading ``+`` need a ``region`` (ISO country code) to be read.
    """
    raw = (raw or "").strip()
    if not raw:
        return ""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidValue(
            f"'{raw}' is not a phone number; use international format such as +14155550123"
        ) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue(f"'{raw}' is not a valid phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_TIMEZONES: set[str] | None = None


def normalize_timezone(raw: str) -> str:
    """Return ``raw`` if it is an IANA time zone name (``Europe/Paris``), else raise."""
    global _TIMEZONES
    raw = (raw or "").strip()
    if not raw:
        return ""
    if _TIMEZONES is None:
        _TIMEZONES = available_timezones()
    if raw not in _TIMEZONES:
        raise InvalidValue(f"'{raw}' is not an IANA time zone name such as Europe/Paris or America/New_York")
    ZoneInfo(raw)
    return raw


def normalize_email(raw: str) -> str:
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    raw = (raw or "").strip()
    if not raw:
        return ""
    try:
        validate_email(raw)
    except ValidationError as exc:
        raise InvalidValue(f"'{raw}' is not an email address") from exc
    local, _, domain = raw.rpartition("@")
    return f"{local}@{domain.lower()}".lower()


# --- Values PostgreSQL cannot store -----------------------------------------------------------

NUL_MESSAGE = "contains a NUL character (\\u0000), which cannot be stored"
NOT_FINITE_MESSAGE = "must be a finite number: NaN and Infinity cannot be stored"


def unstorable(value, path: tuple = ()):
    """Yield ``(path, message)`` for each part of ``value`` the database cannot store.

    ``value`` is decoded JSON or form input: PostgreSQL text and jsonb refuse the NUL
    character (in values and in object keys alike), and jsonb refuses NaN and Infinity,
    which Python's JSON reader accepts. ``path`` locates each problem as a tuple of keys and
    list positions. The walk keeps its own stack, so deeply nested input cannot exhaust
    Python's recursion limit.
    """
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                yield where, NUL_MESSAGE
        elif isinstance(item, float):
            if not math.isfinite(item):
                yield where, NOT_FINITE_MESSAGE
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if isinstance(key, str) and "\x00" in key:
                    yield where, f"the key {key.replace(chr(0), '\\u0000')!r} {NUL_MESSAGE}"
                else:
                    stack.append(((*where, key), child))
        elif isinstance(item, (list, tuple)):
            stack.extend(((*where, index), child) for index, child in reversed(list(enumerate(item))))


def check_storable(value) -> None:
    """Raise :class:`InvalidValue` naming the first part of ``value`` the database cannot store."""
    for where, message in unstorable(value):
        raise InvalidValue(f"{format_path(where)} {message}" if where else message)


def format_path(path: tuple) -> str:
    """``("tags", 0, "name")`` → ``tags[0].name``, the way API errors name fields."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- Timestamps -------------------------------------------------------------------------------

# Every timestamp stored on the timeline or the consent ledger lies in [EARLIEST, LATEST):
# the database enforces it with CHECK constraints, so no row can be one that Python (or a
# page rendering it in a far time zone) cannot read. Input is held to narrower windows:
# events up to a day ahead (clock skew), consent not in the future, schedules within
# SCHEDULE_HORIZON of now.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
EVENT_AHEAD = timedelta(days=1)
CONSENT_AHEAD = timedelta(minutes=5)  # the sender's clock may run a little fast
SCHEDULE_HORIZON = timedelta(days=5 * 366)


def check_moment(value: datetime, *, ahead: timedelta, what: str = "the time") -> datetime:
    """Return ``value`` in UTC if it lies between 1970 and ``ahead`` from now, else raise
    :class:`InvalidValue`.

    In UTC because Python reads offsets up to ±23:59 while PostgreSQL stores at most ±15:59.
    """
    from django.utils import timezone

    if value < EARLIEST:
        raise InvalidValue(f"{what} is before 1970-01-01; check the date and the UTC offset")
    latest = min(timezone.now() + ahead, LATEST)
    if value > latest:
        if ahead <= CONSENT_AHEAD:
            raise InvalidValue(f"{what} is in the future; check the clock or the UTC offset")
        raise InvalidValue(
            f"{what} is more than {_span(ahead)} in the future (latest {latest:%Y-%m-%d %H:%M} UTC); "
            "check the date and the UTC offset"
        )
    return value.astimezone(UTC)


def _span(delta: timedelta) -> str:
    if delta.days >= 366:
        return f"{delta.days // 366} years"
    if delta.days:
        return "a day" if delta.days == 1 else f"{delta.days} days"
    return f"{int(delta.total_seconds() // 60)} minutes"
