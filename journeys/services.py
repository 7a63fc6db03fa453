"""Journey writes: create, save drafts, publish (with an optional migration of the
customers in flight), pause, resume, stop, enroll, dry-run and test."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from campaigns.policy import ZONES_SQL, local_zone_sql
from core.audit import audit
from core.errors import FieldError, InputError
from customers.models import Customer
from customers.validation import format_path, unstorable
from segments.queries import not_ready_problems

from . import executor, graph as graphs
from .models import Enrollment, EnrollmentStatus, Journey, JourneyVersion

Status = Journey.Status


def _problems_error(problems: list[graphs.Problem], prefix: str = "graph") -> InputError:
    return InputError([
        FieldError(f"{prefix}.nodes.{p.node}.{p.field}" if p.node else f"{prefix}.{p.field}", p.message)
        for p in problems
    ])


# --- Create and edit ---------------------------------------------------------------------------------


def journey_create(*, name: str, description: str = "", graph: dict | None = None, actor: str, user=None) -> Journey:
    name = (name or "").strip()
    if not name or len(name) > 120:
        raise InputError([FieldError("name", "a name of 1 to 120 characters is required")])
    if Journey.objects.filter(name=name).exists():
        raise InputError([FieldError("name", f"a journey named {name!r} already exists")])
    graph = graph if graph is not None else graphs.empty_graph()
    _check_structure(graph)
    with transaction.atomic():
        journey = Journey.objects.create(name=name, description=description, draft=graph, created_by=user)
        audit(actor=actor, action="journey.created", object_type="journey", object_id=journey.pk,
              details={"name": name})
    return journey


def _check_structure(graph) -> None:
    """A draft may be incomplete, but it must be a graph we can store and draw."""
    for where, message in unstorable(graph):
        raise InputError([FieldError(format_path(("graph", *where)), message)])
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes", []), list) \
            or not isinstance(graph.get("edges", []), list) or not isinstance(graph.get("settings", {}), dict):
        raise InputError([FieldError("graph", "must be an object with a list of nodes, a list of edges and settings")])
    if len(graph.get("nodes", [])) > graphs.MAX_NODES:
        raise InputError([FieldError("graph.nodes", f"at most {graphs.MAX_NODES} nodes")])
    for index, node in enumerate(graph.get("nodes", [])):
        if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not graphs.ID_RE.fullmatch(node["id"]):
            raise InputError([FieldError(f"graph.nodes[{index}].id", "every node needs an id of 1-64 letters, digits, '_' or '-'")])
        if not isinstance(node.get("type"), str) or node.get("type") not in graphs.NODE_TYPES:
            raise InputError([FieldError(f"graph.nodes[{index}].type",
                                         f"unknown node type {node.get('type')!r}; one of {', '.join(graphs.NODE_TYPES)}")])
    for index, edge in enumerate(graph.get("edges", [])):
        if not isinstance(edge, dict):
            raise InputError([FieldError(f"graph.edges[{index}]", "must be an object with from, port and to")])


def journey_draft_save(*, journey: Journey, graph: dict, actor: str) -> list[graphs.Problem]:
    """Store the draft (incomplete drafts are fine) and return its problems."""
    _check_structure(graph)
    now = timezone.now()
    Journey.objects.filter(pk=journey.pk).update(draft=graph, draft_saved_at=now, updated_at=now)
    journey.draft, journey.draft_saved_at, journey.updated_at = graph, now, now
    return graphs.problems(graph)


def journey_update(*, journey: Journey, name: str | None = None, description: str | None = None,
                   graph: dict | None = None, actor: str) -> Journey:
    with transaction.atomic():
        if name is not None:
            name = name.strip()
            if not name or len(name) > 120:
                raise InputError([FieldError("name", "a name of 1 to 120 characters is required")])
            if Journey.objects.filter(name=name).exclude(pk=journey.pk).exists():
                raise InputError([FieldError("name", f"a journey named {name!r} already exists")])
            journey.name = name
        if description is not None:
            journey.description = description
        if graph is not None:
            _check_structure(graph)
            journey.draft = graph
            journey.draft_saved_at = timezone.now()
        journey.updated_at = timezone.now()
        journey.save()
        audit(actor=actor, action="journey.updated", object_type="journey", object_id=journey.pk,
              details={"graph": graph is not None})
    return journey


# --- Publish and the customers in flight ------------------------------------------------------------


@dataclass
class MigrationLine:
    """Customers waiting at one node of an older version, and what the publish does with them."""

    version: int
    node: str
    label: str
    waiting: int
    action: str  # stay, move, exit
    target: str = ""
    target_label: str = ""

    def as_dict(self) -> dict:
        return self.__dict__.copy()

    @property
    def sentence(self) -> str:
        if self.action == "move":
            return f"{self.waiting} customers at '{self.label}' will move to '{self.target_label}'"
        if self.action == "exit":
            return f"{self.waiting} customers at '{self.label}' will leave the journey"
        return f"{self.waiting} customers at '{self.label}' stay on version {self.version}"


def _waiting_by_node(journey: Journey) -> list[tuple[int, int, str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT v.id, v.number, e.node, count(*) FROM journeys_enrollment e
            JOIN journeys_journeyversion v ON v.id = e.version_id
            WHERE e.journey_id = %s AND e.ended_at IS NULL AND e.status = 'waiting' AND NOT e.test
            GROUP BY 1, 2, 3 ORDER BY 2, 3
            """,
            [journey.pk],
        )
        return cursor.fetchall()


