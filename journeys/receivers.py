"""Journeys listen to the one event stream: a committed change can end runs (a goal, an exit
rule), resume customers waiting for an event, and start new runs (event and segment
triggers). It runs right after the change commits, in the process that made it, so an
event reaches its journey step in well under a second; if it fails, the work is handed to
a background task with the same change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.dispatch import receiver

from customers.signals import customers_changed
from customers.timeline import Change
from segments.models import Segment

from . import executor
from . import graph as graphs
from .models import Action, EnrollmentStatus, Journey, JourneyVersion

logger = logging.getLogger(__name__)

# Customers entered per transaction when a change lets many in at once (a segment of 400,000).
ENTRY_CHUNK = 5_000
SEGMENT_EVENTS = {"segment_entered": "segment.entered", "segment_exited": "segment.exited"}


@dataclass(frozen=True)
class _Running:
    """What the live and paused journeys and the action catalog listen for."""

    journeys: dict[int, tuple[str, int | None]]  # id → (status, live version id)
    versions: dict[int, tuple[int, dict]]  # version id → (journey id, graph)
    action_events: frozenset[str]  # the events that answer a next-best-action offer


_cache: dict = {"key": None, "running": None}


def running() -> _Running:
    """The journeys that react to events, their versions' graphs and the catalog's outcome
    events, cached until a journey changes status, a version is published or the catalog
    changes: one small query per change."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT (SELECT coalesce(jsonb_agg(jsonb_build_array(id, status, live_version_id) ORDER BY id), '[]')
                       FROM journeys_journey WHERE status IN ('live', 'paused')),
                      (SELECT coalesce(max(id), 0) FROM journeys_journeyversion WHERE NOT is_test),
                      (SELECT count(*) || ':' || coalesce(max(updated_at)::text, '') FROM journeys_action)"""
        )
        listed, newest, catalog = cursor.fetchone()
    journeys = {pk: (status, version) for pk, status, version in executor.loads(listed)}
    key = (tuple(sorted(journeys.items())), newest, catalog)
    if _cache["key"] != key:
        versions = {
            pk: (journey_id, graph)
            for pk, journey_id, graph in JourneyVersion.objects.filter(journey_id__in=journeys, is_test=False)
            .values_list("pk", "journey_id", "graph")
        }
        events = {name for pair in Action.objects.filter(active=True).values_list("accept_event", "reject_event")
                  for name in pair if name}
        _cache.update(key=key, running=_Running(journeys=journeys, versions=versions, action_events=frozenset(events)))
    return _cache["running"]


@receiver(customers_changed, dispatch_uid="journeys.on_customers_changed")
def on_customers_changed(sender, change: Change, **kwargs):
    # The journeys' own timeline rows are not news to them.
    names = {name for name in change.names if not name.startswith("journey.")}
    if not names:
        return
    try:
        react(change, names)
    except Exception:
        logger.exception("journeys could not react to a change; queued for the background workers")
        from django_q.tasks import async_task

        async_task("journeys.tasks.react", {
            "by_name": {name: sorted(ids) for name, ids in change.by_name.items()},
            "event_ids": {name: list(span) for name, span in change.event_ids.items()},
            "memberships": [[name, segment, sorted(ids)] for (name, segment), ids in change.memberships.items()],
        })


def react(change: Change, names: set[str]) -> None:
    now = executor.current_time()
    state = running()
    if names & state.action_events:
        _nba_outcomes(change, names, now)
    # Waits first: the order that ends "wait for the order" takes its branch, and the goal
    # it also is still counts (runs that ended at this moment convert too).
    _resume_waits(change, names, now)
    if state.versions:
        _goals_and_exits(state, change, names, now)
    _start(state, change, names, now)


def _nba_outcomes(change: Change, names: set[str], now) -> None:
    from . import nba

    nba.outcomes_record(customer_ids=set(change.customer_ids), by_name=change.by_name, now=now)


# --- Goals and exit rules ----------------------------------------------------------------------------


def _in_flight(journey_id: int, version_ids: list[int], customer_ids: set[int], now=None) -> list[int]:
    """Runs of these customers in flight, and (with ``now``) those that completed at ``now``."""
    if not customer_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT id FROM journeys_enrollment
               WHERE journey_id = %s AND version_id = ANY(%s) AND customer_id = ANY(%s) AND NOT test
                 AND (ended_at IS NULL OR (%s::timestamptz IS NOT NULL AND ended_at = %s AND status = 'completed'))""",
            [journey_id, version_ids, sorted(customer_ids), now, now],
        )
        return [pk for (pk,) in cursor.fetchall()]


