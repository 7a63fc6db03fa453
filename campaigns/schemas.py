"""API schemas: what the campaigns and messages API accepts and returns.

Input models are plain pydantic with unknown fields refused (see ``customers.schemas``);
they check shapes and types. What only the database or the template engine can judge
(topics, segments, template syntax, which channel needs which content) is checked by
``campaigns.services.compose``, which names each problem by the same field path.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from ninja import Field, Schema
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from customers.models import ChannelKind
from customers.validation import SCHEDULE_HORIZON, InvalidValue, check_moment
from customers.schemas import EVENT_NAME, CustomerRef, ScheduleTime, StrictSchema

from .models import Campaign, DeliveryStatus

LOCAL_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")  # use with fullmatch
VARIANT_KEY = r"^[A-Za-z0-9]{1,8}$"


# --- Input: content ---------------------------------------------------------------------------


class ContentFields(BaseModel):
    """Message text is kept exactly as written (no whitespace stripping: HTML and SMS alike)."""

    model_config = ConfigDict(extra="forbid")


class EmailContentIn(ContentFields):
    subject: str = Field(..., max_length=998, description="A template, e.g. 'Hello {{ first_name|default:\"there\" }}'")
    preheader: str | None = Field(None, max_length=500, description="The preview line shown after the subject")
    html: str = Field(..., max_length=500_000, description="HTML template; links are tracked")
    text: str | None = Field(None, max_length=200_000, description="Plain-text part; derived from the HTML when empty")


# A field named "body" is optional here and required by the template check instead: the
# API's error describer drops "body" from error paths (it is ninja's name for the request
# body), so pydantic's own "required" error would name "content.sms" rather than the field.
# An SMS body is bounded by what it renders to (1,600 characters, the opt-out line included),
# checked with the sample customer and the one with the longest names, not by the template's
# own length: a template may hold several versions and send one.
class SmsContentIn(ContentFields):
    body: str | None = Field(None, max_length=20_000, description="Required; at most 1,600 characters once rendered")


class WhatsAppContentIn(ContentFields):
    template: str = Field(..., max_length=512, description="The approved WhatsApp template's name or content SID")
    variables: dict[str, str] | None = Field(None, description="Template variables by position or name; each a template")
    body: str | None = Field(None, max_length=4096, description="Free text, for replies inside the 24-hour window")


class VoiceContentIn(ContentFields):
    text: str = Field(..., max_length=4000, description="Read out by text-to-speech")


class PushContentIn(ContentFields):
    title: str = Field(..., max_length=200)
    body: str | None = Field(None, max_length=2000, description="Required")
    link: str | None = Field(None, max_length=2000, description="Opened when the notification is tapped")


class ContentIn(ContentFields):
    """What each channel says; give one entry per channel of the campaign."""

    email: EmailContentIn | None = None
    sms: SmsContentIn | None = None
    whatsapp: WhatsAppContentIn | None = None
    voice: VoiceContentIn | None = None
    push: PushContentIn | None = None

    def by_channel(self) -> dict[str, dict]:
        return {
            channel: getattr(self, channel).model_dump(exclude_none=True)
            for channel in ChannelKind.values
            if getattr(self, channel) is not None
        }


class VariantIn(StrictSchema):
    key: str = Field(..., pattern=VARIANT_KEY, description="A, B, C …")
    name: str = Field("", max_length=120)
    weight: int = Field(..., ge=1, le=1000, description="Share of the audience, relative to the other variants")
    content: ContentIn


# --- Input: campaigns -------------------------------------------------------------------------


class GoalIn(StrictSchema):
    event: str = Field(..., min_length=1, max_length=128, description="The event that counts as a conversion")
    within_hours: int = Field(72, ge=1, le=24 * 90, description="Attribution window after the send")

    @field_validator("event")
    @classmethod
    def _event(cls, value):
        if not EVENT_NAME.fullmatch(value):
            raise ValueError(f"'{value}' is not an event name: start with a letter; use letters, digits, _ . : -")
        return value


class ScheduleIn(StrictSchema):
    at: ScheduleTime | None = Field(
        None, description="ISO 8601 with a UTC offset, e.g. 2026-12-01T09:00:00+01:00; at most 5 years ahead"
    )
    local: str | None = Field(
        None, description="'YYYY-MM-DDTHH:MM', read in each recipient's own timezone", examples=["2026-12-01T09:00"]
    )

    @field_validator("local")
    @classmethod
    def _local(cls, value):
        if value is None:
            return value
        if not LOCAL_MOMENT.fullmatch(value):
            raise ValueError("give the local date and time as YYYY-MM-DDTHH:MM, without an offset")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a date and time") from None
        try:
            # The same horizon as 'at'; as a wall-clock time it is read as if in UTC.
            check_moment(moment.replace(tzinfo=UTC), ahead=SCHEDULE_HORIZON)
        except InvalidValue as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one(self):
        if (self.at is None) == (self.local is None):
            raise ValueError(
                "send either 'at' (a moment) or 'local' (a wall-clock time), or leave schedule out to send now"
            )
        return self


class StagedTestIn(StrictSchema):
    percent: int = Field(..., ge=1, le=90, description="Share of the audience in the test phase")
    metric: Literal["open", "click", "conversion"] = Field(..., description="How the winner is picked")
    hours: int | None = Field(None, ge=1, le=24 * 30, description="Release the winner by itself after this")
    channels: bool = Field(False, description="Also test channels (needs the 'preferred' strategy)")


class CampaignIn(StrictSchema):
    """A campaign to create as a draft. Give ``content`` (a single variant 'A') or ``variants``."""

    name: str = Field(..., max_length=200)
    topic: str = Field(..., min_length=1, max_length=64, description="Topic key, e.g. 'newsletter'")
    segment_ids: list[int] = Field(..., max_length=100, description="The audience: members of any of these")
    exclude_segment_ids: list[int] = Field(default_factory=list, max_length=100)
    channels: list[ChannelKind] = Field(..., max_length=5, description="In fallback order for the 'preferred' strategy")
    strategy: Campaign.Strategy = Field(
        Campaign.Strategy.ALL, description="'all': every channel each customer allows; 'preferred': one per customer"
    )
    content: ContentIn | None = None
    variants: list[VariantIn] | None = Field(None, min_length=1, max_length=26)
    goal: GoalIn | None = None
    schedule: ScheduleIn | None = Field(None, description="Leave out to send as soon as the campaign is launched")
    throttle_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    test: StagedTestIn | None = Field(None, description="A staged send: test first, then the winner to the rest")

    @field_validator("variants")
    @classmethod
    def _not_both(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("content") is not None:
            raise ValueError("send content (one variant) or variants, not both")
        return value


class SendRemainderIn(StrictSchema):
    variant: str | None = Field(None, pattern=VARIANT_KEY, description="Variant key; default: the suggested winner")
    channel: ChannelKind | None = Field(None, description="For channel tests; default: the suggested winner")


# --- Input: one-off messages ------------------------------------------------------------------


class MessageIn(StrictSchema):
    customer: CustomerRef
    topic: str = Field(..., min_length=1, max_length=64, description="Topic key; transactional topics skip subscriptions")
    channel: ChannelKind
    content: dict[str, Any] = Field(
        ...,
        description=(
            "The fields of the channel: email {subject, preheader?, html, text?} · sms {body} · "
            "whatsapp {template, variables?} · voice {text} · push {title, body, link?}"
        ),
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=255, description="A retried request with the same key sends nothing twice"
    )


# --- Output -----------------------------------------------------------------------------------


class CountsOut(Schema):
    planned: int
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int
    bounced: int
    failed: int
    complained: int
    unsubscribed: int
    cancelled: int
    suppressed: int


class VariantOut(Schema):
    key: str
    name: str
    weight: int


class ScheduleOut(Schema):
    kind: str = Field(..., description="now, at or local")
    at: datetime | None
    local: str | None


class GoalOut(Schema):
    event: str
    within_hours: int


class StagedTestOut(Schema):
    percent: int
    metric: str
    hours: int | None
    channels: bool


class WinnerOut(Schema):
    variant: str | None
    channel: str | None
    decided_at: datetime


class ArmOut(Schema):
    key: str = Field(..., description="Variant key or channel")
    sent: int
    successes: int = Field(..., description="Opens, clicks or conversions, by the test metric")
    rate: float | None


class StagedResultsOut(Schema):
    metric: str
    variants: list[ArmOut]
    channels: list[ArmOut]
    suggested_variant: str | None
    variant_p_value: float | None = Field(..., description="Two-proportion z-test, Bonferroni-corrected")
    variant_significant: bool = Field(..., description="p < 0.05")
    suggested_channel: str | None
    channel_p_value: float | None
    channel_significant: bool


class CampaignOut(Schema):
    id: int
    name: str
    status: str
    topic: str
    channels: list[str]
    strategy: str
    segment_ids: list[int]
    exclude_segment_ids: list[int]
    variants: list[VariantOut]
    schedule: ScheduleOut
    throttle_per_minute: int | None
    goal: GoalOut | None
    test: StagedTestOut | None
    audience_size: int
    created_at: datetime
    launched_at: datetime | None
    starts_at: datetime | None
    completed_at: datetime | None
    totals: CountsOut
    by_channel: dict[str, CountsOut]
    by_variant: dict[str, CountsOut]
    suppressed_by_reason: dict[str, int]
    winner: WinnerOut | None
    staged: StagedResultsOut | None = Field(..., description="Test-phase results, for staged campaigns")


class CampaignListItem(Schema):
    id: int
    name: str
    status: str
    topic: str
    channels: list[str]
    audience_size: int
    created_at: datetime
    launched_at: datetime | None


class CampaignListOut(Schema):
    campaigns: list[CampaignListItem]
    next_cursor: str | None


class DeliveryOut(Schema):
    id: int
    customer_id: int
    external_id: str | None
    email: str
    channel: str
    variant: str | None
    status: DeliveryStatus
    reason: str
    provider: str
    provider_message_id: str
    due_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None
    converted_at: datetime | None


class DeliveriesOut(Schema):
    deliveries: list[DeliveryOut]
    next_cursor: str | None


class MessageOut(Schema):
    delivery_id: int
    decision: Literal["send", "defer", "suppress"] = Field(
        ..., description="send: queued now; defer: queued until `until` (quiet hours); suppress: not sent, see reason"
    )
    reason: str
    until: datetime | None
    status: DeliveryStatus
    duplicate: bool = Field(..., description="True when the idempotency key was seen before: this is the first delivery")


class MessageStatusOut(Schema):
    delivery_id: int
    customer_id: int
    campaign_id: int | None
    topic: str
    channel: str
    status: DeliveryStatus
    reason: str
    provider: str
    provider_message_id: str
    idempotency_key: str | None
    created_at: datetime
    due_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None
    converted_at: datetime | None
    failed_at: datetime | None
