"""Campaigns UI: the list, compose with a live preview, launch confirmation, the campaign
page with results and staged-test decisions, and the sandbox outbox."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.csp import CSP
from django.utils.formats import date_format
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csp import csp_override
from django.views.decorators.http import require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from customers.models import ChannelKind
from customers.roles import MARKETER, role_required
from core.audit import user_actor
from core.errors import InputError
from core.htmx import wants_partial

from . import outbox, queries
from .forms import CONTENT_INPUTS, PERSONALISATION, CampaignForm, OutboxFilterForm, initial_from, preview_content
from .links import absolute
from .models import Campaign, DeliveryStatus, SuppressionReason
from .personalisation import SAMPLE_CUSTOMER
from .services import compose, lifecycle
from .sms import sms_length

LIST_TEMPLATE = "campaigns/list.html"
COMPOSE_TEMPLATE = "campaigns/compose.html"
LAUNCH_TEMPLATE = "campaigns/launch.html"
DETAIL_TEMPLATE = "campaigns/detail.html"
OUTBOX_TEMPLATE = "campaigns/outbox.html"

CAMPAIGNS_PER_PAGE = 50
DELIVERIES_PER_PAGE = 50
OUTBOX_PER_PAGE = 50
CHANNEL_LABELS = dict(ChannelKind.choices)
DELIVERED, OPENED, CLICKED, CONVERTED = (
    DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED
)
# Engagement a channel can report at all: an SMS or a call is never "opened".
TRACKED = {
    "email": {DELIVERED, OPENED, CLICKED, CONVERTED},
    "sms": {DELIVERED, CLICKED, CONVERTED},
    "whatsapp": {DELIVERED, OPENED, CLICKED, CONVERTED},
    "voice": {DELIVERED, CONVERTED},
    "push": {DELIVERED, OPENED, CLICKED, CONVERTED},
}
# Counts shown as they are, not as a share of what was sent.
UNRATED = {DeliveryStatus.PLANNED, DeliveryStatus.SENT}
STATUS_TONE = {
    Campaign.Status.DRAFT: "neutral", Campaign.Status.SCHEDULED: "warn", Campaign.Status.SENDING: "live",
    Campaign.Status.TESTING: "live", Campaign.Status.PAUSED: "warn", Campaign.Status.COMPLETED: "ok",
    Campaign.Status.CANCELLED: "bad",
}
DELIVERY_TONE = {
    DeliveryStatus.PLANNED: "neutral", DeliveryStatus.HELD: "neutral", DeliveryStatus.SENDING: "live",
    DeliveryStatus.SENT: "live", DeliveryStatus.DELIVERED: "live", DeliveryStatus.OPENED: "ok",
    DeliveryStatus.CLICKED: "ok", DeliveryStatus.CONVERTED: "ok", DeliveryStatus.SUPPRESSED: "muted",
    DeliveryStatus.CANCELLED: "muted", DeliveryStatus.FAILED: "bad", DeliveryStatus.BOUNCED: "bad",
    DeliveryStatus.COMPLAINED: "bad", DeliveryStatus.UNSUBSCRIBED: "bad",
}


def _int(value) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _errors_sentence(exc: InputError) -> str:
    text = "; ".join(error.message for error in exc.errors) or exc.message
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


# --- Results in words and numbers ---------------------------------------------------------------


@dataclass
class Progress:
    planned: int
    sent: int
    failed: int
    suppressed: int
    cancelled: int

    @property
    def percent(self) -> float:
        return min(100.0, _pct(self.sent, self.planned) or 0.0)


def _progress(results: queries.Results) -> Progress:
    totals = results.totals
    return Progress(
        planned=totals[DeliveryStatus.PLANNED], sent=totals[DeliveryStatus.SENT],
        failed=totals[DeliveryStatus.FAILED] + totals[DeliveryStatus.BOUNCED],
        suppressed=totals[DeliveryStatus.SUPPRESSED], cancelled=totals[DeliveryStatus.CANCELLED],
    )


def _funnel_row(label: str, counts, *, channel: str = "", key: str = "", goal: bool = True) -> dict:
    sent = counts.get(DeliveryStatus.SENT, 0)
    tracked = TRACKED.get(channel, set(queries.FUNNEL)) - (set() if goal else {CONVERTED})
    cells = []
    for metric in queries.FUNNEL:
        value = counts.get(metric, 0)
        rate = _pct(value, sent) if metric not in UNRATED else None
        cells.append({"metric": metric, "value": value, "rate": rate, "tracked": metric in tracked or metric in UNRATED})
    return {"label": label, "channel": channel, "key": key, "cells": cells,
            "failed": counts.get(DeliveryStatus.FAILED, 0) + counts.get(DeliveryStatus.BOUNCED, 0),
            "suppressed": counts.get(DeliveryStatus.SUPPRESSED, 0)}


def _reason_words(reason: str, labels: dict) -> str:
    """A delivery's reason as words: the label of its code, then any detail ("render_failed: …")."""
    code, _, detail = reason.partition(": ")
    if code not in labels:
        return reason
    return f"{labels[code]}: {detail}" if detail else labels[code]


