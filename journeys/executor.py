"""The executor: moves enrollments through their journey version's graph.

An enrollment runs until its next wait. Every node is run for all the enrollments that
stand at it together (one handler call per version × node, set-based SQL inside), and every
move out of a node is one statement for the whole group::

    UPDATE journeys_enrollment … SET node = target, seq = seq + 1
    FROM moves WHERE id = … AND seq = … AND node = …

with the step log row (unique per enrollment, node and visit), the ``journey.step``
timeline row and the live-map counters written by the same statement. The rows are locked
``FOR UPDATE`` first, so two workers never run the same enrollment, and every entry point
(a wake-up, an event, a webhook answer, a task's outcome) names the ``seq`` it expects: a
stale one is a no-op. Side effects (deliveries, webhook calls, tasks) are outbox rows keyed
``"{enrollment}:{node}:{seq}"`` written in the same transaction, so a retried task or a
killed worker never sends twice.

A step's ``visit`` is the enrollment's sequence number when it reached the node: it grows
with every move, so a customer who loops back through a wait gets a new step row, and a
retried transition the same one.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from campaigns.policy import ZONES_SQL, local_zone_sql
from customers import timeline

from . import graph as graphs
from .models import EnrollmentStatus, Journey, JourneyVersion
from .signals import journeys_moved
from .task_services import tasks_announce, tasks_expire

logger = logging.getLogger(__name__)

ACTIVE, WAITING = EnrollmentStatus.ACTIVE.value, EnrollmentStatus.WAITING.value
# A path longer than this without a wait is cut off (validation forbids loops without a wait).
MAX_HOPS = 64
# A dry run: every wait is taken as over, webhooks as answered, tasks as timed out (the
# whole run is rolled back afterwards; see services.dry_run).
DRY_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("journeys_dry_run", default=False)
# The executor's clock, when something replays the past (the demo's history); else the time.
CLOCK: contextvars.ContextVar[datetime | None] = contextvars.ContextVar("journeys_clock", default=None)


def current_time() -> datetime:
    return CLOCK.get() or timezone.now()


@dataclass(frozen=True)
class Row:
    enrollment_id: int
    customer_id: int
    seq: int
    context: dict
    test: bool


@dataclass
class Batch:
    """The enrollments standing at one node of one version, run together."""

    journey_id: int
    version_id: int
    node: dict
    rows: list[Row]
    now: datetime
    graph: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [row.enrollment_id for row in self.rows]

    def visit(self, enrollment_id: int) -> int:
        return self._seq[enrollment_id]

    def key(self, row: Row) -> str:
        """The idempotency key of this step's side effect for ``row``."""
        return f"{row.enrollment_id}:{self.node['id']}:{row.seq}"

    def __post_init__(self):
        self._seq = {row.enrollment_id: row.seq for row in self.rows}


@dataclass(frozen=True)
class Resume:
    """Move an enrollment waiting at ``node`` (with sequence number ``seq``) out by ``port``."""

    enrollment_id: int
    seq: int
    node: str
    port: str
    context: dict | None = None


@lru_cache(maxsize=256)
def _version_graph(version_id: int) -> dict:
    # Versions never change once written, so a process may keep them.
    return JourneyVersion.objects.values_list("graph", flat=True).get(pk=version_id)


def version_graph(version_id: int) -> dict:
    return _version_graph(version_id)


def loads(value) -> dict:
    """A jsonb value read through Django's cursor (which leaves JSON as text)."""
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value or {}


def _rows_json(rows: Iterable[dict]) -> str:
    return json.dumps(list(rows), default=str)


# --- Moving ---------------------------------------------------------------------------------------