def migration_preview(*, journey: Journey, mapping: dict[str, str] | None = None,
                      graph: dict | None = None) -> list[MigrationLine]:
    """What publishing ``graph`` (the draft) would do with the customers waiting in the
    journey now: ``mapping`` is {old node id: "stay" | "exit" | new node id}; a node not in
    it stays. Raises InputError for a target that is not a waiting node of the new graph."""
    graph = graph if graph is not None else journey.draft
    mapping = mapping or {}
    new_nodes = graphs.nodes_by_id(graph)
    lines = []
    for version_id, number, node_id, waiting in _waiting_by_node(journey):
        old = graphs.nodes_by_id(executor.version_graph(version_id)).get(node_id, {"id": node_id})
        choice = mapping.get(node_id, "stay")
        line = MigrationLine(version=number, node=node_id, label=graphs.node_label(old), waiting=waiting, action="stay")
        if choice == "exit":
            line.action = "exit"
        elif choice not in ("stay", "", None):
            target = new_nodes.get(choice)
            if target is None:
                raise InputError([FieldError(f"migration.{node_id}", f"the new version has no node {choice!r}")])
            if target.get("type") == "trigger":
                raise InputError([FieldError(f"migration.{node_id}", "customers cannot be moved back to the trigger")])
            line.action, line.target, line.target_label = "move", choice, graphs.node_label(target)
        lines.append(line)
    return lines


def suggested_mapping(*, journey: Journey, graph: dict | None = None) -> dict[str, str]:
    """Nodes that kept their id and are still waits: the natural place to move people to."""
    graph = graph if graph is not None else journey.draft
    new_nodes = graphs.nodes_by_id(graph)
    return {node: node for _, _, node, _ in _waiting_by_node(journey)
            if node in new_nodes and new_nodes[node].get("type") in graphs.WAITING_TYPES}


def journey_publish(*, journey: Journey, actor: str, mapping: dict[str, str] | None = None) -> JourneyVersion:
    """Freeze the draft as a new immutable version and make it live. Customers in flight
    stay on their version unless ``mapping`` moves those waiting at a node (or ends their
    run). Raises InputError naming every problem of the draft."""
    found = graphs.problems(journey.draft)
    if found:
        raise _problems_error(found, prefix="draft")
    _check_trigger_segment_ready(journey.draft, doing="published")
    with transaction.atomic():
        journey = Journey.objects.select_for_update().get(pk=journey.pk)
        lines = migration_preview(journey=journey, mapping=mapping)
        number = (journey.versions.filter(is_test=False).aggregate(n=Max("number"))["n"] or 0) + 1
        version = JourneyVersion.objects.create(
            journey=journey, number=number, graph=copy.deepcopy(journey.draft), published_by=actor,
            migration={"lines": [line.as_dict() for line in lines if line.action != "stay"]},
        )
        journey.live_version = version
        if journey.status in (Status.DRAFT, Status.STOPPED):
            journey.status = Status.LIVE
        journey.updated_at = timezone.now()
        journey.save(update_fields=["live_version", "status", "updated_at"])
        moved = _migrate(journey, version, [line for line in lines if line.action != "stay"])
        audit(actor=actor, action="journey.published", object_type="journey", object_id=journey.pk,
              details={"version": number, "migrated": moved})
    return version


