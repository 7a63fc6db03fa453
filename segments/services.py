"""Writes for segments: definitions, materialised membership, and keeping it true.

Membership changes are set-based: one statement computes the audience, inserts who
entered, deletes who left and writes their ``segment.entered`` / ``segment.exited``
timeline events. A recomputation holds the segment's row lock, so a real-time update and
the scheduled sweep never interleave on the same segment.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from customers import timeline
from customers.models import Customer, Topic
from core.audit import audit
from core.errors import FieldError, InputError

from . import rules as rule_language
from .models import Segment, SegmentMembership, SegmentSize

logger = logging.getLogger(__name__)


# --- Definitions ------------------------------------------------------------------------------


def _prepare(rules, *, self_id: int | None) -> tuple[dict, rule_language.Dependencies]:
    """Validate ``rules``, reject cycles through other segments; return (normalised, dependencies)."""
    topics = dict(Topic.objects.values_list("key", "id"))
    graph = {
        pk: set(deps.get("segments", ()))
        for pk, deps in Segment.objects.exclude(pk=self_id).values_list("pk", "dependencies")
    }
    compiled = rule_language.validate(rules, topics=topics, segment_ids=set(graph), self_id=self_id)
    deps = rule_language.dependencies(compiled)
    if self_id is not None:
        for start in deps.segments:
            path = _path_to(graph, start, self_id)
            if path:
                names = dict(Segment.objects.filter(pk__in=path).values_list("pk", "name"))
                chain = " → ".join(names.get(pk, "this segment") for pk in path)
                raise rule_language.RuleError(
                    [{"path": "rules", "message": f"segments would include each other in a cycle: this segment → {chain}"}]
                )
    return compiled, deps


def _path_to(graph: dict[int, set[int]], start: int, goal: int) -> list[int] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((child, [*path, child]) for child in graph.get(node, ()))
    return None


def rule_input_error(exc: rule_language.RuleError) -> InputError:
    return InputError([FieldError(e["path"], e["message"]) for e in exc.errors], "The rules are not valid; nothing was saved.")


def _check_name(name: str, *, exclude: int | None = None) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError([FieldError("name", "give the segment a name")])
    if len(name) > 120:
        raise InputError([FieldError("name", "a name has at most 120 characters")])
    if Segment.objects.filter(name__iexact=name).exclude(pk=exclude).exists():
        raise InputError([FieldError("name", f"a segment named '{name}' already exists")])
    return name


def segment_create(
    *, name: str, rules: dict | None = None, static: bool = False, description: str = "", actor: str, user=None
) -> Segment:
    """Create a segment; a dynamic one is populated at once. Raises InputError on bad input."""
    name = _check_name(name)
    if static:
        if rules is not None:
            raise InputError([FieldError("rules", "a static segment has no rules; send either rules or static: true")])
        compiled, deps = None, rule_language.Dependencies()
    else:
        if rules is None:
            raise InputError([FieldError("rules", "send the rules of the segment, or static: true for a list")])
        try:
            compiled, deps = _prepare(rules, self_id=None)
        except rule_language.RuleError as exc:
            raise rule_input_error(exc) from None
    with transaction.atomic():
        segment = Segment.objects.create(
            name=name, description=description, kind=Segment.Kind.STATIC if static else Segment.Kind.DYNAMIC,
            rules=rules, compiled=compiled, dependencies=deps.as_dict(), created_by=user,
        )
        audit(actor=actor, action="segment.created", object_type="segment", object_id=segment.pk, details={"name": name})
        if not static:
            segment_recompute(segment_id=segment.pk)
    segment.refresh_from_db()
    return segment


def segment_update(
    *, segment: Segment, actor: str, name: str | None = None, rules: dict | None = None, description: str | None = None
) -> Segment:
    """Rename, describe, or change the rules of a segment.

    Rules that mean something new recompute the segment and its dependents; rules that
    normalise to the current ones (reordered keys, a re-saved form) recompute nothing.
    """
    fields = {}
    recompute = False
    if name is not None:
        fields["name"] = _check_name(name, exclude=segment.pk)
    if description is not None:
        fields["description"] = description
    if rules is not None:
        if not segment.is_dynamic:
            raise InputError([FieldError("rules", "a static segment has no rules")])
        try:
            compiled, deps = _prepare(rules, self_id=segment.pk)
        except rule_language.RuleError as exc:
            raise rule_input_error(exc) from None
        fields["rules"] = rules
        if compiled != segment.compiled:
            fields.update(compiled=compiled, dependencies=deps.as_dict())
            recompute = True
    with transaction.atomic():
        Segment.objects.filter(pk=segment.pk).update(**fields, updated_at=timezone.now())
        audit(actor=actor, action="segment.updated", object_type="segment", object_id=segment.pk,
              details={key: value for key, value in fields.items() if key in ("name", "rules", "description")})
        if recompute:
            for pk in _in_dependency_order({segment.pk}):
                segment_recompute(segment_id=pk)
    segment.refresh_from_db()
    return segment


def segment_delete(*, segment: Segment, actor: str) -> None:
    users = [s.name for s in Segment.objects.all() if segment.pk in s.dependencies.get("segments", ())]
    if users:
        raise InputError([FieldError("segment", f"other segments use this one: {', '.join(users)}")])
    with transaction.atomic():
        audit(actor=actor, action="segment.deleted", object_type="segment", object_id=segment.pk, details={"name": segment.name})
        segment.delete()


# --- Membership ---------------------------------------------------------------------------


@dataclass
class MembershipChange:
    entered: int
    exited: int
    size: int


_APPLY = """
WITH target AS MATERIALIZED ({query}),
current AS (
    SELECT customer_id FROM segments_segmentmembership
    WHERE segment_id = %(segment_id)s {current_filter}
),
entered AS (
    INSERT INTO segments_segmentmembership (segment_id, customer_id, entered_at)
    SELECT %(segment_id)s, t.id, %(now)s FROM target t
    WHERE t.id NOT IN (SELECT customer_id FROM current)
    ON CONFLICT (segment_id, customer_id) DO NOTHING
    RETURNING customer_id
),
exited AS (
    DELETE FROM segments_segmentmembership m
    WHERE m.segment_id = %(segment_id)s {exit_filter}
      AND m.customer_id NOT IN (SELECT id FROM target)
    RETURNING customer_id
),
{timeline}
SELECT (SELECT count(*) FROM entered), (SELECT count(*) FROM exited), (SELECT count(*) FROM target), {summary}
"""

# The timeline rows of a membership change: one per customer who entered or exited.
_MEMBERSHIP_EVENTS = """
    SELECT customer_id, 'segment.entered' AS name, '' AS channel, %(properties)s::jsonb AS properties,
           %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, 'platform' AS source,
           NULL AS idempotency_key, %(actor)s AS actor
    FROM entered
    UNION ALL
    SELECT customer_id, 'segment.exited', '', %(properties)s::jsonb, %(now)s, %(now)s, 'platform', NULL, %(actor)s
    FROM exited