def _suppression_rows(by_reason: dict) -> list[dict]:
    labels = dict(SuppressionReason.choices)
    top = max(by_reason.values(), default=0)
    return [
        {"reason": reason, "label": labels.get(reason, reason.replace("_", " ")), "count": count,
         "width": max(2.0, 100.0 * count / top) if top else 0}
        for reason, count in sorted(by_reason.items(), key=lambda item: (-item[1], item[0])) if count
    ]


def schedule_words(campaign: Campaign) -> str:
    """When the campaign sends, as a marketer would say it."""
    def when(moment) -> str:
        return date_format(timezone.localtime(moment), "l j F Y, H:i")

    if campaign.schedule == Campaign.Schedule.AT and campaign.send_at:
        words = f"At {when(campaign.send_at)} ({timezone.get_current_timezone_name()})"
    elif campaign.schedule == Campaign.Schedule.LOCAL and campaign.send_at_local:
        wall = campaign.send_at_local.replace(tzinfo=None)
        words = (f"At {date_format(wall, 'H:i')} on {date_format(wall, 'l j F Y')} in each recipient's own time zone"
                 " (the earliest time zones get it up to a day before the latest)")
    elif campaign.launched_at:
        words = f"Started {when(campaign.starts_at or campaign.launched_at)}"
    else:
        words = "As soon as you launch it"
    if campaign.throttle_per_minute:
        words += f", at most {campaign.throttle_per_minute:,} messages a minute"
    return words


def _staged_context(campaign: Campaign) -> dict | None:
    if not campaign.is_staged:
        return None
    staged = queries.staged_results(campaign)
    variant_keys = {v.pk: v.key for v in campaign.variants.all()}

    def arms(items, winner):
        return [{"label": arm.label if not isinstance(arm.key, str) else CHANNEL_LABELS.get(arm.key, arm.key),
                 "key": arm.key, "successes": arm.successes, "trials": arm.trials,
                 "rate": None if arm.rate is None else 100 * arm.rate, "winner": arm.key == winner}
                for arm in items]

    undecided = not campaign.winner_decided_at and campaign.status in {
        Campaign.Status.SENDING, Campaign.Status.TESTING, Campaign.Status.PAUSED}
    winner_variant = staged.variant_winner or (min(variant_keys, key=variant_keys.get) if variant_keys else None)
    winner_channel = staged.channel_winner or (campaign.channels[0] if campaign.test_channels and campaign.channels else "")
    return {
        "metric": campaign.get_test_metric_display().lower(),
        "variants": arms(staged.variants, staged.variant_winner),
        "channels": arms(staged.channels, staged.channel_winner),
        "variant_p": staged.variant_p, "channel_p": staged.channel_p,
        "variant_significant": staged.variant_significant, "channel_significant": staged.channel_significant,
        "can_decide": undecided,
        "winner_variant": winner_variant, "winner_variant_key": variant_keys.get(winner_variant, ""),
        "winner_channel": winner_channel, "winner_channel_label": CHANNEL_LABELS.get(winner_channel, ""),
        "decided_variant": variant_keys.get(campaign.winner_variant_id, ""),
        "decided_channel": CHANNEL_LABELS.get(campaign.winner_channel, ""),
    }


