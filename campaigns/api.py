"""Campaigns API: compose, launch and steer campaigns, read their results and deliveries,
and send one-off messages through the same send policy."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from django.db import IntegrityError
from django.db.models import Q
from django.http import Http404
from ninja import Field, Query, Router, Schema, Status

from customers.auth import api_actor
from customers.models import Customer, Topic
from customers.schemas import error_responses
from core.errors import FieldError, InputError
from customers.services.preferences import unknown_topic_message

from . import queries
from .models import Campaign, Delivery, DeliveryStatus
from .personalisation import TemplateProblem, compile_content
from .services import compose, lifecycle, messages
from .schemas import (
    CampaignIn,
    CampaignListOut,
    CampaignOut,
    DeliveriesOut,
    MessageIn,
    MessageOut,
    MessageStatusOut,
    SendRemainderIn,
)

router = Router(tags=["campaigns"])
ERRORS = error_responses(404)
TRANSITION_ERRORS = error_responses(404, 409)
MESSAGE_ERRORS = error_responses(409)

# The services name fields after CampaignInput; the API nests some of them.
FIELD_PATHS = {
    "send_at": "schedule.at",
    "send_at_local": "schedule.local",
    "goal_event": "goal.event",
    "goal_within_hours": "goal.within_hours",
    "test_percent": "test.percent",
    "test_metric": "test.metric",
    "test_hours": "test.hours",
    "test_channels": "test.channels",
    "variant_id": "variant",
}
COUNTS = queries.FUNNEL + queries.OUTCOMES + (queries.SUPPRESSED,)


def _campaign(campaign_id: int) -> Campaign:
    campaign = (
        Campaign.objects.select_related("topic")
        .prefetch_related("variants", "segments", "exclude_segments")
        .filter(pk=campaign_id)
        .first()
    )
    if campaign is None:
        raise Http404(f"No campaign has id {campaign_id}.")
    return campaign


def _api_error(exc: InputError, *, single_variant_list: bool = False) -> InputError:
    """The same errors, named by the API's field paths."""
    errors = []
    for error in exc.errors:
        field = FIELD_PATHS.get(error.field, error.field)
        # The services leave the variant out of paths when there is one; the caller sent a list.
        if single_variant_list and (field == "weight" or field.startswith("content")):
            field = f"variants[0].{field}"
        errors.append(FieldError(field, error.message, error.index))
    return InputError(errors, message=exc.message)


def _conflict(exc: InputError):
    """409 for a request the campaign's current status does not allow."""
    return Status(409, {"message": exc.message, "errors": [e.as_dict() for e in exc.errors]})


def _is_conflict(exc: InputError) -> bool:
    return bool(exc.errors) and all(error.field == "status" for error in exc.errors)


# --- Composing --------------------------------------------------------------------------------


def _input(payload: CampaignIn) -> compose.CampaignInput:
    if payload.variants is not None:
        variants = [
            compose.VariantInput(key=v.key, weight=v.weight, name=v.name, content=v.content.by_channel())
            for v in payload.variants
        ]
    elif payload.content is not None:
        variants = [compose.VariantInput(key="A", content=payload.content.by_channel())]
    else:
        variants = []
    schedule = Campaign.Schedule.NOW
    send_at = send_at_local = None
    if payload.schedule and payload.schedule.at:
        schedule, send_at = Campaign.Schedule.AT, payload.schedule.at
    elif payload.schedule and payload.schedule.local:
        schedule, send_at_local = Campaign.Schedule.LOCAL, datetime.fromisoformat(payload.schedule.local)
    data = compose.CampaignInput(
        name=payload.name,
        topic=payload.topic,
        channels=[str(channel) for channel in payload.channels],
        segment_ids=payload.segment_ids,
        exclude_segment_ids=payload.exclude_segment_ids,
        strategy=str(payload.strategy),
        variants=variants,
        schedule=schedule,
        send_at=send_at,
        send_at_local=send_at_local,
        throttle_per_minute=payload.throttle_per_minute,
    )
    if payload.goal:
        data.goal_event, data.goal_within_hours = payload.goal.event, payload.goal.within_hours
    if payload.test:
        data.test_percent, data.test_metric = payload.test.percent, payload.test.metric
        data.test_hours, data.test_channels = payload.test.hours, payload.test.channels
    return data


def _counts(source: dict | None) -> dict:
    source = source or {}
    return {metric: source.get(metric, 0) for metric in COUNTS}


