"""Support UI: find a customer, read their timeline, fix their preferences on their behalf."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import push_url

from core.htmx import render_partials, wants_partial

from . import queries, reachability
from .services import preferences, profiles
from .forms import CustomerSearchForm, NoteForm, SubscriptionChangeForm, TimelineFilterForm
from .models import ChannelKind, Event, EventCategory
from .roles import MARKETER, SUPPORT, can_use_marketing, role_required

CUSTOMERS_PER_PAGE = 50
TIMELINE_PAGE_SIZE = 50
CONSENT_LEDGER_SIZE = 10

DETAIL_TEMPLATE = "customers/detail.html"


# --- Customer list ----------------------------------------------------------------------------


@role_required(SUPPORT, MARKETER)
@vary_on_headers("HX-Request")
def customer_list(request):
    form = CustomerSearchForm(request.GET)
    filters = form.filters()
    page = Paginator(queries.customers_search(**filters), CUSTOMERS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "filters": filters,
        "page": page,
        "page_range": page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        "channels": ChannelKind.choices,
    }
    if wants_partial(request):
        return render(request, "customers/list.html#results", context)
    context["stages"] = queries.lifecycle_stages()
    context["can_import"] = can_use_marketing(request.user)
    return render(request, "customers/list.html", context)


# --- Customer page ----------------------------------------------------------------------------


@role_required(SUPPORT, MARKETER)
def customer_detail(request, customer_id: int):
    customer = queries.customer_profile_for_user(user=request.user, customer_id=customer_id)
    form = TimelineFilterForm(request.GET)
    filters = form.filters()
    cursor = request.GET.get("cursor") or None
    try:
        page = queries.timeline_page(customer.pk, limit=TIMELINE_PAGE_SIZE, cursor=cursor, **filters)
    except queries.InvalidCursor:
        cursor = None
        page = queries.timeline_page(customer.pk, limit=TIMELINE_PAGE_SIZE, **filters)
    context = _detail_context(customer, filters=filters, page=page)
    context["older"] = bool(cursor)
    return render(request, DETAIL_TEMPLATE, context)


@role_required(SUPPORT, MARKETER)
@vary_on_headers("HX-Request")
def customer_timeline(request, customer_id: int):
    """Timeline pages for htmx: the next page after ``cursor``, or the whole filtered timeline."""
    customer = queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    form = TimelineFilterForm(request.GET)
    filters = form.filters()
    detail_url = reverse("customers:detail", args=[customer.pk])
    if not wants_partial(request):
        query = urlencode({key: value for key, value in request.GET.items() if key in form.fields and value})
        return redirect(f"{detail_url}?{query}" if query else detail_url)
    cursor = request.GET.get("cursor") or None
    try:
        page = queries.timeline_page(customer.pk, limit=TIMELINE_PAGE_SIZE, cursor=cursor, **filters)
    except queries.InvalidCursor as exc:
        return HttpResponseBadRequest(str(exc))
    context = {"customer": customer, "filters": filters, **_timeline_context(page, queries.topic_names())}
    if cursor:
        return render(request, f"{DETAIL_TEMPLATE}#timeline-page", context)
    context.update(category_choices=EventCategory.choices, channel_choices=ChannelKind.choices)
    response = render(request, f"{DETAIL_TEMPLATE}#timeline", context)
    query = urlencode({key: value for key, value in filters.items() if value})
    return push_url(response, f"{detail_url}?{query}" if query else detail_url)


@role_required(SUPPORT, MARKETER)
@require_POST
def subscription_change(request, customer_id: int):
    customer = queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    form = SubscriptionChangeForm(request.POST)
    if not form.is_valid():
        failed = {
            "topic": request.POST.get("topic", ""),
            "channel": request.POST.get("channel", ""),
            "subscribed": request.POST.get("subscribed", ""),
            "reason": request.POST.get("reason", ""),
            "errors": form.errors,
        }
        return _render_detail_with_error(request, customer, "preferences", {"failed": failed})

    data = form.cleaned_data
    changed = preferences.subscription_set(
        customer=customer,
        topic=data["topic"],
        channel=data["channel"],
        subscribed=data["subscribed"],
        source="support",
        actor=request.user.get_username(),
        reason=data["reason"],
    )
    state = "subscribed to" if data["subscribed"] else "unsubscribed from"
    where = f"{data['topic'].name} by {ChannelKind(data['channel']).label}"
    if changed:
        messages.success(request, f"{customer.display_name} is now {state} {where}.")
    else:
        messages.info(request, f"Nothing changed: {customer.display_name} was already {state} {where}.")
    return _after_write(request, customer, "preferences")


@role_required(SUPPORT, MARKETER)
@require_POST
def note_add(request, customer_id: int):
    customer = queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    form = NoteForm(request.POST)
    if not form.is_valid():
        return _render_detail_with_error(request, customer, "note-form", {"note_form": form})
    profiles.note_add(customer=customer, text=form.cleaned_data["text"], actor=request.user.get_username())
    messages.success(request, "Note added to the timeline.")
    return _after_write(request, customer, "note-form")


def _after_write(request, customer, partial: str):
    """After a change: htmx gets the changed card, the refreshed timeline and the notice;
    a plain form post is redirected back to the page."""
    detail_url = reverse("customers:detail", args=[customer.pk])
    if not wants_partial(request):
        return redirect(detail_url)
    customer = queries.customer_profile_for_user(user=request.user, customer_id=customer.pk)
    filters = _page_timeline_filters(request)
    page = queries.timeline_page(customer.pk, limit=TIMELINE_PAGE_SIZE, **filters)
    context = _detail_context(customer, filters=filters, page=page)
    return render_partials(
        request, [f"{DETAIL_TEMPLATE}#{partial}", f"{DETAIL_TEMPLATE}#timeline", "base.html#flash"], context
    )


def _render_detail_with_error(request, customer, partial: str, extra: dict):
    """A form that did not validate: nothing was written; show it again with its errors."""
    customer = queries.customer_profile_for_user(user=request.user, customer_id=customer.pk)
    filters = _page_timeline_filters(request)
    page = queries.timeline_page(customer.pk, limit=TIMELINE_PAGE_SIZE, **filters)
    context = {**_detail_context(customer, filters=filters, page=page), **extra}
    if wants_partial(request):
        return render_partials(request, [f"{DETAIL_TEMPLATE}#{partial}"], context, status=422)
    return render(request, DETAIL_TEMPLATE, context, status=422)


def _page_timeline_filters(request) -> dict[str, str]:
    """The timeline filters of the page a write came from, so the refreshed timeline keeps them.

    The filter form pushes them into the page URL, which htmx sends as HX-Current-URL; a
    plain form post starts from an unfiltered timeline.
    """
    current = request.htmx.current_url_abs_path if request.htmx else None
    query = urlsplit(current).query if current else ""
    return TimelineFilterForm(QueryDict(query)).filters()


def _detail_context(customer, *, filters: dict, page: queries.TimelinePage) -> dict:
    consent = queries.consent_overview(customer)
    matrix = queries.preference_matrix(customer)
    return {
        "customer": customer,
        "attributes": sorted((key, _display(value)) for key, value in (customer.attributes or {}).items()),
        "matrix": [(topic, [(cell, ChannelKind(cell.channel).label) for cell in cells]) for topic, cells in matrix],
        "channel_choices": ChannelKind.choices,
        "category_choices": EventCategory.choices,
        "reach": reachability.overview(customer.pk),
        "consent": [(value, label, consent[value]) for value, label in ChannelKind.choices],
        "ledger": queries.consent_ledger(customer, limit=CONSENT_LEDGER_SIZE),
        "devices": list(customer.devices.all()),
        "anonymous_ids": queries.linked_anonymous_ids(customer),
        "note_form": NoteForm(),
        "filters": filters,
        **_timeline_context(page, {topic.key: topic.name for topic, _ in matrix}),
    }


# --- Timeline entries -------------------------------------------------------------------------

CATEGORY_SINGULAR = {
    EventCategory.EVENT: "Event",
    EventCategory.MESSAGE: "Message",
    EventCategory.SEGMENT: "Segment",
    EventCategory.JOURNEY: "Journey",
    EventCategory.PREFERENCE: "Preference",
    EventCategory.PROFILE: "Profile",
    EventCategory.NOTE: "Note",
}


@dataclass
class TimelineEntry:
    """One event as the timeline shows it: a headline, an optional quote, compact details."""

    event: Event
    title: str
    label: str
    text: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)


def _timeline_context(page: queries.TimelinePage, topic_names: dict[str, str]) -> dict:
    return {"entries": [_entry(event, topic_names) for event in page.events], "next_cursor": page.next_cursor}


def _entry(event: Event, topic_names: dict[str, str]) -> TimelineEntry:
    props = dict(event.properties or {}) if isinstance(event.properties, dict) else {"value": event.properties}
    if props.get("source") == event.source:
        del props["source"]  # already shown as "via …"
    label = CATEGORY_SINGULAR.get(event.category, "Event")
    name = event.name
    if name == "subscription.changed":
        subscribed = props.pop("subscribed", None)
        topic = props.pop("topic", "?")
        topic = topic_names.get(topic, topic)
        channel = _channel_label(props.pop("channel", event.channel))
        title = f"{'Subscribed to' if subscribed else 'Unsubscribed from'} {topic} by {channel}"
        previous = props.pop("previous", None)
        details = [("was", "not chosen" if previous is None else ("subscribed" if previous else "unsubscribed"))]
        reason = props.pop("reason", "")
        return TimelineEntry(event, title, label, text=reason and f"Reason: {reason}", details=details + _details(props))
    if name == "support.note":
        return TimelineEntry(event, "Support note", label, text=str(props.pop("text", "")), details=_details(props))
    if name in ("consent.granted", "consent.revoked"):
        channel = _channel_label(props.pop("channel", event.channel))
        verb = "granted" if name == "consent.granted" else "revoked"
        props.pop("consent_id", None)
        return TimelineEntry(
            event, f"Consent {verb} for {channel}", label, text=str(props.pop("wording", "")), details=_details(props)
        )
    if name == "customer.merged":
        anonymous_id = str(props.pop("anonymous_id", "") or "?")
        short = anonymous_id if len(anonymous_id) <= 8 else anonymous_id[:8] + "…"
        moved = props.pop("events_moved", 0)
        props.pop("anonymous_customer_id", None)
        for key in ("devices_moved", "subscriptions_moved"):
            if not props.get(key):
                props.pop(key, None)
        title = f"Merged anonymous visitor {short}: {moved} {'event' if moved == 1 else 'events'}"
        return TimelineEntry(event, title, label, details=[("anonymous id", anonymous_id)] + _details(props))
    if name == "customer.created":
        return TimelineEntry(event, "Profile created", label, details=_details(props))
    if name == "customer.updated":
        return TimelineEntry(event, "Profile updated", label, details=_details(props))
    if props.get("channel") == event.channel:
        del props["channel"]  # shown as a badge
    # "message.opened" → "Message opened", "order_completed" → "Order completed".
    title = name.replace(".", " ").replace("_", " ").capitalize()
    return TimelineEntry(event, title, label, details=_details(props))


def _details(props: dict) -> list[tuple[str, str]]:
    """Properties as short (key, value) pairs; {field: [old, new]} maps read "old → new"."""
    rows = []
    for key, value in props.items():
        if key in ("changes", "fields") and isinstance(value, dict):
            for name, pair in value.items():
                if isinstance(pair, list) and len(pair) == 2:
                    old, new = pair
                    shown = _display(new) if old in (None, "") and key == "fields" else f"{_display(old)} → {_display(new)}"
                else:
                    shown = _display(pair)
                rows.append((name, shown))
        else:
            rows.append((key.replace("_", " "), _display(value)))
    return rows


def _display(value, limit: int = 120) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _channel_label(value) -> str:
    return ChannelKind(value).label if value in ChannelKind.values else str(value or "—")