# --- List ---------------------------------------------------------------------------------------


@dataclass
class CampaignRow:
    campaign: Campaign
    progress: Progress
    open_rate: float | None
    click_rate: float | None
    tone: str

    @property
    def channels(self) -> list[tuple[str, str]]:
        return [(channel, CHANNEL_LABELS.get(channel, channel)) for channel in self.campaign.channels]


@role_required(MARKETER)
def campaign_list(request):
    page = Paginator(queries.campaigns_list(request.user), CAMPAIGNS_PER_PAGE).get_page(request.GET.get("page"))
    campaigns = list(page.object_list)
    results = queries.campaign_results([campaign.pk for campaign in campaigns])
    rows = []
    for campaign in campaigns:
        result = results[campaign.pk]
        rows.append(CampaignRow(
            campaign, _progress(result), _pct(result.totals[OPENED], result.totals[DeliveryStatus.SENT]),
            _pct(result.totals[CLICKED], result.totals[DeliveryStatus.SENT]),
            STATUS_TONE.get(campaign.status, "neutral"),
        ))
    return render(request, LIST_TEMPLATE, {"rows": rows, "page": page})


# --- Compose ------------------------------------------------------------------------------------


def _compose_page(request, form: CampaignForm, *, campaign: Campaign | None, status: int = 200):
    context = {
        "form": form,
        "campaign": campaign,
        "variants": form.variant_sections(),
        "variant_count": form.selected_variant_count(),
        "channel_rows": form.channel_rows(),
        "chosen_segments": form.chosen_segments("segment_ids"),
        "excluded_segments": form.chosen_segments("exclude_segment_ids"),
        "personalisation": PERSONALISATION,
        "sample": SAMPLE_CUSTOMER,
        "timezone_name": timezone.get_current_timezone_name(),
        "content_channels": [(channel, CHANNEL_LABELS[channel]) for channel in CONTENT_INPUTS],
    }
    return render(request, COMPOSE_TEMPLATE, context, status=status)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def campaign_new(request):
    if request.method == "POST":
        form = CampaignForm(request.POST)
        if form.is_valid():
            try:
                campaign = compose.campaign_create(data=form.to_input(), actor=user_actor(request), user=request.user)
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Draft “{campaign.name}” saved. Check the audience, then launch it.")
                return redirect("campaigns:detail", campaign.pk)
        return _compose_page(request, form, campaign=None, status=422)
    return _compose_page(request, CampaignForm(), campaign=None)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def campaign_edit(request, campaign_id: int):
    campaign = queries.campaign_for(request.user, campaign_id)
    if request.method == "POST":
        form = CampaignForm(request.POST)
        if form.is_valid():
            try:
                campaign = compose.campaign_update(campaign=campaign, data=form.to_input(), actor=user_actor(request))
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Draft “{campaign.name}” saved.")
                return redirect("campaigns:detail", campaign.pk)
        return _compose_page(request, form, campaign=campaign, status=422)
    if not campaign.is_editable:
        messages.info(request, f"“{campaign.name}” is {campaign.get_status_display().lower()}; only drafts can be changed.")
        return redirect("campaigns:detail", campaign.pk)
    form = CampaignForm(initial=initial_from(compose.campaign_input_from(campaign)))
    return _compose_page(request, form, campaign=campaign)


