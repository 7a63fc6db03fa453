"""Composing campaigns: creating and editing drafts, their variants and their content.

Views and the API parse input into :class:`CampaignInput` and call these; every problem is
named by its field path ("variants[1].content.email.subject") and nothing is written then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from customers.models import ChannelKind, Topic
from customers.validation import SCHEDULE_HORIZON, InvalidValue, check_moment
from segments.models import Segment

from ..models import Campaign, Content, Variant
from ..personalisation import TemplateProblem, compile_content

CHANNELS = list(ChannelKind.values)


@dataclass
class VariantInput:
    key: str
    weight: int = 1
    name: str = ""
    # channel -> content fields
    content: dict = field(default_factory=dict)


@dataclass
class CampaignInput:
    name: str
    topic: str
    channels: list[str]
    segment_ids: list[int]
    exclude_segment_ids: list[int] = field(default_factory=list)
    strategy: str = Campaign.Strategy.ALL
    variants: list[VariantInput] = field(default_factory=list)
    goal_event: str = ""
    goal_within_hours: int = 72
    schedule: str = Campaign.Schedule.NOW
    send_at: datetime | None = None
    send_at_local: datetime | None = None
    throttle_per_minute: int | None = None
    test_percent: int | None = None
    test_metric: str = Campaign.TestMetric.CLICK
    test_hours: int | None = None
    test_channels: bool = False


def campaign_input_validate(
    *, data: CampaignInput, campaign: Campaign | None = None
) -> tuple[Topic, list[Segment], list[Segment]]:
    """The campaign's topic, audience and exclusions if ``data`` describes a valid campaign
    (and ``campaign``, when given, is still a draft); raises InputError naming every problem."""
    errors: list[FieldError] = []
    name = (data.name or "").strip()
    if not name:
        errors.append(FieldError("name", "give the campaign a name"))
    elif len(name) > 200:
        errors.append(FieldError("name", "at most 200 characters"))
    topic = Topic.objects.filter(key=data.topic).first()
    if topic is None:
        known = ", ".join(Topic.objects.values_list("key", flat=True)) or "none yet"
        errors.append(FieldError("topic", f"no topic '{data.topic}'; topics: {known}"))
    if not data.channels:
        errors.append(FieldError("channels", "pick at least one channel"))
    for channel in data.channels:
        if channel not in CHANNELS:
            errors.append(FieldError("channels", f"'{channel}' is not a channel; channels: {', '.join(CHANNELS)}"))
    if len(set(data.channels)) != len(data.channels):
        errors.append(FieldError("channels", "a channel is listed twice"))
    if data.strategy not in Campaign.Strategy.values:
        errors.append(FieldError("strategy", "strategy is 'all' or 'preferred'"))
    segments = list(Segment.objects.filter(pk__in=data.segment_ids))
    excluded = list(Segment.objects.filter(pk__in=data.exclude_segment_ids))
    if not data.segment_ids:
        errors.append(FieldError("segment_ids", "pick at least one segment as the audience"))
    for key, wanted, found in (("segment_ids", data.segment_ids, segments), ("exclude_segment_ids", data.exclude_segment_ids, excluded)):
        missing = sorted(set(wanted) - {s.pk for s in found})
        if missing:
            errors.append(FieldError(key, f"no segment has id {', '.join(map(str, missing))}"))
    if set(data.segment_ids) & set(data.exclude_segment_ids):
        errors.append(FieldError("exclude_segment_ids", "a segment cannot be both the audience and excluded"))
    if not data.variants:
        errors.append(FieldError("content", "write the message for each channel"))
    keys = [v.key for v in data.variants]
    if len(set(keys)) != len(keys):
        errors.append(FieldError("variants", "two variants have the same key"))
    for i, variant in enumerate(data.variants):
        prefix = f"variants[{i}]." if len(data.variants) > 1 else ""
        if not (1 <= variant.weight <= 1000):
            errors.append(FieldError(f"{prefix}weight", "weight is a whole number from 1 to 1000"))
        for channel in data.channels:
            if channel in CHANNELS and channel not in variant.content:
                errors.append(FieldError(f"{prefix}content.{channel}", f"write the {channel} message"))
        for channel, body in variant.content.items():
            if channel not in data.channels:
                errors.append(FieldError(f"{prefix}content.{channel}", f"{channel} is not one of the campaign's channels"))
                continue
            if not isinstance(body, dict):
                errors.append(FieldError(f"{prefix}content.{channel}", "content is an object of fields"))
                continue
            try:
                compile_content(channel, body)
            except TemplateProblem as problem:
                errors.append(FieldError(f"{prefix}content.{channel}.{problem.field}", problem.message))
    now = timezone.now()
    if data.schedule not in Campaign.Schedule.values:
        errors.append(FieldError("schedule", "schedule is 'now', 'at' or 'local'"))
    elif data.schedule == Campaign.Schedule.AT:
        if data.send_at is None:
            errors.append(FieldError("send_at", "give the date and time to send at"))
        elif data.send_at.tzinfo is None:
            errors.append(FieldError("send_at", "give a timezone offset, e.g. 2026-12-01T09:00:00+01:00"))
        elif data.send_at < now - timedelta(minutes=5):
            errors.append(FieldError("send_at", "that time has passed"))
        else:
            _check_schedule_window("send_at", data.send_at, errors)
    elif data.schedule == Campaign.Schedule.LOCAL:
        if data.send_at_local is None:
            errors.append(FieldError("send_at_local", "give the local date and time, e.g. 2026-12-01T09:00"))
        else:
            # A wall-clock time, checked as if in UTC (the recipients' zones are within a day of it).
            _check_schedule_window("send_at_local", data.send_at_local.replace(tzinfo=timezone.UTC), errors)
    if data.throttle_per_minute is not None and data.throttle_per_minute < 1:
        errors.append(FieldError("throttle_per_minute", "at least 1 message a minute, or no throttle"))
    if data.test_percent is not None:
        if not (1 <= data.test_percent <= 90):
            errors.append(FieldError("test_percent", "the test phase goes to 1 to 90 percent of the audience"))
        if len(data.variants) < 2 and not data.test_channels:
            errors.append(FieldError("test_percent", "a staged send tests two or more variants, or channels"))
        if data.test_channels and (data.strategy != Campaign.Strategy.PREFERRED or len(data.channels) < 2):
            errors.append(FieldError("test_channels", "a channel test needs the 'preferred' strategy and two or more channels"))
        if data.test_metric not in Campaign.TestMetric.values:
            errors.append(FieldError("test_metric", "the winner is picked by 'open', 'click' or 'conversion'"))
        if data.test_metric == Campaign.TestMetric.CONVERSION and not data.goal_event:
            errors.append(FieldError("test_metric", "set a conversion goal to pick the winner by conversions"))
    if data.goal_event and not (1 <= data.goal_within_hours <= 24 * 90):
        errors.append(FieldError("goal_within_hours", "the attribution window is 1 hour to 90 days"))
    if campaign is not None and not campaign.is_editable:
        errors.append(FieldError("status", f"the campaign is {campaign.get_status_display().lower()}; only drafts can be changed"))
    if errors:
        raise InputError(errors)
    return topic, segments, excluded


def _check_schedule_window(field_name: str, moment: datetime, errors: list[FieldError]) -> None:
    try:
        check_moment(moment, ahead=SCHEDULE_HORIZON)
    except InvalidValue as exc:
        errors.append(FieldError(field_name, str(exc)))


def _campaign_fields(data: CampaignInput, topic: Topic) -> dict:
    return dict(
        name=data.name.strip(), topic=topic, channels=list(data.channels), strategy=data.strategy,
        goal_event=data.goal_event.strip(), goal_within_hours=data.goal_within_hours, schedule=data.schedule,
        send_at=data.send_at if data.schedule == Campaign.Schedule.AT else None,
        send_at_local=data.send_at_local.replace(tzinfo=timezone.UTC) if data.schedule == Campaign.Schedule.LOCAL and data.send_at_local else None,
        throttle_per_minute=data.throttle_per_minute, test_percent=data.test_percent, test_metric=data.test_metric,
        test_hours=data.test_hours, test_channels=data.test_channels,
    )


def _write_variants(campaign: Campaign, variants: list[VariantInput]) -> None:
    campaign.variants.all().delete()
    for variant_input in variants:
        variant = Variant.objects.create(
            campaign=campaign, key=variant_input.key, name=variant_input.name, weight=variant_input.weight
        )
        Content.objects.bulk_create(
            [Content(variant=variant, channel=channel, body=body) for channel, body in variant_input.content.items()]
        )


def campaign_create(*, data: CampaignInput, actor: str, user=None) -> Campaign:
    """Create a draft campaign. Raises InputError naming every problem; writes nothing then."""
    topic, segments, excluded = campaign_input_validate(data=data)
    with transaction.atomic():
        campaign = Campaign.objects.create(**_campaign_fields(data, topic), created_by=user)
        campaign.segments.set(segments)
        campaign.exclude_segments.set(excluded)
        _write_variants(campaign, data.variants)
        audit(actor=actor, action="campaign.created", object_type="campaign", object_id=campaign.pk,
              details={"name": campaign.name})
    return campaign


def campaign_update(*, campaign: Campaign, data: CampaignInput, actor: str) -> Campaign:
    topic, segments, excluded = campaign_input_validate(data=data, campaign=campaign)
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if not locked.is_editable:
            raise InputError([FieldError("status", "the campaign was launched meanwhile; it can no longer be changed")])
        for key, value in _campaign_fields(data, topic).items():
            setattr(locked, key, value)
        locked.updated_at = timezone.now()
        locked.save()
        locked.segments.set(segments)
        locked.exclude_segments.set(excluded)
        _write_variants(locked, data.variants)
        audit(actor=actor, action="campaign.updated", object_type="campaign", object_id=campaign.pk)
    return locked


def campaign_input_from(campaign: Campaign) -> CampaignInput:
    """The input that would recreate ``campaign`` (for forms and duplication)."""
    return CampaignInput(
        name=campaign.name, topic=campaign.topic.key, channels=list(campaign.channels),
        segment_ids=list(campaign.segments.values_list("pk", flat=True)),
        exclude_segment_ids=list(campaign.exclude_segments.values_list("pk", flat=True)),
        strategy=campaign.strategy,
        variants=[
            VariantInput(key=v.key, weight=v.weight, name=v.name, content={c.channel: c.body for c in v.contents.all()})
            for v in campaign.variants.prefetch_related("contents")
        ],
        goal_event=campaign.goal_event, goal_within_hours=campaign.goal_within_hours, schedule=campaign.schedule,
        send_at=campaign.send_at, send_at_local=campaign.send_at_local.replace(tzinfo=None) if campaign.send_at_local else None,
        throttle_per_minute=campaign.throttle_per_minute, test_percent=campaign.test_percent,
        test_metric=campaign.test_metric, test_hours=campaign.test_hours, test_channels=campaign.test_channels,
    )


def campaign_delete(*, campaign: Campaign, actor: str) -> None:
    if campaign.status != Campaign.Status.DRAFT:
        raise InputError([FieldError("status", "only drafts can be deleted; cancel a launched campaign instead")])
    with transaction.atomic():
        audit(actor=actor, action="campaign.deleted", object_type="campaign", object_id=campaign.pk,
              details={"name": campaign.name})
        campaign.delete()