def _locked(ids: Iterable[int], *, statuses: tuple[str, ...] = (ACTIVE,)) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT id, journey_id, version_id, customer_id, node, seq, context, test
            FROM journeys_enrollment
            WHERE id = ANY(%(ids)s) AND status = ANY(%(statuses)s) AND ended_at IS NULL
            ORDER BY id FOR UPDATE
            """,
            {"ids": sorted(set(ids)), "statuses": list(statuses)},
        )
        return cursor.fetchall()


def _counters_cte(source: str) -> str:
    """A CTE upserting live-map counters from ``source`` (journey_id, node, port, metric, at, n)."""
    return f"""
    counted AS (
        INSERT INTO journeys_nodecounter (journey_id, grain, bucket, node, port, metric, shard, value)
        SELECT journey_id, g.grain, CASE WHEN g.grain = 'total' THEN timestamptz 'epoch' ELSE date_trunc('minute', at) END,
               node, port, metric, pg_backend_pid() %% 8, sum(n)
        FROM ({source}) src CROSS JOIN (VALUES ('total'), ('minute')) AS g(grain)
        GROUP BY 1, 2, 3, 4, 5, 6
        ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (journey_id, grain, bucket, node, port, metric, shard)
        DO UPDATE SET value = journeys_nodecounter.value + EXCLUDED.value
        RETURNING 1
    )"""


def _move(moves: list[dict], *, now: datetime) -> list[int]:
    """Move enrollments out of a node by a port, in one statement: [{id, seq, node, port, target}].

    Writes the step log, the ``journey.step`` timeline rows and the counters (passed on the
    edge, entered at the target). Returns the ids that moved (a stale seq does not).
    """
    if not moves:
        return []
    rows = """
        SELECT u.customer_id, 'journey.step' AS name, '' AS channel,
               jsonb_build_object('journey_id', u.journey_id, 'journey', j.name, 'node', u.node,
                                  'label', u.label, 'port', u.port, 'next', u.target) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, 'journey' AS source,
               NULL AS idempotency_key, '' AS actor
        FROM moved u JOIN journeys_journey j ON j.id = u.journey_id
        WHERE NOT u.test"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH m AS (
                SELECT * FROM jsonb_to_recordset(%(moves)s::jsonb)
                    AS r(id bigint, seq int, node text, label text, port text, target text)
            ),
            moved AS (
                UPDATE journeys_enrollment e
                SET node = m.target, seq = e.seq + 1, last_step = m.node, status = 'active', updated_at = %(now)s,
                    wake_at = NULL
                FROM m WHERE e.id = m.id AND e.seq = m.seq AND e.node = m.node AND e.ended_at IS NULL
                RETURNING e.id, e.journey_id, e.customer_id, e.test, m.seq, m.node, m.label, m.port, m.target
            ),
            steps AS (
                INSERT INTO journeys_step (enrollment_id, journey_id, node, visit, port, at, detail)
                SELECT id, journey_id, node, seq, port, %(now)s, '{{}}'::jsonb FROM moved
                ON CONFLICT DO NOTHING
                RETURNING 1
            ),
            {timeline.insert_cte(rows)},
            {_counters_cte('''
                SELECT journey_id, node, port, 'passed' AS metric, %(now)s::timestamptz AS at, count(*) AS n
                FROM moved WHERE NOT test GROUP BY 1, 2, 3
                UNION ALL
                SELECT journey_id, target, '', 'entered', %(now)s::timestamptz, count(*) FROM moved
                WHERE NOT test GROUP BY 1, 2''')}
            SELECT array(SELECT id FROM moved), array(SELECT DISTINCT journey_id FROM moved),
                   (SELECT count(*) FROM counted), {timeline.summary_sql()}
            """,
            {"moves": _rows_json(moves), "now": now},
        )
        ids, journey_ids, _, summary = cursor.fetchone()
    timeline.written(summary)
    _announce(journey_ids)
    return ids


def _end(ids: list[int], *, status: str, reason: str, now: datetime, ended_now: bool = False) -> list[int]:
    """End enrollments in flight: completed at an exit node, converted by the goal, or exited
    by an exit rule. Clears their timers and waits; writes ``journey.exited`` or
    ``journey.converted`` (attributed to the last step) and counts it there.

    With ``ended_now``, runs that completed at this very moment count too: the event that
    ended a wait and took a customer to an exit may also be the journey's goal."""
    if not ids:
        return []
    name = "journey.converted" if status == EnrollmentStatus.CONVERTED else "journey.exited"
    metric = {"converted": "converted", "completed": "completed"}.get(status, "exited")
    rows = f"""
        SELECT u.customer_id, '{name}' AS name, '' AS channel,
               jsonb_build_object('journey_id', u.journey_id, 'journey', j.name, 'node', u.at_node,
                                  'reason', %(reason)s::text) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, 'journey' AS source,
               NULL AS idempotency_key, '' AS actor
        FROM ended u JOIN journeys_journey j ON j.id = u.journey_id
        WHERE NOT u.test"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH ended AS (
                UPDATE journeys_enrollment e
                SET status = %(status)s, ended_at = %(now)s, updated_at = %(now)s, wake_at = NULL,
                    last_step = CASE WHEN %(status)s = 'converted' AND e.last_step <> '' THEN e.last_step ELSE e.node END
                WHERE e.id = ANY(%(ids)s)
                  AND (e.ended_at IS NULL OR (%(ended_now)s AND e.ended_at = %(now)s AND e.status = 'completed'))
                RETURNING e.id, e.journey_id, e.customer_id, e.test, e.node, e.last_step AS at_node
            ),
            timers AS (DELETE FROM journeys_wakeup w USING ended WHERE w.enrollment_id = ended.id RETURNING 1),
            waits AS (DELETE FROM journeys_eventwait w USING ended WHERE w.enrollment_id = ended.id RETURNING 1),
            {timeline.insert_cte(rows)},
            {_counters_cte('''
                SELECT journey_id, at_node AS node, '' AS port, %(metric)s AS metric, %(now)s::timestamptz AS at,
                       count(*) AS n
                FROM ended WHERE NOT test GROUP BY 1, 2''')}
            SELECT array(SELECT id FROM ended), array(SELECT DISTINCT journey_id FROM ended),
                   (SELECT count(*) FROM timers) + (SELECT count(*) FROM waits)
                   + (SELECT count(*) FROM counted), {timeline.summary_sql()}
            """,
            {"ids": sorted(ids), "status": status, "reason": reason, "now": now, "metric": metric,
             "ended_now": ended_now},
        )
        ended, journey_ids, _, summary = cursor.fetchone()
    timeline.written(summary)
    tasks_expire(ended, now)
    _announce(journey_ids)
    return ended