def _unsubscribed(topic_key: str, customer_ids: set[int]) -> set[int]:
    """Customers subscribed to the topic on no channel any more."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT c FROM unnest(%s::bigint[]) AS c WHERE NOT EXISTS (
                   SELECT 1 FROM customers_subscription s JOIN customers_topic t ON t.id = s.topic_id
                   WHERE s.customer_id = c AND t.key = %s AND s.subscribed)""",
            [sorted(customer_ids), topic_key],
        )
        return {pk for (pk,) in cursor.fetchall()}


def _goals_and_exits(state: _Running, change: Change, names: set[str], now) -> None:
    by_journey: dict[int, list[tuple[int, dict]]] = {}
    for version_id, (journey_id, graph) in state.versions.items():
        by_journey.setdefault(journey_id, []).append((version_id, graph.get("settings") or {}))
    for journey_id, versions in by_journey.items():
        for version_id, settings_ in versions:
            reached: set[int] = set()
            goal = settings_.get("goal") or {}
            if goal.get("event") in names:
                reached = change.customers_with([goal["event"]])
            elif goal.get("segment"):
                reached = set(change.memberships.get(("segment.entered", goal["segment"]), ()))
            leaving: set[int] = set()
            for rule in settings_.get("exits") or []:
                if rule.get("event") in names:
                    leaving |= change.customers_with([rule["event"]])
                elif rule.get("segment_left"):
                    leaving |= change.memberships.get(("segment.exited", rule["segment_left"]), frozenset())
                elif rule.get("unsubscribed") and "subscription.changed" in names:
                    leaving |= _unsubscribed(rule["unsubscribed"], change.customers_with(["subscription.changed"]))
            if not reached and not leaving:
                continue
            with transaction.atomic():
                converted = _in_flight(journey_id, [version_id], reached, now=now)
                executor.end_enrollments(converted, status=EnrollmentStatus.CONVERTED, reason="goal reached", now=now,
                                         ended_now=True)
                exited = _in_flight(journey_id, [version_id], leaving - reached)
                executor.end_enrollments(exited, status=EnrollmentStatus.EXITED, reason="exit rule", now=now)


# --- Event waits ---------------------------------------------------------------------------------------


def _ranges(change: Change, names: set[str]) -> list[dict]:
    return [{"name": name, "lo": span[0], "hi": span[1]} for name, span in change.event_ids.items() if name in names]


def _membership_rows(change: Change, names: set[str], segment: int | None = None) -> list[dict]:
    """Segment entries and exits of ``change`` under ``names`` (of ``segment`` only, when
    given), as event rows with the properties ``segments.history`` gives them."""
    keys = [(name, pk) for name, pk in change.memberships if name in names and segment in (None, pk)]
    titles = dict(Segment.objects.filter(pk__in={pk for _, pk in keys}).values_list("pk", "name")) if keys else {}
    return [{"customer_id": customer, "name": name, "properties": {"segment_id": pk, "segment": titles.get(pk)}}
            for name, pk in keys for customer in sorted(change.memberships[(name, pk)])]


