"""API schemas: what the customers API accepts and returns.

Input schemas validate and normalise (E.164 phones, IANA time zones, lower-case emails)
so that services receive clean values; unknown fields are refused rather than ignored,
so a typo in a field name is an error the sender sees.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from ninja import Field, Schema
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, field_validator, model_validator

from .models import PLATFORM_PREFIXES, ChannelKind, Device, LegalBasis
from .validation import (
    CONSENT_AHEAD,
    EVENT_AHEAD,
    SCHEDULE_HORIZON,
    InvalidValue,
    check_moment,
    normalize_email,
    normalize_phone,
    normalize_timezone,
)

# Names are checked with fullmatch: "$" would also match before a trailing newline.
ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,127}")
LOCALE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")


class StrictSchema(BaseModel):
    """Input: plain pydantic (ninja's Schema re-validates nested models with extra="forbid",
    which multiplies the cost of a 1,000-item batch)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _window(ahead: timedelta):
    def check(value: datetime) -> datetime:
        try:
            return check_moment(value, ahead=ahead)
        except InvalidValue as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


# Every timestamp the API accepts is one of these (the window is in customers.validation).
EventTime = Annotated[AwareDatetime, _window(EVENT_AHEAD)]
ConsentTime = Annotated[AwareDatetime, _window(CONSENT_AHEAD)]
ScheduleTime = Annotated[AwareDatetime, _window(SCHEDULE_HORIZON)]


def _normalised(function, value):
    if value is None:
        return None
    try:
        return function(value)
    except InvalidValue as exc:
        raise ValueError(str(exc)) from None


# --- Input --------------------------------------------------------------------------------


class SubscriptionChoiceIn(StrictSchema):
    topic: str = Field(..., min_length=1, max_length=64, description="Topic key, e.g. 'coupons'")
    channel: ChannelKind
    subscribed: bool


class CustomerIn(StrictSchema):
    """A profile to create or update. Omitted fields are left as they are."""

    external_id: str | None = Field(None, min_length=1, max_length=255, description="Your CRM's id")
    email: str | None = Field(None, max_length=254)
    phone: str | None = Field(None, max_length=32, description="International format, e.g. +14155550123")
    first_name: str | None = Field(None, max_length=150)
    last_name: str | None = Field(None, max_length=150)
    locale: str | None = Field(None, max_length=35, description="e.g. en-GB")
    timezone: str | None = Field(None, max_length=64, description="IANA name, e.g. Europe/Paris")
    lifecycle_stage: str | None = Field(None, max_length=64)
    attributes: dict[str, Any] | None = Field(
        None, description="Custom traits, merged into the stored ones; a null value removes a key"
    )
    subscriptions: list[SubscriptionChoiceIn] = Field(default_factory=list, max_length=100)

    @field_validator("email")
    @classmethod
    def _email(cls, value):
        return _normalised(normalize_email, value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value):
        return _normalised(normalize_phone, value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value):
        return _normalised(normalize_timezone, value)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value):
        if value and not LOCALE.fullmatch(value):
            raise ValueError(f"'{value}' is not a locale such as en, en-GB or pt_BR")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value):
        for key in value or {}:
            if not ATTRIBUTE_KEY.fullmatch(key):
                raise ValueError(
                    f"attribute name '{key}' must start with a letter or underscore and contain only "
                    "letters, digits and underscores (at most 64)"
                )
        return value

    @model_validator(mode="after")
    def _identified(self):
        if not self.external_id and not self.email:
            raise ValueError("send external_id or email, so the customer can be found again")
        return self


class CustomerBatchIn(StrictSchema):
    customers: list[CustomerIn] = Field(..., min_length=1, max_length=1000)


class CustomerRef(StrictSchema):
    id: int | None = Field(None, gt=0)
    external_id: str | None = Field(None, min_length=1, max_length=255)
    email: str | None = Field(None, max_length=254)

    @field_validator("email")
    @classmethod
    def _email(cls, value):
        return _normalised(normalize_email, value)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in ("id", "external_id", "email") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("identify the customer with exactly one of id, external_id or email")
        return self