def _announce(journey_ids: Iterable[int]) -> None:
    ids = {pk for pk in journey_ids if pk}
    if ids:
        transaction.on_commit(lambda: journeys_moved.send(sender=Journey, journey_ids=ids), robust=True)


def _wait(rows: list[Row], *, node_id: str, due: dict[int, datetime | None], port: str, now: datetime) -> None:
    """Park ``rows`` at ``node_id`` until ``due`` (per enrollment), to leave by ``port``."""
    timers = [{"id": r.enrollment_id, "seq": r.seq, "due": due[r.enrollment_id]} for r in rows
              if due.get(r.enrollment_id) is not None]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH t AS (SELECT * FROM jsonb_to_recordset(%(timers)s::jsonb) AS r(id bigint, seq int, due timestamptz)),
            timers AS (
                INSERT INTO journeys_wakeup (enrollment_id, due_at, node, seq, port)
                SELECT id, due, %(node)s, seq, %(port)s FROM t
                ON CONFLICT (enrollment_id) DO UPDATE
                SET due_at = EXCLUDED.due_at, node = EXCLUDED.node, seq = EXCLUDED.seq, port = EXCLUDED.port
                RETURNING 1
            )
            UPDATE journeys_enrollment e SET status = 'waiting', updated_at = %(now)s, wake_at = w.due
            FROM (SELECT i.id, t.due FROM unnest(%(ids)s::bigint[]) AS i(id) LEFT JOIN t ON t.id = i.id) w
            WHERE e.id = ANY(%(ids)s) AND e.id = w.id AND (SELECT count(*) FROM timers) >= 0
            """,
            {"timers": _rows_json(timers), "node": node_id, "port": port, "ids": [r.enrollment_id for r in rows],
             "now": now},
        )


# --- Node handlers ----------------------------------------------------------------------------------
# Each takes a Batch and returns {port: [enrollment ids]}; enrollments it leaves out either
# wait at the node (the handler parked them) or have ended.


def _run_trigger(batch: Batch) -> dict[str, list[int]]:
    return {"out": batch.ids}


def _run_exit(batch: Batch) -> dict[str, list[int]]:
    _end(batch.ids, status=EnrollmentStatus.COMPLETED, reason="completed", now=batch.now)
    return {}


def _shortened(batch: Batch, row: Row, seconds: float) -> timedelta:
    return timedelta(seconds=graphs.test_wait_seconds()) if row.test else timedelta(seconds=seconds)


def _zone_due_sql(kind: str) -> str:
    """SQL giving each enrollment's next moment (``due``) for a time-of-day or date-attribute
    wait, in the customer's timezone (the default zone when theirs is unknown)."""
    zone = local_zone_sql()
    if kind == "time_of_day":
        due = f"""(SELECT min((d::date + %(at)s::time) AT TIME ZONE {zone})
                   FROM generate_series((%(now)s::timestamptz AT TIME ZONE {zone})::date,
                                        (%(now)s::timestamptz AT TIME ZONE {zone})::date + 7, interval '1 day') AS d
                   WHERE (d::date + %(at)s::time) AT TIME ZONE {zone} > %(now)s
                     AND (cardinality(%(weekdays)s::int[]) = 0
                          OR (extract(isodow FROM d)::int - 1) = ANY(%(weekdays)s::int[])))"""
    else:
        value = "c.attributes ->> %(attr)s"
        due = f"""CASE WHEN {value} ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}'
                  THEN ((left({value}, 10)::date + %(offset)s::int + %(at)s::time) AT TIME ZONE {zone}) END"""
    return f"""WITH {ZONES_SQL}
               SELECT e.id, {due} AS due FROM journeys_enrollment e JOIN customers_customer c ON c.id = e.customer_id
               WHERE e.id = ANY(%(ids)s)"""


def _run_wait(batch: Batch) -> dict[str, list[int]]:
    config, node_id = batch.node.get("config") or {}, batch.node["id"]
    kind = config.get("kind")
    if DRY_RUN.get():
        return {"timeout" if kind == "event" else "out": batch.ids}
    if kind == "event":
        return _wait_for_event(batch, config)
    due: dict[int, datetime | None] = {}
    if kind == "duration":
        for row in batch.rows:
            due[row.enrollment_id] = batch.now + _shortened(batch, row, config["minutes"] * 60)
    else:
        attr = (config.get("attr") or "attributes.x").split(".", 1)[1]
        with connection.cursor() as cursor:
            cursor.execute(
                _zone_due_sql(kind),
                {"ids": batch.ids, "now": batch.now, "at": config.get("at", "09:00"),
                 "weekdays": config.get("weekdays") or [], "attr": attr, "offset": config.get("offset_days", 0),
                 "default_tz": settings.TIME_ZONE},
            )
            due = dict(cursor.fetchall())
        for row in batch.rows:
            if row.test:
                due[row.enrollment_id] = batch.now + _shortened(batch, row, 0)
    # A date already past, or no date at all: go on at once.
    now_ids = [pk for pk in batch.ids if due.get(pk) is None or due[pk] <= batch.now]
    parked = [row for row in batch.rows if row.enrollment_id not in set(now_ids)]
    if parked:
        _wait(parked, node_id=node_id, due=due, port="out", now=batch.now)
    return {"out": now_ids} if now_ids else {}