def _resume_waits(change: Change, names: set[str], now) -> None:
    ranges = _ranges(change, names)
    waited = set()
    if change.memberships:
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT event FROM journeys_eventwait WHERE event = ANY(%s)",
                           [sorted({name for name, _ in change.memberships})])
            waited = {name for (name,) in cursor.fetchall()}
    memberships = _membership_rows(change, names & waited)
    if not ranges and not memberships:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH ev AS (
                SELECT e.customer_id, e.name, e.properties, e.id
                FROM jsonb_to_recordset(%(ranges)s::jsonb) AS r(name text, lo bigint, hi bigint)
                JOIN customers_event e ON e.name = r.name AND e.id BETWEEN r.lo AND r.hi
                     AND e.customer_id = ANY(%(customers)s)
                UNION ALL
                SELECT m.customer_id, m.name, m.properties, 0
                FROM jsonb_to_recordset(%(memberships)s::jsonb) AS m(customer_id bigint, name text, properties jsonb)
            )
            SELECT DISTINCT ON (w.enrollment_id) w.enrollment_id, w.seq, w.node, ev.properties
            FROM ev JOIN journeys_eventwait w ON w.event = ev.name AND w.customer_id = ev.customer_id
            WHERE w.match_property = '' OR ev.properties ->> w.match_property = w.match_value
            ORDER BY w.enrollment_id, ev.id
            """,
            {"ranges": json.dumps(ranges), "customers": sorted(change.customer_ids),
             "memberships": json.dumps(memberships)},
        )
        found = cursor.fetchall()
    items = [executor.Resume(pk, seq, node, "event", {"event": executor.loads(properties)})
             for pk, seq, node, properties in found]
    for start in range(0, len(items), ENTRY_CHUNK):
        executor.resume_many(items[start:start + ENTRY_CHUNK], now=now)


# --- Triggers -------------------------------------------------------------------------------------------


def trigger_event(config: dict) -> str | None:
    kind = config.get("kind")
    if kind == "event":
        return config.get("event")
    return SEGMENT_EVENTS.get(kind)


def _segment_entries(change: Change, name: str, config: dict, prop: str) -> list[executor.Entry]:
    """Customers who entered (or left) the trigger's segment in this change, each with the
    event's properties as the run's context."""
    return [executor.Entry(row["customer_id"], row["properties"],
                           str(row["properties"].get(prop) or "") if prop else "")
            for row in _membership_rows(change, {name}, segment=config["segment"])]


def _history_entries(change: Change, name: str, config: dict, prop: str, now) -> list[executor.Entry]:
    """An event trigger on ``segment.entered`` / ``segment.exited``: the entries and exits of
    this change (they are not rows of the timeline table)."""
    rows = _membership_rows(change, {name})
    source = "jsonb_to_recordset(%(rows)s::jsonb) AS e(customer_id bigint, name text, properties jsonb, id bigint)"
    return _trigger_entries(source, "TRUE", {"rows": json.dumps([{**row, "id": 0} for row in rows])}, config, prop, now)


def _event_entries(change: Change, name: str, config: dict, prop: str, now) -> list[executor.Entry]:
    """The trigger's events written in this change."""
    lo, hi = change.event_ids[name]
    return _trigger_entries(
        "customers_event e",
        "e.name = %(name)s AND e.id BETWEEN %(lo)s AND %(hi)s AND e.customer_id = ANY(%(customers)s)",
        {"name": name, "lo": lo, "hi": hi, "customers": sorted(change.customers_with([name]))},
        config, prop, now,
    )


def _trigger_entries(source: str, where: str, params: dict, config: dict, prop: str, now) -> list[executor.Entry]:
    """The events of ``source`` that pass the trigger's property filters: the newest per
    customer (and re-entry key), each with its properties as the run's context."""
    filter_sql, filter_params = graphs.trigger_filter(config, now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT DISTINCT ON (e.customer_id, coalesce(e.properties ->> %(prop)s, ''))
                   e.customer_id, coalesce(e.properties ->> %(prop)s, ''), e.properties
            FROM {source}
            WHERE {where} AND {filter_sql}
            ORDER BY e.customer_id, coalesce(e.properties ->> %(prop)s, ''), e.id DESC
            """,
            {**params, **filter_params, "prop": prop},
        )
        return [executor.Entry(customer, executor.loads(properties), run_key)
                for customer, run_key, properties in cursor.fetchall()]


def _start(state: _Running, change: Change, names: set[str], now) -> None:
    for journey_id, (status, version_id) in state.journeys.items():
        if status != Journey.Status.LIVE or version_id not in state.versions:
            continue
        graph = state.versions[version_id][1]
        config = (graphs.trigger(graph) or {}).get("config") or {}
        name = trigger_event(config)
        if name not in names:
            continue
        prop = ((graph.get("settings") or {}).get("reentry") or {}).get("property") or ""
        if config.get("kind") in SEGMENT_EVENTS:
            entries = _segment_entries(change, name, config, prop)
        elif name in SEGMENT_EVENTS.values():
            entries = _history_entries(change, name, config, prop, now)
        elif name in change.event_ids:
            entries = _event_entries(change, name, config, prop, now)
        else:
            continue
        if not entries:
            continue
        journey = Journey.objects.get(pk=journey_id)
        version = JourneyVersion.objects.get(pk=version_id)
        for start in range(0, len(entries), ENTRY_CHUNK):
            with transaction.atomic():
                executor.enter(journey=journey, version=version, entries=entries[start:start + ENTRY_CHUNK], now=now)
