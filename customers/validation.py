"""Normalisation shared by the API schemas, the UI forms and the demo data."""

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