def _context_value(context: dict, path: str):
    value = context
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _wait_for_event(batch: Batch, config: dict) -> dict[str, list[int]]:
    match = config.get("match") or ""
    waits = []
    for row in batch.rows:
        value = _context_value(row.context, f"entry.{match}") if match else None
        waits.append({"id": row.enrollment_id, "customer": row.customer_id, "seq": row.seq,
                      "value": "" if value is None else json.dumps(value) if not isinstance(value, str) else value})
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO journeys_eventwait (enrollment_id, customer_id, event, match_property, match_value, node, seq)
            SELECT id, customer, %(event)s, %(match)s, value, %(node)s, seq
            FROM jsonb_to_recordset(%(waits)s::jsonb) AS r(id bigint, customer bigint, seq int, value text)
            ON CONFLICT (enrollment_id) DO UPDATE
            SET event = EXCLUDED.event, match_property = EXCLUDED.match_property,
                match_value = EXCLUDED.match_value, node = EXCLUDED.node, seq = EXCLUDED.seq
            """,
            {"waits": _rows_json(waits), "event": config["event"], "match": match, "node": batch.node["id"]},
        )
    due = {row.enrollment_id: batch.now + _shortened(batch, row, config["timeout_minutes"] * 60) for row in batch.rows}
    _wait(batch.rows, node_id=batch.node["id"], due=due, port="timeout", now=batch.now)
    return {}


_normalised_rules: dict[tuple[int, str], dict] = {}


def _rule(batch: Batch) -> dict | None:
    key = (batch.version_id, batch.node["id"])
    if key not in _normalised_rules:
        rule = (batch.node.get("config") or {}).get("rule")
        if rule:
            from segments.rules import validate

            catalog = graphs.Catalog.load()
            rule = validate(rule, topics=catalog.topics, segment_ids=catalog.segments)
        _normalised_rules[key] = rule or None
    return _normalised_rules[key]


CONTEXT_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def context_sql(conditions: list[dict], params: dict) -> str:
    """A boolean SQL condition on ``e.context`` (the enrollment) for the context conditions
    of a condition node; values go into ``params``."""
    parts = []
    for index, cond in enumerate(conditions):
        path = "{" + ",".join(cond["path"].split(".")) + "}"
        key, value = f"ctx{index}", cond.get("value")
        params[f"{key}_path"] = path
        member = f"(e.context #> %({key}_path)s::text[])"
        op = cond["op"]
        if op == "exists":
            parts.append(f"({member} IS NOT NULL AND {member} <> 'null'::jsonb)")
        elif op == "not_exists":
            parts.append(f"({member} IS NULL OR {member} = 'null'::jsonb)")
        elif op == "in":
            params[key] = json.dumps(value)
            parts.append(f"coalesce({member} <@ %({key})s::jsonb AND jsonb_typeof({member}) <> 'array', false)")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            params[key] = value
            number = f"(CASE WHEN jsonb_typeof({member}) = 'number' THEN ({member})::numeric END)"
            test = f"{number} {CONTEXT_COMPARE[op]} %({key})s::numeric"
            parts.append(f"coalesce({test}, {'true' if op == 'ne' else 'false'})")
        else:
            params[key] = json.dumps(value)
            test = f"{member} {CONTEXT_COMPARE.get(op, '=')} %({key})s::jsonb"
            parts.append(f"coalesce({test}, {'true' if op == 'ne' else 'false'})")
    return " AND ".join(parts) or "true"


def _run_condition(batch: Batch) -> dict[str, list[int]]:
    from segments.rules import compile_query

    config = batch.node.get("config") or {}
    params: dict = {"ids": batch.ids}
    where = context_sql(config.get("context") or [], params)
    rule = _rule(batch)
    if rule:
        customer_ids = sorted({row.customer_id for row in batch.rows})
        rule_sql, rule_params = compile_query(rule, now=batch.now, customer_ids=customer_ids, prefix="rule")
        params.update(rule_params)
        where += f" AND e.customer_id IN ({rule_sql})"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT e.id FROM journeys_enrollment e WHERE e.id = ANY(%(ids)s) AND {where}", params)
        yes = {pk for (pk,) in cursor.fetchall()}
    return {"yes": sorted(yes), "no": [pk for pk in batch.ids if pk not in yes]}


def bucket_sql(salt: str) -> str:
    """A stable 0-99 bucket per (journey, node, customer) for ``e``, different per ``salt``."""
    return (f"(abs(hashtext(e.journey_id::text || ':' || %(node)s || ':{salt}:' || e.customer_id::text)::bigint)"
            " %% 100)")


def _run_split(batch: Batch) -> dict[str, list[int]]:
    config = batch.node.get("config") or {}
    branches = config["branches"]
    total = sum(b["weight"] for b in branches)
    cases, upper = [], 0
    params: dict = {"ids": batch.ids, "node": batch.node["id"], "holdout": config.get("holdout") or 0}
    for index, branch in enumerate(branches):
        upper += branch["weight"]
        params[f"port{index}"] = branch["port"]
        cases.append(f"WHEN {bucket_sql('b')} * {total} < {upper * 100} THEN %(port{index})s")
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT CASE WHEN {bucket_sql('h')} < %(holdout)s THEN 'holdout' {' '.join(cases)} END, e.id
                FROM journeys_enrollment e WHERE e.id = ANY(%(ids)s)""",
            params,
        )
        result: dict[str, list[int]] = defaultdict(list)
        for port, pk in cursor.fetchall():
            result[port or branches[-1]["port"]].append(pk)
    return dict(result)