# --- Email HTML in frames ---------------------------------------------------------------------
# Email HTML is styled inline (style="" and <style>), which the site's Content-Security-Policy
# refuses, and a srcdoc frame inherits the policy of its page. So rendered emails are served
# as documents of their own with a policy that lets their styles and images show and nothing
# run: sandboxed (no scripts, no forms, an opaque origin), framed by our own pages only.
EMAIL_FRAME_CSP = {
    "default-src": [CSP.NONE],
    "style-src": [CSP.UNSAFE_INLINE, "https:"],
    "img-src": ["https:", "http:", "data:"],
    "font-src": ["https:", "data:"],
    "form-action": [CSP.NONE],
    "frame-ancestors": [CSP.SELF],
    "sandbox": True,
}
# Previews a marketer's session keeps for its frames: enough for requests still in flight.
PREVIEWS_KEPT = 4


def _email_document(html: str) -> HttpResponse:
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "private, no-store"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _preview_frame_key(request, html: str) -> str:
    """Keep the rendered email in the session and return the key its frame is served under."""
    key = hashlib.sha256(html.encode()).hexdigest()[:32]
    previews = [item for item in request.session.get("email_previews", []) if item[0] != key]
    request.session["email_previews"] = [*previews[-(PREVIEWS_KEPT - 1):], [key, html]]
    return key


@role_required(MARKETER)
@require_POST
def campaign_preview(request):
    """The selected variant and channel rendered for the sample customer; nothing is saved."""
    key, channel, rendered, problem = preview_content(request.POST)
    context = {"key": key, "channel": channel, "channel_label": CHANNEL_LABELS[channel], "rendered": rendered,
               "problem": problem, "sample": SAMPLE_CUSTOMER, "sms": None}
    if rendered is not None and channel == "sms":
        context["sms"] = sms_length(rendered.get("body", ""))
    if rendered is not None and channel == "email" and rendered.get("html"):
        context["frame_key"] = _preview_frame_key(request, rendered["html"])
    return render(request, f"{COMPOSE_TEMPLATE}#preview", context)


@role_required(MARKETER)
@require_http_methods(["GET", "HEAD"])
@xframe_options_sameorigin
@csp_override(EMAIL_FRAME_CSP)
def campaign_preview_frame(request, frame_key: str):
    """The email HTML of a recent preview in this session, for the preview's frame."""
    html = next((html for key, html in request.session.get("email_previews", []) if key == frame_key), None)
    if html is None:
        # The session moved on (another tab previewed more since): the next preview refreshes the frame.
        return _email_document('<p>This preview is out of date.</p>')
    return _email_document(html)


@role_required(MARKETER)
@require_POST
def campaign_delete(request, campaign_id: int):
    campaign = queries.campaign_for(request.user, campaign_id)
    try:
        compose.campaign_delete(campaign=campaign, actor=user_actor(request))
    except InputError as exc:
        messages.error(request, "Not deleted: " + _errors_sentence(exc))
        return redirect("campaigns:detail", campaign.pk)
    messages.success(request, f"Draft “{campaign.name}” deleted.")
    return redirect("campaigns:list")


# --- Launch -------------------------------------------------------------------------------------