class EventIn(StrictSchema):
    customer: CustomerRef
    name: str = Field(..., description="e.g. order_completed")
    properties: dict[str, Any] = Field(default_factory=dict)
    occurred_at: EventTime | None = Field(
        None, description="ISO 8601 with a UTC offset, from 1970 to a day ahead of now; default: now"
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=255, description="Unique per API key's source; a retried event is stored once"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        if not EVENT_NAME.fullmatch(value):
            raise ValueError(
                f"'{value}' is not an event name: start with a letter; use letters, digits, _ . : - (at most 128)"
            )
        for prefix in PLATFORM_PREFIXES:
            if value.startswith(prefix):
                raise ValueError(f"event names starting with '{prefix}' are reserved for events Switchboard records itself")
        return value


class EventBatchIn(StrictSchema):
    events: list[EventIn] = Field(..., min_length=1, max_length=1000)


class SubscriptionIn(StrictSchema):
    topic: str = Field(..., min_length=1, max_length=64)
    channel: ChannelKind
    subscribed: bool
    source: str = Field("api", min_length=1, max_length=64, description="Where the choice was made")
    reason: str = Field("", max_length=500)


class ConsentProofIn(StrictSchema):
    ip_address: str | None = Field(None, description="IPv4 or IPv6 of the customer when consenting")
    user_agent: str = Field("", max_length=1000)
    wording: str = Field("", max_length=5000, description="The text the customer was shown")
    form_url: str = Field("", max_length=2000)

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, value):
        import ipaddress

        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"'{value}' is not an IP address") from None
        return value or None


class ConsentIn(StrictSchema):
    channel: ChannelKind
    granted: bool
    source: str = Field(..., min_length=1, max_length=64, description="e.g. signup_form, ivr, contact_centre")
    legal_basis: LegalBasis = LegalBasis.CONSENT
    occurred_at: ConsentTime | None = Field(None, description="ISO 8601 with a UTC offset, from 1970 to now; default: now")
    proof: ConsentProofIn = Field(default_factory=ConsentProofIn)


class DeviceIn(StrictSchema):
    kind: Device.Kind
    token: str = Field(..., min_length=8, max_length=4096)
    platform: str = Field("", max_length=32)


# --- Output -------------------------------------------------------------------------------


class CustomerOut(Schema):
    id: int
    external_id: str | None
    email: str
    phone: str
    first_name: str
    last_name: str
    locale: str
    timezone: str
    lifecycle_stage: str
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None


class UpsertOut(CustomerOut):
    created: bool


class SubscriptionOut(Schema):
    topic: str
    channel: str
    subscribed: bool
    source: str
    updated_at: datetime


class ConsentStateOut(Schema):
    channel: str
    granted: bool
    updated_at: datetime
    source: str
    legal_basis: str


class DeviceOut(Schema):
    id: int
    kind: str
    platform: str
    created_at: datetime
    last_seen_at: datetime | None


class CustomerDetailOut(CustomerOut):
    subscriptions: list[SubscriptionOut]
    consent: list[ConsentStateOut]
    devices: list[DeviceOut]


class EventOut(Schema):
    id: int
    name: str
    category: str
    channel: str
    properties: dict[str, Any]
    occurred_at: datetime
    received_at: datetime
    source: str
    actor: str
    idempotency_key: str | None


class TimelineOut(Schema):
    events: list[EventOut]
    next_cursor: str | None


class IngestOut(Schema):
    accepted: int = Field(..., description="Events stored by this request")
    duplicates: int = Field(..., description="Events skipped because their idempotency_key was already stored")
    customers_created: int


class ErrorItem(Schema):
    index: int | None = Field(None, description="Position of the item in the batch, for batch requests")
    field: str
    message: str


class ErrorOut(Schema):
    message: str
    errors: list[ErrorItem] = Field(default_factory=list)


def error_responses(*statuses: int) -> dict[int, type[ErrorOut]]:
    """The documented error answers of an operation, all in the one ErrorOut shape: 400 (input
    refused) and 401 (no valid API key) everywhere, plus ``statuses`` (404 unknown id, 409 not
    allowed in the current state)."""
    return dict.fromkeys(sorted({400, 401, *statuses}), ErrorOut)