def _run_nba(batch: Batch) -> dict[str, list[int]]:
    from . import nba

    return nba.decide(batch)


def _run_update(batch: Batch) -> dict[str, list[int]]:
    from customers.services.profiles import customers_field_set

    config = batch.node.get("config") or {}
    # A test run walks the path without changing the customer's profile.
    customer_ids = sorted({row.customer_id for row in batch.rows if not row.test})
    if not customer_ids:
        return {"out": batch.ids}
    actor = f"journey:{batch.journey_id}"
    kind = config.get("kind")
    if kind == "subscription":
        from customers.models import Customer, Topic
        from customers.services.preferences import subscriptions_apply

        topic = Topic.objects.get(key=config["topic"])
        sub = {"topic": topic.key, "channel": config["channel"], "subscribed": config["subscribed"]}
        customers = Customer.objects.filter(pk__in=customer_ids).only("pk")
        subscriptions_apply([(c, [sub]) for c in customers], topics={topic.key: topic}, source="journey",
                            actor=actor, now=batch.now)
    else:
        field_name = "lifecycle_stage" if kind == "lifecycle_stage" else f"attributes.{config['key']}"
        customers_field_set(customer_ids=customer_ids, field=field_name, value=config.get("value"),
                            source="journey", actor=actor)
    return {"out": batch.ids}


def _run_send(batch: Batch) -> dict[str, list[int]]:
    from campaigns.dispatch import dispatch_soon
    from campaigns.outbox import journey_deliveries_write
    from customers.models import Topic

    config = batch.node.get("config") or {}
    topic_id = Topic.objects.values_list("pk", flat=True).get(key=config["topic"])
    content = config.get("content") or {}
    channels = [config["channel"]] if config.get("channel") != "preferred" else [
        ch for ch in graphs.CHANNELS if ch in content
    ]
    capped = _over_send_cap(batch)
    result: dict[str, list[int]] = {"sent": [], "suppressed": sorted(capped)}
    for sandbox in (False, True):
        rows = [row for row in batch.rows if row.test == sandbox and row.enrollment_id not in capped]
        if not rows:
            continue
        keys = {batch.key(row): row.enrollment_id for row in rows}
        written = journey_deliveries_write(
            journey_id=batch.journey_id, node_id=batch.node["id"], topic_id=topic_id, channels=channels,
            content=content, rows=[(row.customer_id, batch.key(row)) for row in rows], now=batch.now,
            sandbox=sandbox,
        )
        for key, enrollment_id in keys.items():
            status = written.get(key, (None, None, "suppressed"))[2]
            result["suppressed" if status == "suppressed" else "sent"].append(enrollment_id)
    if result["sent"]:
        transaction.on_commit(dispatch_soon, robust=True)
    return result