def _launch_context(campaign: Campaign) -> dict:
    predicted = outbox.predicted(campaign, now=timezone.now())
    top = max((per["send"] + per["suppressed"] for per in predicted["channels"].values()), default=0)
    channels = []
    for channel in campaign.channels:
        per = predicted["channels"].get(channel, {"send": 0, "suppressed": 0})
        total = per["send"] + per["suppressed"]
        channels.append({
            "channel": channel, "label": CHANNEL_LABELS.get(channel, channel), "send": per["send"],
            "suppressed": per["suppressed"], "total": total,
            "send_width": 100.0 * per["send"] / top if top else 0,
            "suppressed_width": 100.0 * per["suppressed"] / top if top else 0,
        })
    suppressed = sum(predicted["suppressed"].values())
    return {
        "campaign": campaign,
        "channels": channels,
        "to_send": predicted["to_send"],
        "suppressed_total": suppressed,
        "reasons": _suppression_rows(predicted["suppressed"]),
        "schedule": schedule_words(campaign),
        "segments": list(campaign.segments.all()),
        "excluded": list(campaign.exclude_segments.all()),
        "variants": list(campaign.variants.all()),
    }


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def campaign_launch(request, campaign_id: int):
    campaign = queries.campaign_for(request.user, campaign_id)
    if request.method == "POST":
        try:
            campaign = lifecycle.campaign_launch(campaign=campaign, actor=user_actor(request))
        except InputError as exc:
            if not campaign.is_editable:
                messages.error(request, _errors_sentence(exc))
                return redirect("campaigns:detail", campaign.pk)
            context = {**_launch_context(campaign), "launch_errors": [error.message for error in exc.errors]}
            return render(request, LAUNCH_TEMPLATE, context, status=422)
        if campaign.status == Campaign.Status.SCHEDULED:
            when = date_format(timezone.localtime(campaign.starts_at), "l j F, H:i")
            messages.success(request, f"“{campaign.name}” is scheduled: the audience is taken and sending starts {when}.")
        else:
            messages.success(request, f"“{campaign.name}” launched: {campaign.audience_size:,} customers in the audience.")
        return redirect("campaigns:detail", campaign.pk)
    if not campaign.is_editable:
        messages.info(request, f"“{campaign.name}” was launched already.")
        return redirect("campaigns:detail", campaign.pk)
    return render(request, LAUNCH_TEMPLATE, _launch_context(campaign))


# --- Campaign page ------------------------------------------------------------------------------


def _deliveries_context(campaign: Campaign, after: int | None) -> dict:
    rows, next_after = queries.deliveries_page(campaign, after=after, limit=DELIVERIES_PER_PAGE)
    labels = dict(SuppressionReason.choices)
    return {
        "campaign": campaign,
        "deliveries": [
            (delivery, DELIVERY_TONE.get(delivery.status, "neutral"), _reason_words(delivery.reason, labels))
            for delivery in rows
        ],
        "next_after": next_after,
        "after": after,
    }


def _results_context(campaign: Campaign) -> dict:
    results = queries.campaign_results([campaign.pk])[campaign.pk]
    channels = list(campaign.channels) + sorted(set(results.by_channel) - set(campaign.channels))
    variants = list(campaign.variants.all())
    goal = bool(campaign.goal_event)
    return {
        "progress": _progress(results),
        "channel_rows": [
            _funnel_row(CHANNEL_LABELS.get(c, c), results.by_channel.get(c, {}), channel=c, goal=goal) for c in channels
        ],
        "variant_rows": [
            _funnel_row(f"Variant {v.key}" + (f" · {v.name}" if v.name else ""), results.by_variant.get(v.pk, {}),
                        key=v.key, goal=goal)
            for v in variants
        ] if len(variants) > 1 else [],
        "totals_row": _funnel_row("All channels", results.totals, goal=goal),
        "reasons": _suppression_rows(results.suppressed),
        "staged": _staged_context(campaign),
    }


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def campaign_detail(request, campaign_id: int):
    campaign = queries.campaign_for(request.user, campaign_id)
    after = _int(request.GET.get("after"))
    if wants_partial(request) and request.GET.get("part") == "deliveries":
        return render(request, f"{DETAIL_TEMPLATE}#deliveries", _deliveries_context(campaign, after))
    context = {
        "campaign": campaign,
        "tone": STATUS_TONE.get(campaign.status, "neutral"),
        "schedule": schedule_words(campaign),
        "channels": [(channel, CHANNEL_LABELS.get(channel, channel)) for channel in campaign.channels],
        **_results_context(campaign),
        **_deliveries_context(campaign, after),
    }
    return render(request, DETAIL_TEMPLATE, context)


def _lifecycle(request, campaign_id: int, action, done: str):
    campaign = queries.campaign_for(request.user, campaign_id)
    try:
        action(campaign=campaign, actor=user_actor(request))
    except InputError as exc:
        messages.error(request, _errors_sentence(exc))
    else:
        messages.success(request, done.format(name=campaign.name))
    return redirect("campaigns:detail", campaign.pk)