def _staged(campaign: Campaign) -> dict:
    results = queries.staged_results(campaign)
    keys = {v.pk: v.key for v in campaign.variants.all()}

    def arm(a: queries.Arm, key: str) -> dict:
        return {"key": key, "sent": a.trials, "successes": a.successes, "rate": a.rate}

    return {
        "metric": results.metric,
        "variants": [arm(a, keys[a.key]) for a in results.variants],
        "channels": [arm(a, a.key) for a in results.channels],
        "suggested_variant": keys.get(results.variant_winner),
        "variant_p_value": results.variant_p,
        "variant_significant": results.variant_significant,
        "suggested_channel": results.channel_winner,
        "channel_p_value": results.channel_p,
        "channel_significant": results.channel_significant,
    }


def _summary(campaign: Campaign) -> dict:
    summary = queries.campaign_summary(campaign)
    variants = list(campaign.variants.all())
    local = campaign.send_at_local.replace(tzinfo=None).isoformat(timespec="minutes") if campaign.send_at_local else None
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "topic": campaign.topic.key,
        "channels": list(campaign.channels),
        "strategy": campaign.strategy,
        "segment_ids": sorted(s.pk for s in campaign.segments.all()),
        "exclude_segment_ids": sorted(s.pk for s in campaign.exclude_segments.all()),
        "variants": [{"key": v.key, "name": v.name, "weight": v.weight} for v in variants],
        "schedule": {"kind": campaign.schedule, "at": campaign.send_at, "local": local},
        "throttle_per_minute": campaign.throttle_per_minute,
        "goal": (
            {"event": campaign.goal_event, "within_hours": campaign.goal_within_hours} if campaign.goal_event else None
        ),
        "test": {
            "percent": campaign.test_percent, "metric": campaign.test_metric, "hours": campaign.test_hours,
            "channels": campaign.test_channels,
        } if campaign.is_staged else None,
        "audience_size": campaign.audience_size,
        "created_at": campaign.created_at,
        "launched_at": campaign.launched_at,
        "starts_at": campaign.starts_at,
        "completed_at": campaign.completed_at,
        "totals": _counts(summary["totals"]),
        "by_channel": {channel: _counts(counts) for channel, counts in summary["channels"].items()},
        "by_variant": {v.key: _counts(summary["variants"].get(v.key)) for v in variants},
        "suppressed_by_reason": summary["suppressed_by_reason"],
        "winner": summary["winner"],
        "staged": _staged(campaign) if campaign.is_staged else None,
    }


@router.post(
    "/campaigns",
    response={201: CampaignOut, **ERRORS},
    summary="Create a draft campaign",
    description=(
        "Give `content` for a single variant 'A', or `variants` with weights for an A/B test. Every problem is "
        "named by its field (e.g. `content.sms.body`, `variants[1].weight`, `schedule.at`); nothing is written then."
    ),
)
def campaign_create(request, payload: CampaignIn):
    try:
        campaign = compose.campaign_create(data=_input(payload), actor=api_actor(request))
    except InputError as exc:
        raise _api_error(exc, single_variant_list=payload.variants is not None and len(payload.variants) == 1) from None
    return Status(201, _summary(_campaign(campaign.pk)))


# --- Listing and results ----------------------------------------------------------------------


def _encode(*parts) -> str:
    return base64.urlsafe_b64encode("|".join(str(p) for p in parts).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[str]:
    try:
        return base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode().split("|")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None


def _bad_cursor() -> InputError:
    return InputError(
        [FieldError("cursor", "cursor is not one this API returned; pass next_cursor from the previous page")]
    )


class CampaignListQuery(Schema):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, description="next_cursor from the previous page")
    status: Campaign.Status | None = None


@router.get(
    "/campaigns",
    response={200: CampaignListOut, **ERRORS},
    summary="Campaigns, newest first",
    description="Keyset pagination: pass `next_cursor` as `cursor` to get the next page.",
)
def campaign_list(request, params: Query[CampaignListQuery]):
    rows = Campaign.objects.select_related("topic").order_by("-created_at", "-id")
    if params.status:
        rows = rows.filter(status=params.status)
    if params.cursor:
        try:
            created, pk = _decode(params.cursor)
            created_at, pk = datetime.fromisoformat(created), int(pk)
        except ValueError:
            raise _bad_cursor() from None
        rows = rows.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=pk))
    page = list(rows[: params.limit + 1])
    last = page[params.limit - 1] if len(page) > params.limit else None
    return {
        "campaigns": [
            {"id": c.pk, "name": c.name, "status": c.status, "topic": c.topic.key, "channels": list(c.channels),
             "audience_size": c.audience_size, "created_at": c.created_at, "launched_at": c.launched_at}
            for c in page[: params.limit]
        ],
        "next_cursor": _encode(last.created_at.isoformat(), last.pk) if last else None,
    }