def _over_send_cap(batch: Batch) -> set[int]:
    cap = (batch.graph.get("settings") or {}).get("caps", {}).get("sends_per_customer")
    if not cap:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT customer_id FROM campaigns_delivery
            WHERE journey_id = %(journey)s AND customer_id = ANY(%(customers)s) AND status <> 'suppressed'
            GROUP BY customer_id HAVING count(*) >= %(cap)s
            """,
            {"journey": batch.journey_id, "customers": [row.customer_id for row in batch.rows], "cap": cap},
        )
        full = {pk for (pk,) in cursor.fetchall()}
    return {row.enrollment_id for row in batch.rows if row.customer_id in full}


def _run_webhook(batch: Batch) -> dict[str, list[int]]:
    from . import webhooks

    if DRY_RUN.get():
        return {"ok": batch.ids}
    config = batch.node.get("config") or {}
    calls = [
        {
            "id": row.enrollment_id, "seq": row.seq, "key": batch.key(row),
            "payload": {
                "journey": {"id": batch.journey_id, "version": batch.version_id, "node": batch.node["id"],
                            "enrollment": row.enrollment_id, "test": row.test},
                "context": row.context,
            },
        }
        for row in batch.rows
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO journeys_webhookcall (enrollment_id, node, seq, url, payload, status, attempts,
                                              next_attempt_at, created_at, idempotency_key, last_error)
            SELECT r.id, %(node)s, r.seq, %(url)s,
                   r.payload || jsonb_build_object('customer', jsonb_build_object(
                       'id', c.id, 'external_id', c.external_id, 'email', c.email, 'phone', c.phone,
                       'first_name', c.first_name, 'last_name', c.last_name, 'attributes', c.attributes)),
                   'pending', 0, %(now)s, %(now)s, r.key, ''
            FROM jsonb_to_recordset(%(calls)s::jsonb) AS r(id bigint, seq int, key text, payload jsonb)
            JOIN journeys_enrollment e ON e.id = r.id JOIN customers_customer c ON c.id = e.customer_id
            ON CONFLICT (idempotency_key) DO NOTHING
            """,
            {"calls": _rows_json(calls), "node": batch.node["id"], "url": config["url"], "now": batch.now},
        )
    # The call's answer moves the journey on; this wake-up is only a backstop.
    _wait(batch.rows, node_id=batch.node["id"], due={}, port="failed", now=batch.now)
    transaction.on_commit(webhooks.send_soon, robust=True)
    return {}


def _run_task(batch: Batch) -> dict[str, list[int]]:
    if DRY_RUN.get():
        return {"timeout": batch.ids}
    config = batch.node.get("config") or {}
    tasks = [{"id": row.enrollment_id, "seq": row.seq, "key": batch.key(row)} for row in batch.rows]
    hours = config.get("timeout_hours") or 48
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO journeys_task (customer_id, journey_id, enrollment_id, node, seq, title, instructions,
                                       outcomes, status, outcome, note, created_at, due_at, resolved_by,
                                       idempotency_key)
            SELECT e.customer_id, e.journey_id, e.id, %(node)s, r.seq, %(title)s, %(instructions)s,
                   %(outcomes)s::jsonb, 'open', '', '', %(now)s, %(now)s + make_interval(hours => %(hours)s), '',
                   r.key
            FROM jsonb_to_recordset(%(tasks)s::jsonb) AS r(id bigint, seq int, key text)
            JOIN journeys_enrollment e ON e.id = r.id
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """,
            {"tasks": _rows_json(tasks), "node": batch.node["id"], "title": config.get("title", "Follow up"),
             "instructions": config.get("instructions", ""), "outcomes": json.dumps(config.get("outcomes") or []),
             "now": batch.now, "hours": hours},
        )
        created = [pk for (pk,) in cursor.fetchall()]
    if created:
        tasks_announce(created)
    due = {row.enrollment_id: batch.now + _shortened(batch, row, hours * 3600) for row in batch.rows}
    _wait(batch.rows, node_id=batch.node["id"], due=due, port="timeout", now=batch.now)
    return {}


HANDLERS: dict[str, Callable[[Batch], dict[str, list[int]]]] = {
    "trigger": _run_trigger,
    "send": _run_send,
    "wait": _run_wait,
    "condition": _run_condition,
    "split": _run_split,
    "nba": _run_nba,
    "update": _run_update,
    "webhook": _run_webhook,
    "task": _run_task,
    "exit": _run_exit,
}


# --- The run loop ------------------------------------------------------------------------------------


def advance(ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Run the given active enrollments on until each waits or ends. Call inside a
    transaction. Returns how many steps were taken."""
    now = now or current_time()
    pending = sorted(set(ids))
    steps = 0
    for _ in range(MAX_HOPS):
        if not pending:
            return steps
        groups: dict[tuple[int, int, str], list[Row]] = defaultdict(list)
        for pk, journey_id, version_id, customer_id, node, seq, context, test in _locked(pending):
            groups[(journey_id, version_id, node)].append(Row(pk, customer_id, seq, loads(context), test))
        departures: list[tuple[int, int, int, str, str]] = []
        for (journey_id, version_id, node_id), rows in groups.items():
            graph = version_graph(version_id)
            node = graphs.nodes_by_id(graph).get(node_id)
            if node is None:
                # The node is gone (a migration mapped it away without a target): end the run.
                _end([r.enrollment_id for r in rows], status=EnrollmentStatus.EXITED, reason="node removed", now=now)
                continue
            batch = Batch(journey_id=journey_id, version_id=version_id, node=node, rows=rows, now=now, graph=graph)
            by_port = HANDLERS[node["type"]](batch)
            seqs = {r.enrollment_id: r.seq for r in rows}
            departures += [(pk, seqs[pk], version_id, node_id, port) for port, moved in by_port.items() for pk in moved]
        pending = _leave(departures, now=now)
        steps += len(pending)
    if pending:
        logger.error("journey enrollments %s stopped after %d steps without a wait", pending[:10], MAX_HOPS)
        _end(pending, status=EnrollmentStatus.EXITED, reason="too many steps without a wait", now=now)
    return steps


