"""Every write to campaigns and deliveries: compose, launch, pause, resume, cancel, pick a
winner, one-off sends, delivery events from providers and tracking, conversions.

Each function runs in one transaction and publishes after commit. Views and the API
parse input into the dataclasses below and call these; nothing else writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from customers.models import ChannelKind, Customer, Topic
from core.audit import audit
from core.errors import FieldError, InputError
from customers.validation import SCHEDULE_HORIZON, InvalidValue, check_moment
from segments.models import Segment

from . import outbox
from .models import Campaign, Content, Delivery, Variant
from .outbox import run_transitions, transitions_sql
from .personalisation import SAMPLE_CUSTOMER, TemplateProblem, compile_content, sample_render
from .policy import decide
from .providers import DeliveryEvent

logger = logging.getLogger(__name__)

CHANNELS = list(ChannelKind.values)


# --- Composing ----------------------------------------------------------------------------------


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


def _validate(data: CampaignInput, *, campaign: Campaign | None = None) -> tuple[Topic, list[Segment], list[Segment]]:
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
    topic, segments, excluded = _validate(data)
    with transaction.atomic():
        campaign = Campaign.objects.create(**_campaign_fields(data, topic), created_by=user)
        campaign.segments.set(segments)
        campaign.exclude_segments.set(excluded)
        _write_variants(campaign, data.variants)
        audit(actor=actor, action="campaign.created", object_type="campaign", object_id=campaign.pk,
              details={"name": campaign.name})
    return campaign


def campaign_update(*, campaign: Campaign, data: CampaignInput, actor: str) -> Campaign:
    topic, segments, excluded = _validate(data, campaign=campaign)
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


# --- Lifecycle ----------------------------------------------------------------------------------


def _transition_error(campaign: Campaign, action: str) -> InputError:
    state = campaign.get_status_display().lower()
    return InputError(
        [FieldError("status", f"cannot {action} a campaign that is {state}")],
        message=f"The campaign is {state}: you cannot {action} it now.",
    )


def _starts_at(campaign: Campaign, now: datetime) -> datetime:
    if campaign.schedule == Campaign.Schedule.AT and campaign.send_at:
        return max(campaign.send_at, now)
    if campaign.schedule == Campaign.Schedule.LOCAL and campaign.send_at_local:
        # The earliest timezone (UTC+14) reaches the wall-clock time 14 hours before UTC does.
        return max(campaign.send_at_local - timedelta(hours=14), now)
    return now


def campaign_launch(*, campaign: Campaign, actor: str) -> Campaign:
    """Launch a draft: snapshot the audience now, or schedule the snapshot for its start time."""
    now = timezone.now()
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status != Campaign.Status.DRAFT:
            raise _transition_error(locked, "launch")
        # Content may have been valid when saved and the topic or segments gone since.
        data = campaign_input_from(locked)
        _validate(data)
        _check_audience_values(locked, data)
        locked.launched_at = now
        locked.starts_at = _starts_at(locked, now)
        if locked.starts_at > now + timedelta(seconds=30):
            locked.status = Campaign.Status.SCHEDULED
            locked.save(update_fields=["status", "launched_at", "starts_at", "updated_at"])
        else:
            _start(locked, now=now)
        audit(actor=actor, action="campaign.launched", object_type="campaign", object_id=locked.pk,
              details={"status": locked.status, "starts_at": locked.starts_at.isoformat()})
    return locked


JSON_TYPE_WORDS = {
    "string": "text", "number": "a number", "boolean": "true/false", "array": "a list", "object": "an object",
    "null": "null",
}


def _check_audience_values(campaign: Campaign, data: CampaignInput) -> None:
    """Refuse a launch whose templates fail on the kinds of values the audience holds.

    The types of every ``attributes.<key>`` the templates read are read in one query over
    the audience; each template is rendered with one real value of each type. Values that
    change after the launch can still fail a delivery, which is then suppressed with the
    reason ``render_failed``.
    """
    contents = []
    for i, variant in enumerate(data.variants):
        prefix = f"variants[{i}]." if len(data.variants) > 1 else ""
        for channel, body in variant.content.items():
            compiled = compile_content(channel, body)
            contents.append((prefix, channel, compiled, compiled.attributes_read()))
    keys = {key for *_, read in contents for keys in read.values() for key in keys}
    types = outbox.audience_attribute_types(campaign, keys)
    errors, seen = [], set()
    for prefix, channel, compiled, read in contents:
        for field_name, field_keys in read.items():
            for key, kind, customers, example in types:
                path = f"{prefix}content.{channel}.{field_name}"
                if key not in field_keys or (path, key) in seen:
                    continue
                attributes = {**SAMPLE_CUSTOMER["attributes"], key: example}
                customer = {**SAMPLE_CUSTOMER, "attributes": attributes}
                try:
                    sample_render(compiled, customer)
                except TemplateProblem as problem:
                    if problem.field != field_name:
                        continue
                    seen.add((path, key))
                    shown = json.dumps(example)
                    shown = shown if len(shown) <= 40 else shown[:37] + "…"
                    who = "1 customer" if customers == 1 else f"{customers:,} customers"
                    has = "has" if customers == 1 else "have"
                    value = (f"no attributes.{key}" if kind is None
                             else f"attributes.{key} as {JSON_TYPE_WORDS.get(kind, kind)} (e.g. {shown})")
                    errors.append(FieldError(path, (
                        f"{who} in the audience {has} {value}, and the {channel} {field_name} cannot be rendered "
                        f"for them: {problem.message}"
                    )))
    if errors:
        raise InputError(errors, message="The message cannot be rendered for part of the audience; nothing was launched.")


def _start(campaign: Campaign, *, now: datetime) -> None:
    """Write the audience snapshot and start sending (call holding the campaign row lock)."""
    start = campaign.send_at if campaign.schedule == Campaign.Schedule.AT and campaign.send_at else now
    written, customers, to_send = outbox.snapshot_write(campaign, now=now, start=max(start, now))
    campaign.audience_size = customers
    campaign.status = Campaign.Status.SENDING
    campaign.updated_at = now
    campaign.save(update_fields=["audience_size", "status", "updated_at", "launched_at", "starts_at"])
    transaction.on_commit(dispatch_soon, robust=True)


def dispatch_soon() -> None:
    """Ask the workers to send now rather than at the next minute's sweep."""
    from django.conf import settings
    from django_q.tasks import async_task

    for _ in range(max(1, settings.Q_CLUSTER.get("workers", 1))):
        async_task("campaigns.tasks.dispatch", task_name="dispatch", group="dispatch")