@router.get(
    "/campaigns/{int:campaign_id}",
    response={200: CampaignOut, **ERRORS},
    summary="A campaign: status and counts",
    description=(
        "Counts in total, per channel and per variant (planned, sent, delivered, opened, clicked, converted, "
        "bounced, failed, suppressed …), suppressions by reason, and for staged sends the test results."
    ),
)
def campaign_detail(request, campaign_id: int):
    return _summary(_campaign(campaign_id))


class DeliveriesQuery(Schema):
    limit: int = Field(100, ge=1, le=500)
    cursor: str | None = Field(None, description="next_cursor from the previous page")
    status: DeliveryStatus | None = None


@router.get(
    "/campaigns/{int:campaign_id}/deliveries",
    response={200: DeliveriesOut, **ERRORS},
    summary="A campaign's deliveries, newest first",
    description="One row per customer and channel. Keyset pagination: pass `next_cursor` as `cursor`.",
)
def campaign_deliveries(request, campaign_id: int, params: Query[DeliveriesQuery]):
    campaign = _campaign(campaign_id)
    after = None
    if params.cursor:
        (value, *rest) = _decode(params.cursor)
        if rest or not value.isascii() or not value.isdigit() or int(value) < 1:
            raise _bad_cursor()
        after = int(value)
    page, next_after = queries.deliveries_page(campaign, after=after, limit=params.limit, status=params.status or "")
    return {
        "deliveries": [
            {"id": d.pk, "customer_id": d.customer_id, "external_id": d.customer.external_id, "email": d.customer.email,
             "channel": d.channel, "variant": d.variant.key if d.variant else None, "status": d.status,
             "reason": d.reason, "provider": d.provider, "provider_message_id": d.provider_message_id,
             "due_at": d.due_at, "sent_at": d.sent_at, "delivered_at": d.delivered_at, "opened_at": d.opened_at,
             "clicked_at": d.clicked_at, "converted_at": d.converted_at}
            for d in page
        ],
        "next_cursor": _encode(next_after) if next_after else None,
    }


# --- Lifecycle --------------------------------------------------------------------------------


def _transition(request, campaign_id: int, action):
    campaign = _campaign(campaign_id)
    try:
        action(campaign=campaign, actor=api_actor(request))
    except InputError as exc:
        if _is_conflict(exc):
            return _conflict(exc)
        raise _api_error(exc) from None
    return _summary(_campaign(campaign_id))


@router.post(
    "/campaigns/{int:campaign_id}/launch",
    response={200: CampaignOut, **TRANSITION_ERRORS},
    summary="Launch a draft",
    description="Snapshots the audience and starts sending, or schedules the snapshot for the campaign's start time.",
)
def campaign_launch(request, campaign_id: int):
    return _transition(request, campaign_id, lifecycle.campaign_launch)


@router.post("/campaigns/{int:campaign_id}/pause", response={200: CampaignOut, **TRANSITION_ERRORS},
             summary="Pause sending")
def campaign_pause(request, campaign_id: int):
    return _transition(request, campaign_id, lifecycle.campaign_pause)


@router.post("/campaigns/{int:campaign_id}/resume", response={200: CampaignOut, **TRANSITION_ERRORS},
             summary="Resume a paused campaign")
def campaign_resume(request, campaign_id: int):
    return _transition(request, campaign_id, lifecycle.campaign_resume)


@router.post(
    "/campaigns/{int:campaign_id}/cancel",
    response={200: CampaignOut, **TRANSITION_ERRORS},
    summary="Cancel for good",
    description="Whatever is not yet sent is cancelled; messages already handed to a provider stay sent.",
)
def campaign_cancel(request, campaign_id: int):
    return _transition(request, campaign_id, lifecycle.campaign_cancel)


@router.post(
    "/campaigns/{int:campaign_id}/send-remainder",
    response={200: CampaignOut, **TRANSITION_ERRORS},
    summary="Send the winner to the rest of a staged campaign",
    description=(
        "Without a body the suggested winner (see `staged` in the campaign) is sent; give `variant` (a key) "
        "and, for channel tests, `channel` to choose yourself."
    ),
)
def campaign_send_remainder(request, campaign_id: int, payload: SendRemainderIn | None = None):
    campaign = _campaign(campaign_id)
    variant_id = None
    channel = None
    if payload is not None:
        if payload.variant is not None:
            variant_id = next((v.pk for v in campaign.variants.all() if v.key == payload.variant), None)
            if variant_id is None:
                keys = ", ".join(v.key for v in campaign.variants.all())
                message = f"the campaign has no variant '{payload.variant}'; it has {keys}"
                raise InputError([FieldError("variant", message)])
        channel = str(payload.channel) if payload.channel else None
    try:
        lifecycle.campaign_send_remainder(
            campaign=campaign, actor=api_actor(request), variant_id=variant_id, channel=channel
        )
    except InputError as exc:
        if _is_conflict(exc):
            return _conflict(exc)
        raise _api_error(exc) from None
    return _summary(_campaign(campaign_id))