def resume_many(items: list[Resume], *, now: datetime | None = None) -> int:
    """Move waiting enrollments on by a port (an event came, a webhook answered, a task was
    resolved, a timer fired), each only if it still waits at ``node`` with ``seq``; then run
    them on. Returns how many moved."""
    if not items:
        return 0
    now = now or current_time()
    with transaction.atomic():
        wanted = {item.enrollment_id: item for item in items}
        current = {row[0]: row for row in _locked(wanted, statuses=(WAITING, ACTIVE))}
        fresh = [item for pk, item in wanted.items()
                 if pk in current and current[pk][5] == item.seq and current[pk][4] == item.node]
        if not fresh:
            return 0
        _clear_waits([item.enrollment_id for item in fresh])
        patches = [{"id": item.enrollment_id, "context": item.context} for item in fresh if item.context]
        if patches:
            with connection.cursor() as cursor:
                cursor.execute(
                    """UPDATE journeys_enrollment e SET context = e.context || r.context
                       FROM jsonb_to_recordset(%(patches)s::jsonb) AS r(id bigint, context jsonb) WHERE e.id = r.id""",
                    {"patches": _rows_json(patches)},
                )
        moved = _leave([(item.enrollment_id, item.seq, current[item.enrollment_id][2], item.node, item.port)
                        for item in fresh], now=now)
        advance(moved, now=now)
    return len(moved)


def _clear_waits(ids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """WITH a AS (DELETE FROM journeys_wakeup WHERE enrollment_id = ANY(%(ids)s) RETURNING 1),
                    b AS (DELETE FROM journeys_eventwait WHERE enrollment_id = ANY(%(ids)s) RETURNING 1)
               SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)""",
            {"ids": ids},
        )


def _leave(departures: list[tuple[int, int, int, str, str]], *, now: datetime) -> list[int]:
    """Move enrollments out of a node by a port: [(enrollment id, seq, version id, node,
    port)]. A port leading nowhere ends the run. Returns the ids that moved."""
    moves, lost = [], []
    for enrollment_id, seq, version_id, node_id, port in departures:
        graph = version_graph(version_id)
        target = graphs.next_node(graph, node_id, port)
        if target is None:
            lost.append(enrollment_id)
            continue
        node = graphs.nodes_by_id(graph).get(node_id, {"id": node_id})
        moves.append({"id": enrollment_id, "seq": seq, "node": node_id, "label": graphs.node_label(node),
                      "port": port, "target": target})
    if lost:
        _end(lost, status=EnrollmentStatus.COMPLETED, reason="no next step", now=now)
    return _move(moves, now=now)


# --- Timers -----------------------------------------------------------------------------------------


def wake_due(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Claim up to ``limit`` due wake-ups (``FOR UPDATE SKIP LOCKED``, so workers share a
    herd) and move those enrollments on, in one transaction: a worker killed halfway
    leaves the wake-ups in place for the next. Returns how many moved."""
    now = now or current_time()
    limit = limit or settings.JOURNEY_BATCH_SIZE
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                WITH due AS (
                    SELECT id FROM journeys_wakeup WHERE due_at <= %(now)s
                    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
                ),
                claimed AS (
                    DELETE FROM journeys_wakeup w WHERE w.id = ANY(ARRAY(SELECT id FROM due))
                    RETURNING w.enrollment_id, w.node, w.seq, w.port
                ),
                waits AS (
                    DELETE FROM journeys_eventwait ew USING claimed
                    WHERE ew.enrollment_id = claimed.enrollment_id AND claimed.port = 'timeout' RETURNING 1
                )
                SELECT c.enrollment_id, c.node, c.seq, c.port, e.version_id, (SELECT count(*) FROM waits)
                FROM claimed c JOIN journeys_enrollment e ON e.id = c.enrollment_id
                WHERE e.id = ANY(ARRAY(SELECT enrollment_id FROM claimed))
                  AND e.seq = c.seq AND e.node = c.node AND e.ended_at IS NULL
                """,
                {"now": now, "limit": limit},
            )
            claimed = cursor.fetchall()
        if not claimed:
            return 0
        # A task nobody resolved in time: the journey moves on by "timeout".
        tasks_expire([row[0] for row in claimed if row[3] == "timeout"], now)
        moved = _leave([(enrollment_id, seq, version_id, node_id, port)
                        for enrollment_id, node_id, seq, port, version_id, _ in claimed], now=now)
        advance(moved, now=now)
    return len(moved)


def wake_all(*, now: datetime | None = None, budget_seconds: float = 40.0) -> int:
    """Claim and run due wake-ups batch after batch until none are due or the budget is spent."""
    import time

    started, total = time.monotonic(), 0
    while time.monotonic() - started < budget_seconds:
        moved = wake_due(now=now)
        total += moved
        if not moved and not _any_due(now or timezone.now()):
            break
    return total


def _any_due(now: datetime) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM journeys_wakeup WHERE due_at <= %s)", [now])
        return cursor.fetchone()[0]


