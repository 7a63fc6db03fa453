"""Reads for segments: previews, members, a customer's segments, and "why"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery, prefetch_related_objects
from django.http import Http404
from django.utils import timezone

from customers.models import Customer, Event, EventCategory, Topic
from customers.queries import timeline_page
from core.errors import FieldError
from customers.roles import can_use_marketing, can_view_customers

from . import history
from . import rules as rule_language
from .models import Segment, SegmentMembership, SegmentSize

SAMPLE_SIZE = 20


def segment_get_for_user(*, user, segment_id: int) -> Segment:
    """The segment, if ``user`` may work with segments (marketers and admins)."""
    if not can_use_marketing(user):
        raise PermissionDenied("Your account has no role that allows working with segments.")
    segment = Segment.objects.filter(pk=segment_id).first()
    if segment is None:
        raise Http404("No such segment.")
    return segment


def not_ready_problems(segment_ids, *, field: str) -> list[FieldError]:
    """A problem for each of ``segment_ids`` whose members are not ready to be used: being
    computed (saying when it should be done) or left by a failed computation."""
    problems = []
    for segment in Segment.objects.filter(pk__in=list(segment_ids)).exclude(status=Segment.Status.READY).order_by("name"):
        if segment.status == Segment.Status.FAILED:
            problems.append(FieldError(field, f"segment “{segment.name}”: its last computation failed "
                                              f"({segment.compute_error}); recompute it first"))
            continue
        progress = segment.progress()
        if progress and progress.seconds_left:
            when = f"ready in about {max(1, round(progress.seconds_left)):,} s"
        elif progress and progress.percent is not None:
            when = "ready in a moment"
        else:
            when = "ready once a worker has computed it"
        problems.append(FieldError(field, f"segment “{segment.name}” is still being computed ({when}); "
                                          "start once it is ready"))
    return problems


def segments_with_trend():
    """All segments, each with ``size_day_ago`` (the last sample at least a day old) for a trend."""
    day_ago = timezone.now() - timedelta(days=1)
    older = SegmentSize.objects.filter(segment=OuterRef("pk"), at__lte=day_ago).order_by("-at").values("size")[:1]
    return Segment.objects.annotate(size_day_ago=Subquery(older)).order_by("name")


def compile_for_preview(rules) -> dict:
    """Validate ``rules`` against the current topics and segments; raises RuleError."""
    topics = dict(Topic.objects.values_list("key", "id"))
    segment_ids = set(Segment.objects.values_list("pk", flat=True))
    return rule_language.validate(rules, topics=topics, segment_ids=segment_ids)


@dataclass
class Preview:
    count: int
    sample: list[Customer]


def segment_preview(rules, *, now: datetime | None = None) -> Preview:
    """How many customers ``rules`` select now, and a sample of them; nothing is saved."""
    compiled = compile_for_preview(rules)
    query, params = rule_language.compile_query(compiled, now=now or timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(f"SELECT count(*) FROM ({query}) audience", params)
        count = cursor.fetchone()[0]
        cursor.execute(f"{query} ORDER BY c.id DESC LIMIT {SAMPLE_SIZE}", params)
        ids = [row[0] for row in cursor.fetchall()]
    sample = sorted(Customer.objects.filter(pk__in=ids), key=lambda c: -c.pk)
    return Preview(count=count, sample=sample)


@dataclass
class MembersPage:
    members: list[SegmentMembership]
    next_cursor: int | None


def segment_members_page(segment: Segment, *, limit: int = 50, cursor: int | None = None, search: str = "") -> MembersPage:
    """Members by customer id, descending; ``cursor`` is the last customer id seen."""
    queryset = SegmentMembership.objects.filter(segment=segment).select_related("customer")
    if search:
        queryset = queryset.filter(customer__in=Customer.objects.search(search))
    if cursor:
        queryset = queryset.filter(customer_id__lt=cursor)
    members = list(queryset.order_by("-customer_id")[: limit + 1])
    next_cursor = members[limit - 1].customer_id if len(members) > limit else None
    return MembersPage(members=members[:limit], next_cursor=next_cursor)


def segment_recent_changes(segment: Segment, *, limit: int = 20) -> list[Event]:
    """The latest customers who entered or left the segment, as timeline events."""
    relation = history.events_sql("h.segment_id = %(segment)s", limit="%(limit)s")
    events = list(Event.objects.raw(
        f"SELECT * FROM {relation} e ORDER BY e.occurred_at DESC, e.id DESC LIMIT %(limit)s",
        {"segment": segment.pk, "limit": limit},
    ))
    prefetch_related_objects(events, "customer")
    return events


def segment_sizes(segment: Segment, *, days: int = 30) -> list[SegmentSize]:
    since = timezone.now() - timedelta(days=days)
    return list(SegmentSize.objects.filter(segment=segment, at__gte=since).order_by("at"))


def customer_segments(customer_id: int) -> list[SegmentMembership]:
    return list(
        SegmentMembership.objects.filter(customer_id=customer_id).select_related("segment").order_by("segment__name")
    )


def customer_segment_history(customer_id: int, *, limit: int = 20) -> list[Event]:
    """The customer's latest entries into and exits from segments: their timeline's segment part."""
    return timeline_page(customer_id, limit=limit, category=EventCategory.SEGMENT).events


def segment_explain(segment: Segment, customer: Customer, *, now: datetime | None = None) -> dict | None:
    """Every rule of the segment evaluated for one customer: passed or not, and the deciding value.

    None for static segments (membership is a list, not a rule).
    """
    if not segment.is_dynamic or segment.compiled is None:
        return None
    query, params, leaves = rule_language.explain_query(segment.compiled, customer_id=customer.pk, now=now or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    results = [(row[2 * i], row[2 * i + 1]) for i in range(len(leaves))]
    return rule_language.explain_tree(segment.compiled, results)


def event_names_seen(*, limit: int = 200) -> list[str]:
    """Event names for the builder's picker: the names seen in the last 90 days."""
    since = timezone.now() - timedelta(days=90)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT name FROM customers_event WHERE occurred_at >= %s ORDER BY name LIMIT %s", [since, limit]
        )
        return [row[0] for row in cursor.fetchall()]


def attribute_keys_seen(*, sample: int = 2000) -> list[str]:
    """Custom attribute keys for the builder's picker, from a sample of recent customers."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT jsonb_object_keys(attributes) FROM "
            "(SELECT attributes FROM customers_customer ORDER BY id DESC LIMIT %s) recent ORDER BY 1",
            [sample],
        )
        return [row[0] for row in cursor.fetchall()]


def can_see_segments(user) -> bool:
    return can_use_marketing(user)


def can_see_customer_segments(user) -> bool:
    return can_view_customers(user)