# --- One-off messages -------------------------------------------------------------------------


def _decision(delivery: Delivery) -> tuple[str, datetime | None]:
    """What the policy decided for a stored delivery: suppressed, held until later, or sent at once."""
    if delivery.status == DeliveryStatus.SUPPRESSED:
        return "suppress", None
    if delivery.due_at > delivery.created_at:
        return "defer", delivery.due_at
    return "send", None


@router.post(
    "/messages",
    response={200: MessageOut, 202: MessageOut, **MESSAGE_ERRORS},
    tags=["messages"],
    summary="Send one message to one customer",
    description=(
        "Goes through the same policy as campaigns (subscription for marketing topics, consent, reachability, "
        "frequency cap, quiet hours): 202 with the decision — `send`, `defer` (with `until`) or `suppress` (with "
        "the `reason`). A repeated `idempotency_key` answers 200 with the first delivery and `duplicate: true`."
    ),
)
def message_send(request, payload: MessageIn):
    errors = []
    ref = payload.customer
    lookup = next(name for name in ("id", "external_id", "email") if getattr(ref, name) is not None)
    value = getattr(ref, lookup)
    customer = Customer.objects.filter(**{"pk" if lookup == "id" else lookup: value}).first()
    if customer is None:
        errors.append(FieldError(f"customer.{lookup}", f"no customer has {lookup.replace('_', ' ')} {value}"))
    topic = Topic.objects.filter(key=payload.topic).first()
    if topic is None:
        errors.append(FieldError("topic", unknown_topic_message(payload.topic)))
    channel = str(payload.channel)
    try:
        compile_content(channel, payload.content)
    except TemplateProblem as problem:
        errors.append(FieldError(f"content.{problem.field}", problem.message))
    if errors:
        raise InputError(errors)
    send = dict(customer=customer, topic=topic, channel=channel, content=payload.content, actor=api_actor(request),
                idempotency_key=payload.idempotency_key)
    try:
        result = messages.message_send(**send)
    except IntegrityError:
        if not payload.idempotency_key:
            raise
        # A concurrent request with the same key won the race: answer with its delivery.
        result = messages.message_send(**send)
    delivery = result.delivery
    same_message = (delivery.customer_id, delivery.topic_id, delivery.channel) == (customer.pk, topic.pk, channel)
    if result.duplicate and not same_message:
        return Status(409, {
            "message": "That idempotency key was used for another message; use a new key for each message.",
            "errors": [{"field": "idempotency_key", "message": f"already used for delivery {delivery.pk}"}],
        })
    decision, until = _decision(delivery) if result.duplicate else (result.action, result.until)
    body = {"delivery_id": delivery.pk, "decision": decision, "reason": delivery.reason, "until": until,
            "status": delivery.status, "duplicate": result.duplicate}
    return Status(200 if result.duplicate else 202, body)


@router.get(
    "/messages/{int:delivery_id}", response={200: MessageStatusOut, **ERRORS}, tags=["messages"],
    summary="A message's status",
)
def message_status(request, delivery_id: int):
    """Where one delivery stands: planned, sent, delivered, opened … or suppressed, failed, bounced (with a reason)."""
    delivery = Delivery.objects.select_related("topic").filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404(f"No message has id {delivery_id}.")
    return {
        "delivery_id": delivery.pk, "customer_id": delivery.customer_id, "campaign_id": delivery.campaign_id,
        "topic": delivery.topic.key, "channel": delivery.channel, "status": delivery.status, "reason": delivery.reason,
        "provider": delivery.provider, "provider_message_id": delivery.provider_message_id,
        "idempotency_key": delivery.idempotency_key, "created_at": delivery.created_at, "due_at": delivery.due_at,
        "sent_at": delivery.sent_at, "delivered_at": delivery.delivered_at, "opened_at": delivery.opened_at,
        "clicked_at": delivery.clicked_at, "converted_at": delivery.converted_at, "failed_at": delivery.failed_at,
    }
