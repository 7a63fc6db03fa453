"""A campaign's life after composing: launch (now or scheduled), pause, resume, cancel, and
a staged send's test phase and winner; the minute tick that moves them along.

Each function runs in one transaction, holding the campaign's row lock, and publishes
after commit.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from segments.queries import not_ready_problems

from ..dispatch import dispatch_soon
from ..models import Campaign, DeliveryStatus
from ..outbox import audience_attribute_types, snapshot_write
from ..personalisation import SAMPLE_CUSTOMER, TemplateProblem, compile_content, sample_render
from ..policy import RECENT_SQL, ZONES_SQL, PolicySettings, joins_sql, reason_sql
from ..queries import staged_results
from ..transitions import deliveries_transition, publish_after_commit
from .compose import CampaignInput, campaign_input_from, campaign_input_validate

logger = logging.getLogger(__name__)

PLANNED, HELD = DeliveryStatus.PLANNED, DeliveryStatus.HELD


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
        campaign_input_validate(data=data)
        _check_segments_ready(data)
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


def _audience_not_ready(campaign: Campaign) -> bool:
    ids = [*campaign.segments.values_list("pk", flat=True), *campaign.exclude_segments.values_list("pk", flat=True)]
    return bool(not_ready_problems(ids, field="segment_ids"))


def _check_segments_ready(data: CampaignInput) -> None:
    """Refuse a launch from segments whose members are still being computed (or whose last
    computation failed): the snapshot would take a membership about to change."""
    problems = [*not_ready_problems(data.segment_ids, field="segment_ids"),
                *not_ready_problems(data.exclude_segment_ids, field="exclude_segment_ids")]
    if problems:
        raise InputError(problems, "Not launched: a segment of the audience is not ready yet.")


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
    types = audience_attribute_types(campaign, keys)
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
    written, customers, to_send = snapshot_write(campaign, now=now, start=max(start, now))
    campaign.audience_size = customers
    campaign.status = Campaign.Status.SENDING
    campaign.updated_at = now
    campaign.save(update_fields=["audience_size", "status", "updated_at", "launched_at", "starts_at"])
    transaction.on_commit(dispatch_soon, robust=True)


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
            waiting = locked.deliveries.filter(status=HELD).exists() and not locked.winner_decided_at
            locked.status = Campaign.Status.TESTING if waiting and not locked.deliveries.filter(status=PLANNED).exists() else Campaign.Status.SENDING
            locked.save(update_fields=["status", "updated_at"])
            transaction.on_commit(dispatch_soon, robust=True)
        audit(actor=actor, action="campaign.resumed", object_type="campaign", object_id=locked.pk)
        publish_after_commit([(locked.pk, 0, 1)])
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
        publish_after_commit([(locked.pk, 0, 1)])
    return locked


def campaign_cancel(*, campaign: Campaign, actor: str) -> Campaign:
    """Stop for good: what is not yet sent is cancelled (messages already with a provider stay sent)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status in {Campaign.Status.COMPLETED, Campaign.Status.CANCELLED}:
            raise _transition_error(locked, "cancel")
        now = timezone.now()
        deliveries_transition(
            to=DeliveryStatus.CANCELLED, only_from=[PLANNED, HELD], now=now,
            source="SELECT id FROM campaigns_delivery WHERE campaign_id = %(campaign)s",
            params={"campaign": locked.pk},
        )
        locked.status = Campaign.Status.CANCELLED
        locked.completed_at = now
        locked.save(update_fields=["status", "completed_at", "updated_at"])
        audit(actor=actor, action="campaign.cancelled", object_type="campaign", object_id=locked.pk)
    return locked


# --- Staged sends: the winner -------------------------------------------------------------------


def campaign_send_remainder(*, campaign: Campaign, actor: str, variant_id: int | None = None,
                            channel: str | None = None) -> Campaign:
    """Send the held remainder of a staged campaign with the winning variant and channel.

    Customers who chose a channel explicitly keep it; the others get the winning channel
    where the policy allows it, and keep their provisional channel otherwise.
    """
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
        if channel:
            # Move flexible customers to the winning channel where they can receive it.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"""
                    WITH {ZONES_SQL}, {RECENT_SQL},
                    cand AS (
                        SELECT d.id, d.customer_id, %(channel)s::text AS channel, d.topic_id
                        FROM campaigns_delivery d
                        WHERE d.campaign_id = %(campaign)s AND d.status = %(held)s AND d.routed_by <> 'explicit'
                          AND d.channel <> %(channel)s
                    ),
                    ok AS (
                        SELECT cand.id FROM cand {joins_sql()}
                        LEFT JOIN recent ON recent.customer_id = cand.customer_id
                        WHERE {reason_sql(cap_counts="recent.sent")} IS NULL
                    )
                    UPDATE campaigns_delivery d SET channel = %(channel)s, routed_by = 'winner'
                    FROM ok WHERE d.id = ok.id
                    """,
                    {**PolicySettings.current().params(), "now": now, "channel": channel, "campaign": locked.pk,
                     "held": HELD},
                )
        released = deliveries_transition(
            to=PLANNED, only_from=[HELD], now=now,
            source="SELECT id FROM campaigns_delivery WHERE campaign_id = %(campaign)s",
            sets={"variant_id": "%(variant)s"}, params={"campaign": locked.pk, "variant": variant_id},
        ).changed
        locked.winner_variant_id = variant_id
        locked.winner_channel = channel
        locked.winner_decided_at = now
        if locked.status == Campaign.Status.TESTING:
            locked.status = Campaign.Status.SENDING
        locked.save(update_fields=["winner_variant", "winner_channel", "winner_decided_at", "status", "updated_at"])
        audit(actor=actor, action="campaign.winner_sent", object_type="campaign", object_id=locked.pk,
              details={"variant": variants[variant_id].key, "channel": channel, "released": released})
        publish_after_commit([(locked.pk, 0, released)])
        transaction.on_commit(dispatch_soon, robust=True)
    return locked


# --- The minute tick: start scheduled campaigns, finish done ones, pick due winners --------------


def campaigns_tick(*, now: datetime | None = None) -> dict:
    """Run every minute. Safe to run twice and in parallel (each campaign is locked)."""
    now = now or timezone.now()
    started, finished, decided = [], [], []
    for pk in Campaign.objects.filter(status=Campaign.Status.SCHEDULED, starts_at__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            locked = Campaign.objects.select_for_update(skip_locked=True).filter(pk=pk, status=Campaign.Status.SCHEDULED).first()
            # A scheduled campaign waits (a minute at a time) for its segments to be ready.
            if locked and not _audience_not_ready(locked):
                _start(locked, now=now)
                started.append(pk)
    for campaign in Campaign.objects.filter(status__in=[Campaign.Status.SENDING, Campaign.Status.TESTING]):
        open_rows = set(
            campaign.deliveries.filter(status__in=[PLANNED, DeliveryStatus.SENDING, HELD])
            .values_list("status", flat=True).distinct()
        )
        if not open_rows:
            with transaction.atomic():
                Campaign.objects.filter(pk=campaign.pk, status=campaign.status).update(
                    status=Campaign.Status.COMPLETED, completed_at=now, updated_at=now
                )
                publish_after_commit([(campaign.pk, 0, 1)])
            finished.append(campaign.pk)
        elif open_rows == {HELD}:
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
