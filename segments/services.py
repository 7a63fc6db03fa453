"""Writes for segments: definitions, keeping memberships true, and static lists.

Creating a segment or changing its rules asks for a full computation (``computation``);
real-time updates, the sweep and static lists write memberships through ``membership``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from customers import timeline
from customers.models import Customer, Topic
from core.audit import audit
from core.errors import FieldError, InputError

from . import computation, membership, storage
from . import rules as rule_language
from .membership import MembershipChange, segment_recompute
from .models import PastMembership, Segment, SegmentMembership, SegmentSize

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
    """Create a segment. A dynamic one is computed in the background (at once when there are
    few customers); until then its status is ``computing``. Raises InputError on bad input."""
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
        if static:
            storage.create(segment.pk)
        else:
            # Its table of members comes with its first computation.
            computation.computation_request(segment_ids=[segment.pk])
    segment.refresh_from_db()
    return segment


def segment_update(
    *, segment: Segment, actor: str, name: str | None = None, rules: dict | None = None, description: str | None = None
) -> Segment:
    """Rename, describe, or change the rules of a segment.

    Rules that mean something new recompute the segment and its dependents in the background
    (superseding a computation still running); rules that normalise to the current ones
    (reordered keys, a re-saved form) recompute nothing.
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
            computation.computation_request(segment_ids=_in_dependency_order({segment.pk}))
    segment.refresh_from_db()
    return segment


def segment_delete(*, segment: Segment, actor: str) -> None:
    users = [s.name for s in Segment.objects.all() if segment.pk in s.dependencies.get("segments", ())]
    if users:
        raise InputError([FieldError("segment", f"other segments use this one: {', '.join(users)}")])
    with transaction.atomic(), connection.cursor() as cursor:
        audit(actor=actor, action="segment.deleted", object_type="segment", object_id=segment.pk, details={"name": segment.name})
        # Its members' histories keep it: the memberships end now, as past ones. Nobody
        # "left" through a change of theirs, so the event stream hears nothing.
        cursor.execute(
            f"""INSERT INTO {PastMembership._meta.db_table}
                    (segment_id, customer_id, entered_at, exited_at, entered_by, exited_by)
                SELECT segment_id, customer_id, entered_at, %s, entered_by, %s
                FROM {SegmentMembership._meta.db_table} WHERE segment_id = %s""",
            [timezone.now(), actor, segment.pk],
        )
        storage.drop(segment.pk)
        segment.delete()


def segment_recompute_now(*, segment: Segment, actor: str) -> MembershipChange | None:
    """A person asked for a full recomputation of a dynamic segment (recorded in the audit
    trail); it runs like any other. The change when it ran at once, None when it was queued
    (or failed: see the segment's status)."""
    with transaction.atomic():
        audit(actor=actor, action="segment.recomputed", object_type="segment", object_id=segment.pk)
        done = computation.computation_request(segment_ids=_in_dependency_order({segment.pk}))
    return (done or {}).get(segment.pk)


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


_NOT_MEMBERS = """SELECT id FROM unnest(%(ids)s::bigint[]) AS id WHERE id NOT IN (
    SELECT customer_id FROM segments_segmentmembership WHERE segment_id = %(segment_id)s)"""


def static_members_change(
    *, segment: Segment, add: bool, actor: str, ids=(), external_ids=(), emails=()
) -> StaticChange:
    """Add customers to (or remove them from) a static segment, by id, external id or email."""
    if segment.is_dynamic:
        raise InputError([FieldError("segment", "members of a dynamic segment follow its rules; edit the rules instead")])
    customer_ids, missing = _resolve_customers(ids=ids, external_ids=external_ids, emails=emails)
    now = timezone.now()
    if add:
        change = f"""{membership.ENTER.format(rows=_NOT_MEMBERS)},
            exited AS (SELECT NULL::bigint AS customer_id WHERE false)"""
    else:
        change = f"""{membership.EXIT.format(condition="m.customer_id = ANY(%(ids)s::bigint[])")},
            entered AS (SELECT NULL::bigint AS customer_id WHERE false)"""
    with transaction.atomic(), connection.cursor() as cursor:
        Segment.objects.select_for_update().filter(pk=segment.pk).first()
        cursor.execute(
            f"WITH {change} SELECT {membership.CHANGED}",
            {"segment_id": segment.pk, "now": now, "ids": sorted(customer_ids), "actor": actor},
        )
        entered, exited = membership.changed(segment.pk, *cursor.fetchone())
        changed = entered + exited
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