def _check_trigger_segment_ready(graph: dict, *, doing: str) -> None:
    """Refuse to let customers in from a segment whose members are still being computed:
    its entries would be the computation's, not customers' changes."""
    config = (graphs.trigger(graph) or {}).get("config") or {}
    if config.get("kind") in ("segment_entered", "segment_exited"):
        problems = not_ready_problems([config.get("segment")], field="trigger.config.segment")
        if problems:
            raise InputError(problems, f"Not {doing}: the trigger's segment is not ready yet.")


def _migrate(journey: Journey, version: JourneyVersion, lines: list[MigrationLine]) -> dict:
    """Apply a publish's plan to the customers waiting at each node, one statement per node.

    A customer moved from a timed wait to a timed wait keeps the time already waited (a
    "wait 2 days" that becomes "wait 1 day" releases someone who waited 30 hours at once);
    moved anywhere else, they arrive at the new node as if they had just reached it.
    """
    now = timezone.now()
    result = {"moved": 0, "exited": 0}
    new_nodes = graphs.nodes_by_id(version.graph)
    for line in lines:
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT e.id FROM journeys_enrollment e JOIN journeys_journeyversion v ON v.id = e.version_id
                   WHERE e.journey_id = %s AND v.number = %s AND NOT v.is_test AND e.node = %s
                     AND e.status = 'waiting' AND e.ended_at IS NULL AND NOT e.test
                   FOR UPDATE OF e""",
                [journey.pk, line.version, line.node],
            )
            ids = [pk for (pk,) in cursor.fetchall()]
        if not ids:
            continue
        if line.action == "exit":
            result["exited"] += len(executor.end_enrollments(
                ids, status=EnrollmentStatus.EXITED, reason=f"removed by version {version.number}", now=now))
            continue
        target = new_nodes[line.target]
        config = target.get("config") or {}
        keep_time = target.get("type") == "wait" and config.get("kind") == "duration"
        with connection.cursor() as cursor:
            cursor.execute(
                """
                WITH moved AS (
                    UPDATE journeys_enrollment e
                    SET version_id = %(version)s, node = %(target)s, seq = e.seq + 1, updated_at = e.updated_at,
                        status = CASE WHEN %(keep)s THEN 'waiting' ELSE 'active' END,
                        wake_at = CASE WHEN %(keep)s
                                       THEN greatest(%(now)s, e.updated_at + make_interval(mins => %(minutes)s)) END
                    WHERE e.id = ANY(%(ids)s)
                    RETURNING e.id, e.seq, e.updated_at AS since
                ),
                cleared AS (DELETE FROM journeys_eventwait w USING moved WHERE w.enrollment_id = moved.id RETURNING 1),
                timers AS (
                    INSERT INTO journeys_wakeup (enrollment_id, due_at, node, seq, port)
                    SELECT id, greatest(%(now)s, since + make_interval(mins => %(minutes)s)), %(target)s, seq, 'out'
                    FROM moved WHERE %(keep)s
                    ON CONFLICT (enrollment_id) DO UPDATE
                    SET due_at = EXCLUDED.due_at, node = EXCLUDED.node, seq = EXCLUDED.seq, port = EXCLUDED.port
                    RETURNING 1
                ),
                dropped AS (
                    DELETE FROM journeys_wakeup w USING moved WHERE w.enrollment_id = moved.id AND NOT %(keep)s
                    RETURNING 1
                )
                SELECT array(SELECT id FROM moved), (SELECT count(*) FROM cleared) + (SELECT count(*) FROM timers)
                       + (SELECT count(*) FROM dropped)
                """,
                {"version": version.pk, "target": line.target, "ids": ids, "keep": keep_time, "now": now,
                 "minutes": config.get("minutes") or 0},
            )
            moved_ids, _ = cursor.fetchone()
        if not keep_time:
            executor.advance(moved_ids, now=now)
        result["moved"] += len(moved_ids)
    return result


# --- Status ---------------------------------------------------------------------------------------------


def _set_status(journey: Journey, *, to: str, allowed: set[str], action: str, actor: str) -> Journey:
    with transaction.atomic():
        journey = Journey.objects.select_for_update().get(pk=journey.pk)
        if journey.status not in allowed:
            state = journey.get_status_display().lower()
            raise InputError([FieldError("status", f"a {state} journey cannot be {action}")],
                             message=f"The journey is {state}: it cannot be {action} now.")
        journey.status = to
        journey.updated_at = timezone.now()
        journey.save(update_fields=["status", "updated_at"])
        audit(actor=actor, action=f"journey.{action}", object_type="journey", object_id=journey.pk)
    return journey


def journey_pause(*, journey: Journey, actor: str) -> Journey:
    """No new entries; customers already in it carry on."""
    return _set_status(journey, to=Status.PAUSED, allowed={Status.LIVE}, action="paused", actor=actor)


def journey_resume(*, journey: Journey, actor: str) -> Journey:
    if journey.live_version_id:
        _check_trigger_segment_ready(journey.live_version.graph, doing="resumed")
    return _set_status(journey, to=Status.LIVE, allowed={Status.PAUSED}, action="resumed", actor=actor)


def journey_stop(*, journey: Journey, actor: str) -> Journey:
    """No new entries, and everyone in it leaves now."""
    with transaction.atomic():
        journey = _set_status(journey, to=Status.STOPPED, allowed={Status.LIVE, Status.PAUSED}, action="stopped",
                              actor=actor)
        ids = list(Enrollment.objects.filter(journey=journey, ended_at__isnull=True).values_list("pk", flat=True))
        for start in range(0, len(ids), 10_000):
            executor.end_enrollments(ids[start:start + 10_000], status=EnrollmentStatus.EXITED, reason="journey stopped")
    return journey


# --- Entering by hand ----------------------------------------------------------------------------------


def journey_enroll(*, journey: Journey, customer: Customer, context: dict | None, actor: str) -> Enrollment | None:
    """Enroll one customer (the API trigger), by the journey's re-entry rule. Returns the
    enrollment, or None when the rule refuses a new one."""
    # The journey as it is now: another request may have published or paused it.
    journey = Journey.objects.select_related("live_version").get(pk=journey.pk)
    if journey.status != Status.LIVE or journey.live_version is None:
        raise InputError([FieldError("journey", "the journey is not live")],
                         message="The journey is not live: it takes no entries now.")
    context = context or {}
    reentry = (journey.live_version.graph.get("settings") or {}).get("reentry") or {}
    run_key = ""
    if reentry.get("mode") == "per_value":
        value = context.get(reentry.get("property"))
        if value in (None, ""):
            raise InputError([FieldError(f"context.{reentry.get('property')}",
                                         "this journey runs once per value of this property, and it is missing")])
        run_key = str(value)
    with transaction.atomic():
        ids = executor.enter(journey=journey, version=journey.live_version,
                             entries=[executor.Entry(customer.pk, context, run_key)])
        audit(actor=actor, action="journey.enrolled", object_type="journey", object_id=journey.pk,
              details={"customer": customer.pk, "enrolled": bool(ids)})
    return Enrollment.objects.filter(pk=ids[0]).first() if ids else None


# --- Dry run and test mode -------------------------------------------------------------------------------


class _Rollback(Exception):
    pass


@dataclass
class DryRun:
    entering: int = 0
    simulated: int = 0
    population: str = ""
    nodes: dict[str, dict] = field(default_factory=dict)
    edges: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"entering": self.entering, "simulated": self.simulated, "population": self.population,
                "nodes": self.nodes, "edges": self.edges}


DRY_RUN_SAMPLE = 20_000


def _entrants(graph: dict, now: datetime) -> tuple[str, str, dict]:
    """SQL selecting the customers the trigger would let in now (customer_id, run_key, context),
    and a sentence saying who they are."""
    config = (graphs.trigger(graph) or {}).get("config") or {}
    kind = config.get("kind")
    since = now - timedelta(hours=24)
    if kind == "event":
        filter_sql, params = graphs.trigger_filter(config, now)
        prop = ((graph.get("settings") or {}).get("reentry") or {}).get("property") or ""
        params.update(name=config["event"], since=since, prop=prop)
        return (f"""SELECT DISTINCT ON (e.customer_id, coalesce(e.properties ->> %(prop)s, ''))
                        e.customer_id, coalesce(e.properties ->> %(prop)s, '') AS run_key, e.properties AS context
                    FROM customers_event e WHERE e.name = %(name)s AND e.occurred_at >= %(since)s AND {filter_sql}
                    ORDER BY e.customer_id, coalesce(e.properties ->> %(prop)s, ''), e.id DESC""",
                f"customers with a {config['event']} event in the last 24 hours", params)
    if kind == "segment_entered":
        return ("""SELECT m.customer_id, '' AS run_key, '{}'::jsonb AS context FROM segments_segmentmembership m
                   WHERE m.segment_id = %(segment)s""", "the segment's members now", {"segment": config["segment"]})
    if kind == "segment_exited":
        return ("""SELECT DISTINCT p.customer_id, '' AS run_key, '{}'::jsonb AS context FROM segments_pastmembership p
                   WHERE p.segment_id = %(segment)s AND p.exited_at >= %(since)s""",
                "customers who left the segment in the last 24 hours", {"segment": config["segment"], "since": since})
    if kind == "date":
        return (f"""WITH {ZONES_SQL}
                    SELECT c.id AS customer_id, '' AS run_key, '{{}}'::jsonb AS context FROM customers_customer c
                    WHERE c.attributes ->> %(attr)s ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}'
                      AND {date_match_sql()}""",
                f"customers whose {config['attr']} falls today", {**date_params(config), "now": now})
    return ("SELECT NULL::bigint AS customer_id, '' AS run_key, '{}'::jsonb AS context WHERE false",
            "entries come from the API only", {})


def date_match_sql() -> str:
    """Customers whose date attribute, shifted by the offset, is today in their timezone
    (``c`` is the customer; the statement's WITH names ``policy_zones``)."""
    return f"""(left(c.attributes ->> %(attr)s, 10)::date + %(offset)s::int)
               = (%(now)s::timestamptz AT TIME ZONE {local_zone_sql()})::date"""


def date_params(config: dict) -> dict:
    from django.conf import settings

    return {"attr": config["attr"].split(".", 1)[1], "offset": config.get("offset_days") or 0,
            "default_tz": settings.TIME_ZONE}


def dry_run(*, journey: Journey, graph: dict | None = None) -> DryRun:
    """Who would enter now and how they would split at each node, on current data, without
    sending or writing anything: the journey runs in a transaction that is rolled back,
    with every wait taken as if it were over (an event wait as timed out)."""
    graph = graph if graph is not None else journey.draft
    found = graphs.problems(graph)
    if found:
        raise _problems_error(found, prefix="draft")
    now = timezone.now()
    result = DryRun()
    source, result.population, params = _entrants(graph, now)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM ({source}) s", params)
        result.entering = cursor.fetchone()[0]
        cursor.execute(f"SELECT customer_id, run_key, context FROM ({source}) s ORDER BY customer_id LIMIT %(limit)s",
                       {**params, "limit": DRY_RUN_SAMPLE})
        entries = [executor.Entry(pk, executor.loads(context), run_key) for pk, run_key, context in cursor.fetchall()]
    try:
        with transaction.atomic():
            token = executor.DRY_RUN.set(True)
            try:
                version = JourneyVersion.objects.create(journey=journey, number=0, graph=graph, is_test=True)
                ids = executor.enter(journey=journey, version=version, entries=entries, now=now)
            finally:
                executor.DRY_RUN.reset(token)
            result.simulated = len(ids)
            with connection.cursor() as cursor:
                cursor.execute(
                    """SELECT node, port, count(*) FROM journeys_step WHERE enrollment_id = ANY(%s)
                       GROUP BY 1, 2""",
                    [ids],
                )
                for node, port, count in cursor.fetchall():
                    entry = result.nodes.setdefault(node, {"reached": 0, "ports": {}})
                    entry["reached"] += count
                    entry["ports"][port] = count
                    result.edges[f"{node}:{port}"] = count
                cursor.execute(
                    """SELECT node, count(*) FROM journeys_enrollment WHERE id = ANY(%s) AND ended_at IS NOT NULL
                       GROUP BY 1""",
                    [ids],
                )
                for node, count in cursor.fetchall():
                    entry = result.nodes.setdefault(node, {"reached": 0, "ports": {}})
                    entry["reached"] += count
            raise _Rollback
    except _Rollback:
        pass
    return result


def test_run(*, journey: Journey, customer: Customer, context: dict | None, actor: str) -> Enrollment:
    """Send one customer through the current draft, with every wait shortened to a few
    seconds and messages through the sandbox providers; the customer's profile is not
    changed, and nothing is counted on the live map."""
    found = graphs.problems(journey.draft)
    if found:
        raise _problems_error(found, prefix="draft")
    with transaction.atomic():
        version = JourneyVersion.objects.create(
            journey=journey, number=0, graph=copy.deepcopy(journey.draft), is_test=True, published_by=actor
        )
        ids = executor.enter(journey=journey, version=version, entries=[executor.Entry(customer.pk, context or {})],
                             test=True)
        audit(actor=actor, action="journey.tested", object_type="journey", object_id=journey.pk,
              details={"customer": customer.pk, "enrollment": ids[0] if ids else None})
    return Enrollment.objects.get(pk=ids[0])
