"""Reads: customers, their preferences and their timeline, with access checks for views."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404

from . import timeline
from .models import ChannelKind, Consent, ConsentState, Customer, Event, EventCategory, Subscription, Topic
from .roles import can_view_customers


# How many anonymous ids merged into a customer the page lists.
LINKED_ANONYMOUS_IDS = 20


class InvalidCursor(ValueError):
    pass


def customer_get_for_user(*, user, customer_id: int) -> Customer:
    """The customer, if ``user`` may see customers; 403 or 404 otherwise."""
    if not can_view_customers(user):
        raise PermissionDenied("Your account has no role that allows viewing customers.")
    customer = Customer.objects.filter(pk=customer_id).first()
    if customer is None:
        raise Http404("No such customer.")
    return customer


def customer_with_profile(customer_id: int) -> Customer | None:
    """A customer with subscriptions (and topics), consent state and devices prefetched."""
    return (
        Customer.objects.filter(pk=customer_id)
        .prefetch_related(
            Prefetch("subscriptions", queryset=Subscription.objects.select_related("topic")),
            Prefetch("consent_states", queryset=ConsentState.objects.select_related("consent")),
            "devices",
        )
        .first()
    )


def customers_search(*, term: str = "", stage: str = "", reachable: str = ""):
    """Customers matching a search term (email, phone, name, external id) and filters.

    Anonymous visitors merged into a known customer are left out: their history is on that
    customer's page now."""
    queryset = Customer.objects.search(term).filter(merged_into__isnull=True)
    if stage:
        queryset = queryset.filter(lifecycle_stage=stage)
    if reachable:
        queryset = queryset.reachable_on(reachable)
    return queryset.order_by("-id")


def lifecycle_stages() -> list[str]:
    return list(
        Customer.objects.exclude(lifecycle_stage="")
        .order_by("lifecycle_stage")
        .values_list("lifecycle_stage", flat=True)
        .distinct()
    )


@dataclass
class PreferenceCell:
    topic: Topic
    channel: str
    subscribed: bool | None  # None: never chosen
    source: str
    updated_at: datetime | None


def preference_matrix(customer: Customer) -> list[tuple[Topic, list[PreferenceCell]]]:
    """Rows of topics, columns of channels; reads prefetched subscriptions when present."""
    chosen = {(s.topic_id, s.channel): s for s in customer.subscriptions.all()}
    rows = []
    for topic in Topic.objects.all():
        cells = []
        for channel in ChannelKind.values:
            sub = chosen.get((topic.pk, channel))
            cells.append(
                PreferenceCell(
                    topic=topic,
                    channel=channel,
                    subscribed=None if sub is None else sub.subscribed,
                    source="" if sub is None else sub.source,
                    updated_at=None if sub is None else sub.updated_at,
                )
            )
        rows.append((topic, cells))
    return rows


def consent_overview(customer: Customer) -> dict[str, ConsentState | None]:
    """Current consent per channel (None when nothing was ever recorded)."""
    states = {state.channel: state for state in customer.consent_states.all()}
    return {channel: states.get(channel) for channel in ChannelKind.values}


# --- Timeline ----------------------------------------------------------------------------------


def encode_cursor(event: Event) -> str:
    raw = f"{event.occurred_at.isoformat()}|{event.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        occurred, _, pk = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        return datetime.fromisoformat(occurred), int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this API returned; pass next_cursor from the previous page") from exc


@dataclass
class TimelinePage:
    events: list[Event]
    next_cursor: str | None


def timeline_page(
    customer_id: int, *, limit: int = 50, cursor: str | None = None, category: str = "", channel: str = ""
) -> TimelinePage:
    """Newest-first events of one customer, keyset-paginated on (occurred_at, id): the rows of
    the timeline table and of the histories other apps keep (entering and leaving segments)."""
    where = ["e.customer_id = %(customer)s"]
    params: dict = {"customer": customer_id, "limit": limit + 1}
    if category:
        where.append("e.category = %(category)s")
        params["category"] = EventCategory(category).value
    if channel:
        where.append("e.channel = %(channel)s")
        params["channel"] = ChannelKind(channel).value
    if cursor:
        params["at"], params["pk"] = decode_cursor(cursor)
        where.append("(e.occurred_at < %(at)s OR (e.occurred_at = %(at)s AND e.id < %(pk)s))")
    columns = ", ".join(f"e.{f.column}" for f in Event._meta.concrete_fields)
    # Each relation gives its own newest rows (the timeline table through its index), then the
    # page is the newest of those.
    branches = " UNION ALL ".join(
        f"(SELECT {columns} FROM {relation} e WHERE {' AND '.join(where)} "
        f"ORDER BY e.occurred_at DESC, e.id DESC LIMIT %(limit)s)"
        for relation in timeline.relations()
    )
    events = list(Event.objects.raw(
        f"SELECT * FROM ({branches}) e ORDER BY e.occurred_at DESC, e.id DESC LIMIT %(limit)s", params
    ))
    next_cursor = encode_cursor(events[limit - 1]) if len(events) > limit else None
    return TimelinePage(events=events[:limit], next_cursor=next_cursor)


# --- Support UI --------------------------------------------------------------------------------


def customer_profile_for_user(*, user, customer_id: int) -> Customer:
    """The customer with profile relations prefetched (see ``customer_with_profile``), if
    ``user`` may see customers; 403 or 404 otherwise."""
    if not can_view_customers(user):
        raise PermissionDenied("Your account has no role that allows viewing customers.")
    customer = customer_with_profile(customer_id)
    if customer is None:
        raise Http404("No such customer.")
    return customer


def consent_ledger(customer: Customer, *, limit: int = 10) -> list[Consent]:
    """The latest ``limit`` ledger entries of one customer, newest first."""
    return list(Consent.objects.filter(customer=customer).order_by("-occurred_at", "-id")[:limit])


def topic_names() -> dict[str, str]:
    """Topic key → display name."""
    return dict(Topic.objects.values_list("key", "name"))



def linked_anonymous_ids(customer: Customer) -> list[Customer]:
    """The anonymous visitors merged into ``customer`` (see ``customers.services.sources``),
    most recently merged first."""
    return list(
        Customer.objects.filter(merged_into=customer).only("id", "anonymous_id", "merged_at", "merged_into_id")
        .order_by("-merged_at", "-id")[:LINKED_ANONYMOUS_IDS]
    )