"""


def segment_recompute(
    *, segment_id: int, customer_ids: list[int] | None = None, now: datetime | None = None
) -> MembershipChange | None:
    """Bring a dynamic segment's membership up to date, for everyone or for ``customer_ids``.

    Returns None for static or deleted segments. Takes the segment's row lock.
    """
    import json

    now = now or timezone.now()
    started = time.monotonic()
    with transaction.atomic():
        segment = Segment.objects.select_for_update().filter(pk=segment_id).first()
        if segment is None or not segment.is_dynamic or segment.compiled is None:
            return None
        ids = sorted(customer_ids) if customer_ids is not None else None
        query, named = rule_language.compile_query(segment.compiled, now=now, customer_ids=ids)
        scope = "" if ids is None else "AND customer_id = ANY(%(ids)s::bigint[])"
        statement = _APPLY.format(
            query=query, current_filter=scope, exit_filter=scope.replace("customer_id", "m.customer_id"),
            timeline=timeline.insert_cte(_MEMBERSHIP_EVENTS), summary=timeline.summary_sql(),
        )
        with connection.cursor() as cursor:
            # Audience queries hash whole tables of ids; the 4 MB default makes PostgreSQL
            # fall back to far slower plans for large audiences.
            cursor.execute("SET LOCAL work_mem = '64MB'")
            cursor.execute(
                statement,
                {
                    **named,
                    "segment_id": segment.pk,
                    "now": now,
                    "ids": ids,
                    "properties": json.dumps({"segment_id": segment.pk, "segment": segment.name}),
                    "actor": "",
                },
            )
            entered, exited, matched, summary = cursor.fetchone()
            timeline.written(summary)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        update = {}
        if ids is None:
            update.update(member_count=matched, computed_at=now, last_full_ms=elapsed_ms, swept_at=now)
        elif entered or exited:
            segment.member_count = segment.member_count + entered - exited
            update.update(member_count=segment.member_count, last_lag_ms=elapsed_ms)
        if entered or exited:
            update["changed_at"] = now
        if update:
            Segment.objects.filter(pk=segment.pk).update(**update)
        size = update.get("member_count", segment.member_count)
        if ids is None:
            # A full computation is a point on the size chart, so a new segment has a trend at once.
            SegmentSize.objects.create(segment_id=segment.pk, at=now, size=size)
    return MembershipChange(entered=entered, exited=exited, size=size)


def segment_recompute_now(*, segment: Segment, actor: str) -> MembershipChange | None:
    """A person asked for a full recomputation (it is recorded in the audit trail)."""
    change = segment_recompute(segment_id=segment.pk)
    if change is not None:
        audit(actor=actor, action="segment.recomputed", object_type="segment", object_id=segment.pk,
              details={"entered": change.entered, "exited": change.exited, "size": change.size})
    return change


def _dynamic_dependencies() -> dict[int, dict]:
    return dict(Segment.objects.filter(kind=Segment.Kind.DYNAMIC).values_list("pk", "dependencies"))


def _in_dependency_order(start: set[int], rows: dict[int, dict] | None = None) -> list[int]:
    """``start`` and every dynamic segment that depends on them, dependencies first.

    ``rows`` (segment id → dependencies of every dynamic segment) saves a query when the
    caller has them already."""
    rows = _dynamic_dependencies() if rows is None else rows
    uses = {pk: set(deps.get("segments", ())) for pk, deps in rows.items()}
    wanted = set(start)  # a static segment can be a seed: dynamic ones may depend on it
    grew = True
    while grew:
        grew = False
        for pk, refs in uses.items():
            if pk not in wanted and refs & wanted:
                wanted.add(pk)
                grew = True
    ordered: list[int] = []
    visiting: set[int] = set()

    def visit(pk):
        if pk in ordered or pk in visiting:
            return
        visiting.add(pk)
        for ref in uses.get(pk, ()):
            if ref in wanted:
                visit(ref)
        ordered.append(pk)

    for pk in sorted(wanted):
        visit(pk)
    return [pk for pk in ordered if pk in rows]


def segments_affected(*, event_names: set[str] = frozenset(), fields: set[str] = frozenset(), created: bool = False) -> list[int]:
    """Dynamic segments whose rules read any of the given events or customer fields.

    ``fields`` holds profile field names, ``attributes.<key>``, and the markers
    ``subscriptions``, ``consent``, ``devices`` and ``channel_status``. New customers
    (``created``) can match any segment.
    """
    affected = set()
    reach_fields = {"consent", "devices", "channel_status", "email", "phone"}
    rows = _dynamic_dependencies()
    for pk, data in rows.items():
        deps = rule_language.Dependencies.from_dict(data)
        if (
            created
            or deps.event_names & set(event_names)
            or deps.fields & set(fields)
            or (deps.subscriptions and "subscriptions" in fields)
            or (deps.reachability and reach_fields & set(fields))
        ):
            affected.add(pk)
    return _in_dependency_order(affected, rows) if affected else []


def segments_refresh_for(*, customer_ids: set[int], segment_ids: list[int]) -> None:
    """Incrementally re-evaluate ``segment_ids`` (in dependency order) for ``customer_ids``."""
    ids = sorted(customer_ids)
    # One signal for the whole pass: segments that read ``segment.entered`` follow once.
    with timeline.batched():
        for pk in segment_ids:
            segment_recompute(segment_id=pk, customer_ids=ids)


FULL_RECOMPUTE_EVERY = timedelta(hours=24)


def segments_sweep(*, now: datetime | None = None) -> dict[int, MembershipChange | None]:
    """Keep relative time windows true ("no open in 21 days"), then record size samples.

    Such rules change with the clock, not with any event. For each segment with a window,
    only customers with an event or date crossing a window edge since the last sweep are
    re-evaluated, so a sweep costs what changed, not the audience size; segments that use
    those segments follow for the same customers. Each segment is also fully recomputed
    once a day, which repairs anything changed behind the platform's back.
    """
    now = now or timezone.now()
    segments = {s.pk: s for s in Segment.objects.filter(kind=Segment.Kind.DYNAMIC)}
    timed = {pk for pk, s in segments.items() if s.dependencies.get("time_based")}
    stale = {pk for pk, s in segments.items() if s.computed_at is None or s.computed_at < now - FULL_RECOMPUTE_EVERY}
    candidates: dict[int, set[int] | None] = {}  # None: everyone
    changes: dict[int, MembershipChange | None] = {}
    # One signal for the whole sweep: segments that read ``segment.entered`` follow once.
    with timeline.batched():
        for pk in _in_dependency_order(timed | stale):
            segment = segments[pk]
            if pk in stale or (pk in timed and segment.swept_at is None):
                ids = None
            else:
                ids = set()
                if pk in timed:
                    ids |= _window_crossings(segment, since=segment.swept_at, now=now)
                for ref in segment.dependencies.get("segments", ()):
                    if ref in candidates:
                        if candidates[ref] is None:
                            ids = None
                            break
                        ids |= candidates[ref]
            candidates[pk] = ids
            if ids is None or ids:
                changes[pk] = segment_recompute(segment_id=pk, customer_ids=None if ids is None else sorted(ids), now=now)
            if pk in timed:
                Segment.objects.filter(pk=pk).update(swept_at=now)
    segment_sizes_sample(now=now)
    return changes


def _window_crossings(segment: Segment, *, since: datetime, now: datetime) -> set[int]:
    found = rule_language.window_crossings_query(segment.compiled, since=since, now=now)
    if found is None:
        return set()
    query, params = found
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return {row[0] for row in cursor.fetchall()}


def segment_sizes_sample(*, now: datetime | None = None) -> None:
    """Record each segment's size when it changed or every 15 minutes, for the trend charts."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO segments_segmentsize (segment_id, at, size)
            SELECT s.id, %(now)s, s.member_count FROM segments_segment s
            LEFT JOIN LATERAL (
                SELECT z.size, z.at FROM segments_segmentsize z WHERE z.segment_id = s.id ORDER BY z.at DESC LIMIT 1
            ) last ON TRUE
            WHERE last.at IS NULL OR last.size <> s.member_count OR last.at < %(now)s - interval '15 minutes'
            """,
            {"now": now},
        )


# --- Static segments ------------------------------------------------------------------------


@dataclass
class StaticChange:
    changed: int
    not_found: list[str]


def _resolve_customers(*, ids=(), external_ids=(), emails=()) -> tuple[set[int], list[str]]:
    found: set[int] = set()
    missing: list[str] = []
    if ids:
        known = set(Customer.objects.filter(pk__in=ids).values_list("pk", flat=True))
        found |= known
        missing += [str(i) for i in ids if i not in known]
    if external_ids:
        known = dict(Customer.objects.filter(external_id__in=external_ids).values_list("external_id", "pk"))
        found |= set(known.values())
        missing += [e for e in external_ids if e not in known]
    if emails:
        lowered = [e.strip().lower() for e in emails]
        known = dict(Customer.objects.filter(email__in=lowered).values_list("email", "pk"))
        found |= set(known.values())
        missing += [e for e in lowered if e not in known]
    return found, missing


def static_members_change(
    *, segment: Segment, add: bool, actor: str, ids=(), external_ids=(), emails=()
) -> StaticChange:
    """Add customers to (or remove them from) a static segment, by id, external id or email."""
    import json

    if segment.is_dynamic:
        raise InputError([FieldError("segment", "members of a dynamic segment follow its rules; edit the rules instead")])
    customer_ids, missing = _resolve_customers(ids=ids, external_ids=external_ids, emails=emails)
    now = timezone.now()
    properties = json.dumps({"segment_id": segment.pk, "segment": segment.name, "by": actor})
    with transaction.atomic(), connection.cursor() as cursor:
        Segment.objects.select_for_update().filter(pk=segment.pk).first()
        if add:
            change = """
                entered AS (
                    INSERT INTO segments_segmentmembership (segment_id, customer_id, entered_at)
                    SELECT %(segment)s, id, %(now)s FROM unnest(%(ids)s::bigint[]) AS id
                    ON CONFLICT (segment_id, customer_id) DO NOTHING RETURNING customer_id
                ),
                exited AS (SELECT NULL::bigint AS customer_id WHERE false)"""
        else:
            change = """
                exited AS (
                    DELETE FROM segments_segmentmembership
                    WHERE segment_id = %(segment)s AND customer_id = ANY(%(ids)s::bigint[]) RETURNING customer_id
                ),
                entered AS (SELECT NULL::bigint AS customer_id WHERE false)"""
        cursor.execute(
            f"""
            WITH {change},
            {timeline.insert_cte(_MEMBERSHIP_EVENTS)}
            SELECT (SELECT count(*) FROM entered) + (SELECT count(*) FROM exited), {timeline.summary_sql()}
            """,
            {"segment": segment.pk, "now": now, "ids": sorted(customer_ids), "properties": properties, "actor": actor},
        )
        changed, summary = cursor.fetchone()
        timeline.written(summary)
        if changed:
            delta = changed if add else -changed
            size = SegmentMembership.objects.filter(segment=segment).count()
            Segment.objects.filter(pk=segment.pk).update(member_count=size, changed_at=now)
            SegmentSize.objects.create(segment_id=segment.pk, at=now, size=size)
            audit(actor=actor, action="segment.members_added" if add else "segment.members_removed",
                  object_type="segment", object_id=segment.pk, details={"count": delta})
            dependents = [pk for pk in _in_dependency_order({segment.pk}) if pk != segment.pk]
            if dependents:
                transaction.on_commit(
                    lambda: segments_refresh_for(customer_ids=customer_ids, segment_ids=dependents), robust=True
                )
    return StaticChange(changed=changed, not_found=missing)