def campaign_pause(*, campaign: Campaign, actor: str) -> Campaign:
    return _set_status(campaign, actor=actor, action="pause",
                       allowed={Campaign.Status.SENDING, Campaign.Status.TESTING, Campaign.Status.SCHEDULED},
                       to=Campaign.Status.PAUSED)


def campaign_resume(*, campaign: Campaign, actor: str) -> Campaign:
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status != Campaign.Status.PAUSED:
            raise _transition_error(locked, "resume")
        if locked.audience_size == 0 and not locked.deliveries.exists():
            locked.status = Campaign.Status.SCHEDULED
            locked.save(update_fields=["status", "updated_at"])
        else:
            waiting = locked.deliveries.filter(status="held").exists() and not locked.winner_decided_at
            locked.status = Campaign.Status.TESTING if waiting and not locked.deliveries.filter(status="planned").exists() else Campaign.Status.SENDING
            locked.save(update_fields=["status", "updated_at"])
            transaction.on_commit(dispatch_soon, robust=True)
        audit(actor=actor, action="campaign.resumed", object_type="campaign", object_id=locked.pk)
        outbox.publish_after_commit([(locked.pk, 0, 1)])
    return locked


def _set_status(campaign: Campaign, *, actor: str, action: str, allowed: set, to: str) -> Campaign:
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status not in allowed:
            raise _transition_error(locked, action)
        locked.status = to
        locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "updated_at"])
        audit(actor=actor, action=f"campaign.{action}d", object_type="campaign", object_id=locked.pk)
        outbox.publish_after_commit([(locked.pk, 0, 1)])
    return locked