def next_due() -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(due_at) FROM journeys_wakeup")
        return cursor.fetchone()[0]


# --- Entering ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    customer_id: int
    context: dict = field(default_factory=dict)
    run_key: str = ""


def enter(*, journey: Journey, version: JourneyVersion, entries: list[Entry], now: datetime | None = None,
          test: bool = False, run_keys: bool = False) -> list[int]:
    """Enroll customers at the trigger of ``version`` (by its re-entry rule, entry cap and
    the partial unique indexes), then run them on. Call inside a transaction. Returns the
    new enrollment ids (customers refused by the re-entry rule get none). With
    ``run_keys`` each entry's run key counts whatever the re-entry mode (a date trigger's
    date: once per date)."""
    if not entries:
        return []
    now = now or current_time()
    graph = version.graph
    start = graphs.trigger(graph)
    settings_ = graph.get("settings") or {}
    reentry = settings_.get("reentry") or {"mode": "once"}
    mode = reentry.get("mode", "once")
    cooldown = reentry.get("cooldown_hours") or 0
    cap = (settings_.get("caps") or {}).get("entries_per_day")
    if run_keys:
        mode = "per_value"
    rows = [{"customer": e.customer_id, "context": e.context, "run_key": e.run_key if mode == "per_value" else ""}
            for e in entries]
    if mode == "per_value":
        rows = [row for row in rows if row["run_key"]]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH r AS (
                SELECT DISTINCT ON (customer, run_key) * FROM jsonb_to_recordset(%(rows)s::jsonb)
                    AS r(customer bigint, context jsonb, run_key text)
                ORDER BY customer, run_key
            ),
            allowed AS (
                SELECT r.* FROM r
                WHERE %(test)s OR NOT EXISTS (
                    SELECT 1 FROM journeys_enrollment p
                    WHERE p.journey_id = %(journey)s AND p.customer_id = r.customer AND p.run_key = r.run_key
                      AND NOT p.test
                      AND (%(mode)s = 'once' OR p.ended_at IS NULL
                           OR p.ended_at > %(now)s - make_interval(hours => %(cooldown)s))
                )
                ORDER BY r.customer
                LIMIT CASE WHEN %(cap)s::int IS NULL OR %(test)s THEN NULL ELSE greatest(0, %(cap)s::int - (
                    SELECT count(*) FROM journeys_enrollment p WHERE p.journey_id = %(journey)s AND NOT p.test
                      AND p.entered_at >= date_trunc('day', %(now)s::timestamptz))) END
            )
            INSERT INTO journeys_enrollment (journey_id, version_id, customer_id, node, status, context, seq,
                                             run_key, unique_run, test, entered_at, updated_at, last_step)
            SELECT %(journey)s, %(version)s, customer, %(start)s, 'active',
                   jsonb_build_object('entry', coalesce(context, '{}'::jsonb)), 0,
                   CASE WHEN %(test)s THEN 'test:' || gen_random_uuid() ELSE run_key END,
                   %(unique)s AND NOT %(test)s, %(test)s, %(now)s, %(now)s, ''
            FROM allowed
            ON CONFLICT DO NOTHING
            RETURNING id, customer_id
            """,
            {"rows": _rows_json(rows), "journey": journey.pk, "version": version.pk, "start": start["id"],
             "mode": mode, "cooldown": cooldown, "cap": cap, "now": now, "test": test,
             "unique": mode in ("once", "per_value")},
        )
        created = cursor.fetchall()
    if not created:
        return []
    ids = [pk for pk, _ in created]
    if not test:
        _entered(journey, start["id"], [customer for _, customer in created], now=now)
    advance(ids, now=now)
    return ids


def _entered(journey: Journey, node_id: str, customer_ids: list[int], *, now: datetime) -> None:
    rows = """
        SELECT customer_id, 'journey.entered' AS name, '' AS channel,
               jsonb_build_object('journey_id', %(journey)s::bigint, 'journey', %(name)s::text) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, 'journey' AS source,
               NULL AS idempotency_key, '' AS actor
        FROM unnest(%(customers)s::bigint[]) AS customer_id"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH {timeline.insert_cte(rows)},
            {_counters_cte('''SELECT %(journey)s::bigint AS journey_id, %(node)s AS node, '' AS port,
                'entered' AS metric, %(now)s::timestamptz AS at, cardinality(%(customers)s::bigint[]) AS n''')}
            SELECT (SELECT count(*) FROM counted), {timeline.summary_sql()}
            """,
            {"customers": customer_ids, "journey": journey.pk, "name": journey.name, "node": node_id, "now": now},
        )
        _, summary = cursor.fetchone()
    timeline.written(summary)
    _announce([journey.pk])


def end_enrollments(ids: list[int], *, status: str, reason: str, now: datetime | None = None,
                    ended_now: bool = False) -> list[int]:
    """End enrollments in flight (a goal reached, an exit rule, the journey stopped)."""
    return _end(ids, status=status, reason=reason, now=now or current_time(), ended_now=ended_now)