@role_required(MARKETER)
@require_POST
def campaign_pause(request, campaign_id: int):
    return _lifecycle(request, campaign_id, lifecycle.campaign_pause, "“{name}” paused: nothing more is sent until you resume.")


@role_required(MARKETER)
@require_POST
def campaign_resume(request, campaign_id: int):
    return _lifecycle(request, campaign_id, lifecycle.campaign_resume, "“{name}” resumed.")


@role_required(MARKETER)
@require_POST
def campaign_cancel(request, campaign_id: int):
    return _lifecycle(request, campaign_id, lifecycle.campaign_cancel,
                      "“{name}” cancelled: messages not yet sent will not be sent.")


@role_required(MARKETER)
@require_POST
def campaign_send_remainder(request, campaign_id: int):
    campaign = queries.campaign_for(request.user, campaign_id)
    channel = request.POST.get("channel") or None
    try:
        campaign = lifecycle.campaign_send_remainder(
            campaign=campaign, actor=user_actor(request), variant_id=_int(request.POST.get("variant")), channel=channel,
        )
    except InputError as exc:
        messages.error(request, _errors_sentence(exc))
    else:
        winner = campaign.winner_variant.key if campaign.winner_variant else ""
        by = f" by {CHANNEL_LABELS.get(campaign.winner_channel, campaign.winner_channel)}" if campaign.winner_channel else ""
        messages.success(request, f"The rest of the audience gets variant {winner}{by}.")
    return redirect("campaigns:detail", campaign.pk)


# --- Sandbox outbox -----------------------------------------------------------------------------


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def outbox_list(request):
    filters = OutboxFilterForm(request.GET).filters()
    campaign = queries.campaign_for(request.user, filters["campaign_id"]) if filters["campaign_id"] else None
    rows, next_before = queries.sandbox_messages_page(
        request.user, channel=filters["channel"], campaign_id=filters["campaign_id"], before=filters["before"],
        limit=OUTBOX_PER_PAGE,
    )
    context = {"rows": rows, "next_before": next_before, "filters": filters, "campaign": campaign,
               "channels": ChannelKind.choices, "channel_labels": CHANNEL_LABELS}
    if wants_partial(request):
        return render(request, f"{OUTBOX_TEMPLATE}#messages", context)
    return render(request, OUTBOX_TEMPLATE, context)


def _without_open_pixel(html: str) -> str:
    """The email minus its open pixel, with links that go nowhere: looking at it here must not
    count as the customer opening it or clicking (a sandboxed frame may not open new windows)."""
    prefix = absolute(reverse("tracking:open", args=["token"])).rsplit("/", 1)[0] + "/"
    return '<base target="_blank">' + re.sub(r'<img[^>]*src="' + re.escape(prefix) + r'[^"]*"[^>]*>', "", html)


@role_required(MARKETER)
@require_http_methods(["GET", "HEAD"])
@xframe_options_sameorigin
@csp_override(EMAIL_FRAME_CSP)
def outbox_message_frame(request, message_id: int):
    """A sandbox email's HTML, for the outbox viewer's frame (without its open pixel)."""
    message = queries.sandbox_message_for(request.user, message_id)
    html = message.rendered.get("html") if message.channel == ChannelKind.EMAIL else None
    if not isinstance(html, str):
        raise Http404("This message has no HTML body.")
    return _email_document(_without_open_pixel(html))


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def outbox_message(request, message_id: int):
    message = queries.sandbox_message_for(request.user, message_id)
    context = {"message": message, "channel_labels": CHANNEL_LABELS}
    if wants_partial(request):
        return render(request, f"{OUTBOX_TEMPLATE}#message", context)
    filters = {"channel": "", "campaign_id": None, "before": None}
    rows, next_before = queries.sandbox_messages_page(
        request.user, channel="", campaign_id=None, before=None, limit=OUTBOX_PER_PAGE
    )
    context.update(rows=rows, next_before=next_before, filters=filters, campaign=None,
                   channels=ChannelKind.choices)
    return render(request, OUTBOX_TEMPLATE, context)