def campaign_cancel(*, campaign: Campaign, actor: str) -> Campaign:
    """Stop for good: what is not yet sent is cancelled (messages already with a provider stay sent)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status in {Campaign.Status.COMPLETED, Campaign.Status.CANCELLED}:
            raise _transition_error(locked, "cancel")
        now = timezone.now()
        run_transitions(
            transitions_sql(
                """
                UPDATE campaigns_delivery d SET status = 'cancelled', updated_at = %(now)s
                WHERE d.campaign_id = %(campaign)s AND d.status IN ('planned', 'held')
                RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                          'cancelled'::text AS metric, %(now)s::timestamptz AS at, ''::text AS reason
                """
            ),
            {"now": now, "campaign": locked.pk},
        )
        locked.status = Campaign.Status.CANCELLED
        locked.completed_at = now
        locked.save(update_fields=["status", "completed_at", "updated_at"])
        audit(actor=actor, action="campaign.cancelled", object_type="campaign", object_id=locked.pk)
    return locked


def campaign_delete(*, campaign: Campaign, actor: str) -> None:
    if campaign.status != Campaign.Status.DRAFT:
        raise InputError([FieldError("status", "only drafts can be deleted; cancel a launched campaign instead")])
    with transaction.atomic():
        audit(actor=actor, action="campaign.deleted", object_type="campaign", object_id=campaign.pk,
              details={"name": campaign.name})
        campaign.delete()


# --- Staged sends: the winner -------------------------------------------------------------------


def campaign_send_remainder(*, campaign: Campaign, actor: str, variant_id: int | None = None,
                            channel: str | None = None) -> Campaign:
    """Send the held remainder of a staged campaign with the winning variant and channel.

    Customers who chose a channel explicitly keep it; the others get the winning channel
    where the policy allows it, and keep their provisional channel otherwise.
    """
    from .queries import staged_results

    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if not locked.is_staged or locked.winner_decided_at:
            raise InputError([FieldError("status", "this campaign has no test phase waiting for a winner")])
        if locked.status not in {Campaign.Status.SENDING, Campaign.Status.TESTING, Campaign.Status.PAUSED}:
            raise _transition_error(locked, "send the remainder of")
        results = staged_results(locked)
        variants = {v.pk: v for v in locked.variants.all()}
        if variant_id is None:
            variant_id = results.variant_winner or min(variants, key=lambda pk: variants[pk].key)
        if variant_id not in variants:
            raise InputError([FieldError("variant_id", "that variant is not part of this campaign")])
        if locked.test_channels:
            channel = channel or results.channel_winner or locked.channels[0]
            if channel not in locked.channels:
                raise InputError([FieldError("channel", f"{channel} is not one of the campaign's channels")])
        else:
            channel = ""
        now = timezone.now()
        with connection.cursor() as cursor:
            if channel:
                # Move flexible customers to the winning channel where they can receive it.
                cursor.execute(
                    f"""
                    WITH {_policy_ctes()},
                    cand AS (
                        SELECT d.id, d.customer_id, %(channel)s::text AS channel, d.topic_id
                        FROM campaigns_delivery d
                        WHERE d.campaign_id = %(campaign)s AND d.status = 'held' AND d.routed_by <> 'explicit'
                          AND d.channel <> %(channel)s
                    ),
                    ok AS (
                        SELECT cand.id FROM cand {_policy_joins()}
                        LEFT JOIN recent ON recent.customer_id = cand.customer_id
                        WHERE {_policy_reason()} IS NULL
                    )
                    UPDATE campaigns_delivery d SET channel = %(channel)s, routed_by = 'winner'
                    FROM ok WHERE d.id = ok.id
                    """,
                    {**_policy_params(now), "channel": channel, "campaign": locked.pk},
                )
            cursor.execute(
                """
                UPDATE campaigns_delivery SET status = 'planned', variant_id = %s, updated_at = %s
                WHERE campaign_id = %s AND status = 'held'
                """,
                [variant_id, now, locked.pk],
            )
            released = cursor.rowcount
        locked.winner_variant_id = variant_id
        locked.winner_channel = channel
        locked.winner_decided_at = now
        if locked.status == Campaign.Status.TESTING:
            locked.status = Campaign.Status.SENDING
        locked.save(update_fields=["winner_variant", "winner_channel", "winner_decided_at", "status", "updated_at"])
        audit(actor=actor, action="campaign.winner_sent", object_type="campaign", object_id=locked.pk,
              details={"variant": variants[variant_id].key, "channel": channel, "released": released})
        outbox.publish_after_commit([(locked.pk, 0, released)])
        transaction.on_commit(dispatch_soon, robust=True)
    return locked


def _policy_ctes() -> str:
    from .policy import RECENT_SQL, ZONES_SQL

    return f"{ZONES_SQL}, {RECENT_SQL}"


def _policy_joins() -> str:
    from .policy import joins_sql

    return joins_sql()


def _policy_reason() -> str:
    from .policy import reason_sql

    return reason_sql(cap_counts="recent.sent")


def _policy_params(now: datetime) -> dict:
    from .policy import PolicySettings

    return {**PolicySettings.current().params(), "now": now}


# --- The minute tick: start scheduled campaigns, finish done ones, pick due winners --------------


def campaigns_tick(*, now: datetime | None = None) -> dict:
    """Run every minute. Safe to run twice and in parallel (each campaign is locked)."""
    now = now or timezone.now()
    started, finished, decided = [], [], []
    for pk in Campaign.objects.filter(status=Campaign.Status.SCHEDULED, starts_at__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            locked = Campaign.objects.select_for_update(skip_locked=True).filter(pk=pk, status=Campaign.Status.SCHEDULED).first()
            if locked:
                _start(locked, now=now)
                started.append(pk)
    for campaign in Campaign.objects.filter(status__in=[Campaign.Status.SENDING, Campaign.Status.TESTING]):
        open_rows = set(
            campaign.deliveries.filter(status__in=["planned", "sending", "held"]).values_list("status", flat=True).distinct()
        )
        if not open_rows:
            with transaction.atomic():
                Campaign.objects.filter(pk=campaign.pk, status=campaign.status).update(
                    status=Campaign.Status.COMPLETED, completed_at=now, updated_at=now
                )
                outbox.publish_after_commit([(campaign.pk, 0, 1)])
            finished.append(campaign.pk)
        elif open_rows == {"held"}:
            if campaign.status == Campaign.Status.SENDING:
                Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.SENDING).update(
                    status=Campaign.Status.TESTING, updated_at=now
                )
            if campaign.test_hours and campaign.launched_at and now >= campaign.starts_at + timedelta(hours=campaign.test_hours):
                try:
                    campaign_send_remainder(campaign=campaign, actor="system: test phase ended")
                    decided.append(campaign.pk)
                except InputError:
                    logger.info("campaign %s: remainder already released", campaign.pk)
    return {"started": started, "completed": finished, "winners": decided}


# --- One-off sends --------------------------------------------------------------------------------


@dataclass
class MessageResult:
    delivery: Delivery | None
    action: str
    reason: str = ""
    until: datetime | None = None
    duplicate: bool = False


def message_send(
    *, customer: Customer, topic: Topic, channel: str, content: dict, actor: str, idempotency_key: str | None = None
) -> MessageResult:
    """Send one message to one customer through the same policy and outbox as campaigns.

    The delivery is written (planned, deferred or suppressed) and the workers send it; an
    idempotency key sent twice returns the first delivery.
    """
    if idempotency_key:
        existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
        if existing:
            return MessageResult(existing, existing.status, existing.reason, duplicate=True)
    try:
        compile_content(channel, content)
    except TemplateProblem as problem:
        raise InputError([FieldError(f"content.{problem.field}", problem.message)]) from None
    now = timezone.now()
    (decision,) = decide(customer_id=customer.pk, topic_id=topic.pk, channels=[channel], at=now)
    with transaction.atomic():
        delivery = Delivery.objects.create(
            customer=customer, topic=topic, channel=channel, payload={channel: content},
            status="suppressed" if decision.action == "suppress" else "planned", reason=decision.reason,
            due_at=decision.until or now, idempotency_key=idempotency_key, routed_by="api",
        )
        if decision.action == "suppress":
            run_transitions(
                transitions_sql(
                    """
                    SELECT d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                           'suppressed.' || d.reason AS metric, %(now)s::timestamptz AS at, d.reason
                    FROM campaigns_delivery d WHERE d.id = %(id)s
                    """
                ),
                {"now": now, "id": delivery.pk},
            )
        audit(actor=actor, action="message.requested", object_type="customer", object_id=customer.pk,
              details={"delivery_id": delivery.pk, "channel": channel, "topic": topic.key, "decision": decision.action})
        if decision.action == "send":
            transaction.on_commit(dispatch_soon, robust=True)
    return MessageResult(delivery, decision.action, decision.reason, decision.until)


# --- Delivery events: webhooks, tracking, conversions ---------------------------------------------

ENGAGEMENT = {
    # kind: (timestamp column, status it moves to, the statuses it can follow)
    "delivered": "delivered_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "converted": "converted_at",
}
NEGATIVE = {"bounced", "complained", "unsubscribed", "failed"}


def delivery_events_apply(*, events: list[DeliveryEvent]) -> int:
    """Apply provider, tracking and conversion events to deliveries; returns how many changed.

    Statuses only move forward; each engagement is counted once per delivery (a second open
    changes nothing); an event id seen before is skipped. A hard bounce makes the address
    unusable and a complaint unsubscribes the customer from marketing on that channel.
    """
    if not events:
        return 0
    rows = []
    for event in events:
        if event.kind not in ENGAGEMENT and event.kind not in NEGATIVE:
            continue
        rows.append({
            "delivery_id": event.delivery_id, "provider": event.provider, "pid": event.provider_message_id,
            "kind": event.kind, "at": event.occurred_at.isoformat(), "reason": (event.reason or "")[:255],
            "event_id": event.event_id or None,
        })
    if not rows:
        return 0
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Dedupe on provider event ids; then resolve each event to one delivery.
            cursor.execute(
                """
                CREATE TEMP TABLE IF NOT EXISTS delivery_incoming
                    (delivery_id bigint, kind text, at timestamptz, reason text)
                """
            )
            cursor.execute("TRUNCATE delivery_incoming")
            cursor.execute(
                """
                WITH r AS (
                    SELECT * FROM jsonb_to_recordset(%s::jsonb)
                        AS r(delivery_id bigint, provider text, pid text, kind text, at timestamptz, reason text, event_id text)
                ),
                fresh AS (
                    INSERT INTO campaigns_trackingreceipt (key, received_at)
                    SELECT DISTINCT event_id, now() FROM r WHERE event_id IS NOT NULL
                    ON CONFLICT DO NOTHING RETURNING key
                )
                INSERT INTO delivery_incoming
                SELECT coalesce(r.delivery_id, d.id), r.kind, min(r.at), max(r.reason)
                FROM r LEFT JOIN campaigns_delivery d
                    ON r.delivery_id IS NULL AND d.provider = r.provider AND d.provider_message_id = r.pid AND r.pid <> ''
                WHERE (r.event_id IS NULL OR r.event_id IN (SELECT key FROM fresh))
                  AND coalesce(r.delivery_id, d.id) IS NOT NULL
                GROUP BY 1, 2
                """,
                [json.dumps(rows)],
            )
        changed = 0
        # Engagement: first time only, implied steps included (a click implies an open, both a delivery).
        changed += run_transitions(
            transitions_sql(
                ctes=f"""
                e AS (
                    SELECT delivery_id, min(at) FILTER (WHERE kind IN ('delivered', 'opened', 'clicked', 'converted')) AS delivered,
                           min(at) FILTER (WHERE kind IN ('opened', 'clicked')) AS opened,
                           min(at) FILTER (WHERE kind = 'clicked') AS clicked,
                           min(at) FILTER (WHERE kind = 'converted') AS converted
                    FROM delivery_incoming WHERE kind IN ('delivered', 'opened', 'clicked', 'converted')
                    GROUP BY delivery_id
                ),
                old AS (
                    -- Locked in id order first, so concurrent events for one delivery count once.
                    SELECT d.id, d.delivered_at, d.opened_at, d.clicked_at, d.converted_at
                    FROM campaigns_delivery d JOIN e ON e.delivery_id = d.id
                    WHERE d.sent_at IS NOT NULL ORDER BY d.id FOR UPDATE OF d
                ),
                upd AS (
                    UPDATE campaigns_delivery d SET
                        delivered_at = coalesce(d.delivered_at, e.delivered),
                        opened_at = coalesce(d.opened_at, e.opened),
                        clicked_at = coalesce(d.clicked_at, e.clicked),
                        converted_at = coalesce(d.converted_at, e.converted),
                        status = CASE
                            WHEN {outbox._rank('d.status')} >= 10 THEN d.status
                            WHEN e.converted IS NOT NULL THEN 'converted'
                            WHEN e.clicked IS NOT NULL AND {outbox._rank('d.status')} < 5 THEN 'clicked'
                            WHEN e.opened IS NOT NULL AND {outbox._rank('d.status')} < 4 THEN 'opened'
                            WHEN e.delivered IS NOT NULL AND {outbox._rank('d.status')} < 3 THEN 'delivered'
                            ELSE d.status END,
                        updated_at = %(now)s
                    FROM e, old
                    WHERE d.id = e.delivery_id AND old.id = d.id
                      AND ((old.delivered_at IS NULL AND e.delivered IS NOT NULL)
                           OR (old.opened_at IS NULL AND e.opened IS NOT NULL)
                           OR (old.clicked_at IS NULL AND e.clicked IS NOT NULL)
                           OR (old.converted_at IS NULL AND e.converted IS NOT NULL))
                    RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                        ARRAY[
                            CASE WHEN old.delivered_at IS NULL AND e.delivered IS NOT NULL THEN 'delivered' END,
                            CASE WHEN old.opened_at IS NULL AND e.opened IS NOT NULL THEN 'opened' END,
                            CASE WHEN old.clicked_at IS NULL AND e.clicked IS NOT NULL THEN 'clicked' END,
                            CASE WHEN old.converted_at IS NULL AND e.converted IS NOT NULL THEN 'converted' END
                        ] AS metrics,
                        ARRAY[e.delivered, e.opened, e.clicked, e.converted] AS ats
                )
                """,
                changed="""
                SELECT upd.id, upd.customer_id, upd.campaign_id, upd.journey_id, upd.channel, upd.variant_id,
                       m.metric, m.at, ''::text AS reason
                FROM upd, unnest(upd.metrics, upd.ats) AS m(metric, at) WHERE m.metric IS NOT NULL
                """
            ),
            {"now": now},
        )
        # Negative outcomes end the delivery's story.
        changed += run_transitions(
            transitions_sql(
                f"""
                UPDATE campaigns_delivery d SET status = i.kind, reason = coalesce(nullif(i.reason, ''), d.reason),
                       failed_at = coalesce(d.failed_at, i.at), updated_at = %(now)s
                FROM (SELECT DISTINCT ON (delivery_id) * FROM delivery_incoming
                      WHERE kind IN ('bounced', 'complained', 'unsubscribed', 'failed')
                      ORDER BY delivery_id, CASE kind WHEN 'complained' THEN 0 WHEN 'bounced' THEN 1
                               WHEN 'unsubscribed' THEN 2 ELSE 3 END) i
                WHERE d.id = i.delivery_id AND d.status NOT IN ('bounced', 'complained', 'unsubscribed', 'failed', 'suppressed', 'cancelled')
                  AND NOT (i.kind = 'failed' AND {outbox._rank('d.status')} >= 3 AND {outbox._rank('d.status')} < 10)
                RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                          i.kind AS metric, i.at, i.reason
                """
            ),
            {"now": now},
        )
        _address_feedback()
    return changed


def engagement_record(*, delivery_id: int, kind: str, at: datetime | None = None) -> int:
    """Record an open or a click of one delivery in one statement: the tracking hot path.

    The same rules as :func:`delivery_events_apply` (first time only, a click implies an
    open, both imply delivery, the status only moves forward), without its batch set-up.
    Returns how many metrics changed (0 for a repeat).
    """
    if kind not in ("opened", "clicked"):
        raise ValueError(f"not an engagement: {kind}")
    at = at or timezone.now()
    steps = ["delivered", "opened"] + (["clicked"] if kind == "clicked" else [])
    rank = {"delivered": 3, "opened": 4, "clicked": 5}[kind]
    sets = ", ".join(f"{step}_at = coalesce(d.{step}_at, %(at)s)" for step in steps)
    firsts = ", ".join(f"CASE WHEN old.{step}_at IS NULL THEN '{step}' END" for step in steps)
    return run_transitions(
        transitions_sql(
            ctes=f"""
            old AS (
                -- Locked first: what is read here is what a concurrent hit committed, so
                -- two simultaneous first opens count once.
                SELECT id, delivered_at, opened_at, clicked_at FROM campaigns_delivery
                WHERE id = %(id)s AND sent_at IS NOT NULL FOR UPDATE
            ),
            upd AS (
                UPDATE campaigns_delivery d SET {sets},
                    status = CASE WHEN {outbox._rank('d.status')} < {rank} THEN '{kind}' ELSE d.status END,
                    updated_at = %(at)s
                FROM old
                WHERE d.id = old.id AND old.{kind}_at IS NULL
                RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                          ARRAY[{firsts}] AS metrics
            )
            """,
            changed="""
            SELECT upd.id, upd.customer_id, upd.campaign_id, upd.journey_id, upd.channel, upd.variant_id,
                   m.metric, %(at)s::timestamptz AS at, ''::text AS reason
            FROM upd, unnest(upd.metrics) AS m(metric) WHERE m.metric IS NOT NULL
            """,
        ),
        {"id": delivery_id, "at": at},
    )


def _address_feedback() -> None:
    """Hard bounces make an address unusable; complaints stop marketing on that channel."""
    from customers.services.preferences import channel_status_set

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.customer_id, d.channel, i.kind, i.reason
            FROM delivery_incoming i JOIN campaigns_delivery d ON d.id = i.delivery_id
            WHERE i.kind IN ('bounced', 'complained')
            """
        )
        rows = cursor.fetchall()
    for kind in ("bounced", "complained"):
        for channel in {row[1] for row in rows if row[2] == kind}:
            ids = {row[0] for row in rows if row[2] == kind and row[1] == channel}
            reason = next((row[3] for row in rows if row[2] == kind and row[1] == channel and row[3]), kind)
            channel_status_set(customer_ids=ids, channel=channel, status=kind, reason=reason, source="delivery")


def conversions_attribute(*, customer_ids: set[int], names: set[str]) -> int:
    """Last-touch attribution: a goal event within the window after a delivery converts it.

    Only events that arrived for campaigns whose goal they are; the latest delivery sent to
    the customer before the event, inside the window, gets the conversion.
    """
    goals = set(
        Campaign.objects.filter(goal_event__in=names).exclude(status=Campaign.Status.DRAFT).values_list("goal_event", flat=True)
    )
    if not goals or not customer_ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT ON (e.id) d.id, e.occurred_at
            FROM customers_event e
            JOIN campaigns_delivery d ON d.customer_id = e.customer_id AND d.sent_at IS NOT NULL
                 AND d.sent_at <= e.occurred_at
            JOIN campaigns_campaign c ON c.id = d.campaign_id AND c.goal_event = e.name
                 AND e.occurred_at <= d.sent_at + make_interval(hours => c.goal_within_hours)
            WHERE e.customer_id = ANY(%s) AND e.name = ANY(%s)
              AND e.received_at > now() - interval '1 hour'
            ORDER BY e.id, d.sent_at DESC, d.id DESC
            """,
            [sorted(customer_ids), sorted(goals)],
        )
        rows = cursor.fetchall()
    events = [DeliveryEvent("converted", at, delivery_id=delivery_id) for delivery_id, at in rows]
    return delivery_events_apply(events=events)
