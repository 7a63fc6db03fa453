"""Next best action: choose one action of the catalog for each customer arriving at an nba node.

:func:`decide` is called by the executor, inside its transaction, once for all enrollments
that arrive at the same node together. It reads the catalog once, then runs ONE statement
for the whole batch that

1. lists every (enrollment, candidate) pair: each action the node names, in its order;
2. decides eligibility: the action is active, within ``valid_from``/``valid_until``, and
   the customer matches its rule (each rule compiled by the segments' rule compiler for
   the batch's customers; the rules are combined with ``UNION ALL``);
3. applies the contact policy from the customer's earlier decisions: fewer than
   ``max_offers`` offers of the action in the last ``window_days``, no acceptance in the
   last ``cooldown_after_accept_days``, no rejection in the last
   ``cooldown_after_reject_days``;
4. scores each candidate ``priority × value × smoothed acceptance rate`` and ranks the
   eligible ones per enrollment, ties broken by the action key;
5. keeps a holdout: a stable hash of (journey, node, customer) below the node's
   ``holdout`` percent sends the customer to "none" (the would-be winner stays rank 1
   among the candidates, and the decision is marked ``holdout``);
6. inserts one :class:`~journeys.models.Decision` per enrollment with every candidate, its
   score, rank and reasons (idempotency key ``"{enrollment_id}:{node_id}:{seq}"``,
   ``ON CONFLICT DO NOTHING``: a retried step finds the decision it made before and leaves
   by the same port), and adds the new offers to ``Action.offered``.

The smoothed acceptance rate is ``(accepted + 1) / (offered + 2)``: the posterior mean of a
uniform (Laplace) prior, so a new action starts at 0.5 instead of 0 or "undefined", and
its observed rate takes over as offers accumulate. :func:`outcomes_record` learns from
the event stream: an action's ``accept_event`` (or ``reject_event``) marks the customer's
latest pending decision for it and bumps ``Action.accepted``.

Test-mode runs are decided and logged like any other, but they are not offers: they do not
count towards a customer's contact policy, nor towards what the catalog learns.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Iterable, Protocol

from django.db import connection, transaction
from django.db.models import Q

from .models import Action, Decision

logger = logging.getLogger(__name__)

# The Laplace prior of the acceptance rate: one acceptance in two offers before any is seen.
PRIOR_ACCEPTED = 1
PRIOR_OFFERED = 2
NONE_PORT = "none"
# How much of an eligibility rule a reason quotes.
RULE_WORDS_LIMIT = 200


class Row(Protocol):
    enrollment_id: int
    customer_id: int
    seq: int
    context: dict
    test: bool


class Batch(Protocol):
    journey_id: int
    version_id: int
    node: dict
    rows: list[Row]
    now: datetime


def smoothed_rate(*, offered: int, accepted: int) -> float:
    """The acceptance rate ranking uses (see the module's docstring)."""
    return (accepted + PRIOR_ACCEPTED) / (offered + PRIOR_OFFERED)


def candidates_in_order(candidates: Any) -> list[dict]:
    """A decision's candidates best first: the eligible by rank, then the others in the node's order."""
    if not isinstance(candidates, list):
        return []
    found = [c for c in candidates if isinstance(c, dict)]
    return sorted(found, key=lambda c: (c.get("rank") is None, c.get("rank") or 0, c.get("position") or 0))


def idempotency_key(*, enrollment_id: int, node_id: str, seq: int) -> str:
    return f"{enrollment_id}:{node_id}:{seq}"


# --- Eligibility rules ----------------------------------------------------------------------------


def compile_rule(rules: Any) -> dict:
    """Validate an eligibility rule against today's topics and segments; raises RuleError."""
    from customers.models import Topic
    from segments import rules as rule_language
    from segments.models import Segment

    topics = dict(Topic.objects.values_list("key", "id"))
    return rule_language.validate(rules, topics=topics, segment_ids=set(Segment.objects.values_list("pk", flat=True)))


def rule_words(tree: dict) -> str:
    """A rule in one line of words, for a reason ("lifecycle_stage is 'expert' and …")."""
    from segments.rules import describe

    def words(node: dict, nested: bool) -> str:
        for kind, joiner in (("all", " and "), ("any", " or ")):
            if kind in node:
                text = joiner.join(words(child, True) for child in node[kind])
                return f"({text})" if nested and len(node[kind]) > 1 else text
        if "not" in node:
            return f"not ({words(node['not'], False)})"
        return describe(node)

    text = words(tree, False)
    return text if len(text) <= RULE_WORDS_LIMIT else text[: RULE_WORDS_LIMIT - 1].rstrip() + "…"


def _eligible_sql(rules: list[tuple[int, dict]], *, now: datetime, customer_ids: list[int]) -> tuple[str, dict]:
    """``SELECT action_id, customer_id`` for every (action, customer of the batch) whose rule matches.

    Each rule compiles to its own query with parameters named per action (``%(r3_p0)s``), so
    the queries can share one statement.
    """
    from segments.rules import compile_query

    parts, params = [], {}
    for index, (action_id, tree) in enumerate(rules):
        prefix = f"r{index}_"
        query, named = compile_query(tree, now=now, customer_ids=customer_ids, prefix=f"{prefix}p")
        params.update(named)
        params[f"{prefix}action"] = action_id
        parts.append(f"SELECT %({prefix}action)s::bigint AS action_id, q.id AS customer_id FROM ({query}) q")
    if not parts:
        return "SELECT NULL::bigint AS action_id, NULL::bigint AS customer_id WHERE FALSE", params
    return "\nUNION ALL\n".join(parts), params


# --- Deciding -----------------------------------------------------------------------------------

# Column lists of the statement below, so its CTEs stay readable.
_STAMP = "to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC'"

_DECIDE = """
WITH batch AS (
    SELECT b.enrollment_id, b.customer_id, b.seq, b.test,
           b.enrollment_id::text || ':' || %(node)s || ':' || b.seq::text AS idempotency_key
    FROM unnest(%(enrollments)s::bigint[], %(customers)s::bigint[], %(seqs)s::bigint[], %(tests)s::boolean[])
         AS b(enrollment_id, customer_id, seq, test)
),
existing AS (
    SELECT d.idempotency_key, d.action_id
    FROM journeys_decision d JOIN batch b ON b.idempotency_key = d.idempotency_key
),
fresh AS (
    SELECT b.*,
           %(holdout)s > 0
               AND mod(abs(hashtext(%(journey)s::text || ':' || %(node)s || ':' || b.customer_id::text)::bigint), 100)
                   < %(holdout)s AS held
    FROM batch b
    WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.idempotency_key = b.idempotency_key)
),
catalog AS (
    SELECT l.key, l.position, a.id AS action_id, a.name, a.active, a.valid_from, a.valid_until, a.value, a.priority,
           a.max_offers, a.window_days, a.cooldown_after_accept_days, a.cooldown_after_reject_days,
           r.words AS rule_words,
           coalesce(a.active AND (a.valid_from IS NULL OR a.valid_from <= %(now)s)
                    AND (a.valid_until IS NULL OR a.valid_until > %(now)s), FALSE) AS usable,
           (a.accepted + %(prior_accepted)s)::numeric / (a.offered + %(prior_offered)s) AS rate,
           a.priority * a.value * (a.accepted + %(prior_accepted)s)::numeric / (a.offered + %(prior_offered)s) AS score
    FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS l(key, position)
    LEFT JOIN journeys_action a ON a.key = l.key
    LEFT JOIN unnest(%(ruled_actions)s::bigint[], %(ruled_words)s::text[]) AS r(action_id, words) ON r.action_id = a.id
),
listed AS (
    SELECT c.*,
           -- What every candidate of this action shows, built once per action, not per customer.
           jsonb_build_object(
               'action', c.key, 'name', c.name, 'position', c.position, 'priority', c.priority, 'value', c.value,
               'rate', round(c.rate, 6), 'score', round(c.score, 6)
           ) AS facts,
           -- The score does not depend on the customer: one order of the actions, ties by key,
           -- ranks every customer's eligible candidates.
           row_number() OVER (ORDER BY c.score DESC NULLS LAST, c.key) AS ord
    FROM catalog c
),
eligible AS (
    SELECT DISTINCT action_id, customer_id FROM ({eligible}) matched
),
history AS (
    -- Earlier offers and answers of the batch's customers, for the contact policy.
    SELECT d.customer_id, d.action_id,
           count(*) FILTER (WHERE d.decided_at > %(now)s - make_interval(days => l.window_days)) AS offers,
           max(d.outcome_at) FILTER (WHERE d.outcome = %(accepted)s) AS last_accepted,
           max(d.outcome_at) FILTER (WHERE d.outcome = %(rejected)s) AS last_rejected
    FROM journeys_decision d
    JOIN listed l ON l.action_id = d.action_id
    LEFT JOIN journeys_enrollment e ON e.id = d.enrollment_id
    WHERE d.customer_id = ANY(%(customers)s::bigint[]) AND NOT coalesce(e.test, FALSE)
    GROUP BY d.customer_id, d.action_id
),
pairs AS (
    SELECT f.enrollment_id, f.customer_id, f.test, f.held, f.idempotency_key, l.*,
           (l.rule_words IS NULL OR el.customer_id IS NOT NULL) AS rule_ok,
           coalesce(h.offers, 0) AS offers,
           h.last_accepted + make_interval(days => l.cooldown_after_accept_days) AS accept_pause_until,
           h.last_rejected + make_interval(days => l.cooldown_after_reject_days) AS reject_pause_until
    FROM fresh f
    CROSS JOIN listed l
    LEFT JOIN eligible el ON el.action_id = l.action_id AND el.customer_id = f.customer_id
    LEFT JOIN history h ON h.customer_id = f.customer_id AND h.action_id = l.action_id
),
checked AS (
    SELECT p.*,
           p.usable AND p.rule_ok AND p.offers < p.max_offers
               AND coalesce(p.accept_pause_until <= %(now)s, TRUE)
               AND coalesce(p.reject_pause_until <= %(now)s, TRUE) AS ok,
           array_remove(ARRAY[
               CASE WHEN p.action_id IS NULL THEN 'not in the catalog any more' END,
               CASE WHEN NOT p.active THEN 'inactive' END,
               CASE WHEN p.valid_from > %(now)s THEN 'not valid until ' || {valid_from} END,
               CASE WHEN p.valid_until <= %(now)s THEN 'expired on ' || {valid_until} END,
               CASE WHEN p.usable AND NOT p.rule_ok THEN 'not eligible: ' || p.rule_words END,
               CASE WHEN p.usable AND p.offers >= p.max_offers THEN
                   'contact policy: offered ' || p.offers || CASE WHEN p.offers = 1 THEN ' time' ELSE ' times' END
                   || ' in ' || p.window_days || ' days (at most ' || p.max_offers || ')' END,
               CASE WHEN p.usable AND p.accept_pause_until > %(now)s THEN
                   'cooldown after acceptance until ' || {accept_until} END,
               CASE WHEN p.usable AND p.reject_pause_until > %(now)s THEN
                   'cooldown after rejection until ' || {reject_until} END
           ], NULL) AS reasons
    FROM pairs p
),
ranked AS (
    SELECT c.*,
           CASE WHEN c.ok THEN count(*) FILTER (WHERE c.ok) OVER (
               PARTITION BY c.enrollment_id ORDER BY c.ord ROWS UNBOUNDED PRECEDING
           ) END AS rank
    FROM checked c
),
decided AS (
    -- The candidates in the actions' order. The input is sorted instead of the aggregate: an
    -- ORDER BY inside jsonb_agg sorts each enrollment's few rows on their own, which costs more
    -- than the rest of the statement; this order is the ranking window's, so nothing is sorted
    -- twice. Readers show them best first (see candidates_in_order).
    SELECT r.enrollment_id, min(r.customer_id) AS customer_id, bool_or(r.test) AS test, bool_or(r.held) AS held,
           min(r.idempotency_key) AS idempotency_key,
           max(r.action_id) FILTER (WHERE r.rank = 1) AS winner,
           jsonb_agg(r.facts || jsonb_build_object(
               'eligible', r.ok, 'reasons', to_jsonb(r.reasons), 'rank', r.rank, 'offers_in_window', r.offers
           )) AS candidates
    FROM (SELECT * FROM ranked ORDER BY enrollment_id, ord) r
    GROUP BY r.enrollment_id
),
inserted AS (
    INSERT INTO journeys_decision
        (enrollment_id, journey_id, node, customer_id, action_id, holdout, candidates, decided_at, outcome,
         idempotency_key)
    SELECT d.enrollment_id, %(journey)s, %(node)s, d.customer_id, CASE WHEN d.held THEN NULL ELSE d.winner END,
           d.held, d.candidates, %(now)s, %(pending)s, d.idempotency_key
    FROM decided d
    ORDER BY d.enrollment_id
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key, action_id
),
new_offers AS (
    SELECT i.action_id, count(*) AS n
    FROM inserted i JOIN fresh f ON f.idempotency_key = i.idempotency_key
    WHERE i.action_id IS NOT NULL AND NOT f.test
    GROUP BY i.action_id
),
locked AS (
    -- In id order, so two batches offering the same actions queue instead of deadlocking.
    SELECT a.id FROM journeys_action a WHERE a.id IN (SELECT action_id FROM new_offers) ORDER BY a.id FOR UPDATE
),
counted AS (
    UPDATE journeys_action a SET offered = a.offered + o.n
    FROM new_offers o
    WHERE a.id = o.action_id AND a.id IN (SELECT id FROM locked)
)
SELECT i.idempotency_key, i.action_id FROM inserted i
UNION ALL
SELECT x.idempotency_key, x.action_id FROM existing x
"""


def decide(batch: Batch) -> dict[str, list[int]]:
    """Decide the next best action for every enrollment of ``batch``; returns port → enrollment ids.

    Call inside the executor's transaction. Every port of the node is in the answer (action
    keys in the node's order, then "none"), with an empty list when nobody leaves by it.
    Deciding again for an enrollment and ``seq`` already decided returns the port recorded
    then and writes nothing.
    """
    node_id = str(batch.node["id"])
    config = batch.node.get("config") or {}
    keys = [str(key) for key in config.get("actions") or []]
    holdout = int(config.get("holdout") or 0)
    ports: dict[str, list[int]] = {key: [] for key in keys}
    ports[NONE_PORT] = []
    rows = list(batch.rows)
    if not keys:
        # A node without actions (validation refuses one) has nothing to decide.
        ports[NONE_PORT] = [row.enrollment_id for row in rows]
        return ports
    if not rows:
        return ports
    now = batch.now
    actions = {action.pk: action for action in Action.objects.filter(key__in=keys)}
    customer_ids = sorted({row.customer_id for row in rows})
    rules, ruled_actions, ruled_words = [], [], []
    for action in actions.values():
        if action.eligibility in (None, {}) or not _usable(action, now):
            continue
        tree, words = _rule(action)
        ruled_actions.append(action.pk)
        ruled_words.append(words)
        if tree is not None:
            rules.append((action.pk, tree))
    eligible, params = _eligible_sql(rules, now=now, customer_ids=customer_ids)
    statement = _DECIDE.format(
        eligible=eligible,
        valid_from=_STAMP.format(column="p.valid_from"),
        valid_until=_STAMP.format(column="p.valid_until"),
        accept_until=_STAMP.format(column="p.accept_pause_until"),
        reject_until=_STAMP.format(column="p.reject_pause_until"),
    )
    params.update(
        node=node_id, journey=batch.journey_id, now=now, holdout=holdout, keys=keys,
        enrollments=[row.enrollment_id for row in rows], customers=[row.customer_id for row in rows],
        seqs=[row.seq for row in rows], tests=[bool(getattr(row, "test", False)) for row in rows],
        ruled_actions=ruled_actions, ruled_words=ruled_words,
        prior_accepted=PRIOR_ACCEPTED, prior_offered=PRIOR_OFFERED,
        accepted=Decision.Outcome.ACCEPTED.value, rejected=Decision.Outcome.REJECTED.value,
        pending=Decision.Outcome.PENDING.value,
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        chosen = dict(cursor.fetchall())
    keys_of = {row.enrollment_id: _key(row, node_id) for row in rows}
    unknown = [key for key in keys_of.values() if key not in chosen]
    if unknown:
        # Decided by a concurrent transaction that committed while this statement waited on
        # its key: invisible to the statement's snapshot, visible to a new one.
        chosen.update(Decision.objects.filter(idempotency_key__in=unknown).values_list("idempotency_key", "action_id"))
    for row in rows:
        key = keys_of[row.enrollment_id]
        if key not in chosen:
            logger.error("No decision found for enrollment %s at node %s", row.enrollment_id, node_id)
        action = actions.get(chosen.get(key))
        port = action.key if action is not None and action.key in ports else NONE_PORT
        ports[port].append(row.enrollment_id)
    return ports


def _key(row: Row, node_id: str) -> str:
    return idempotency_key(enrollment_id=row.enrollment_id, node_id=node_id, seq=row.seq)


def _usable(action: Action, now: datetime) -> bool:
    return (
        action.active
        and (action.valid_from is None or action.valid_from <= now)
        and (action.valid_until is None or action.valid_until > now)
    )


def _rule(action: Action) -> tuple[dict | None, str]:
    """The action's compiled rule and the reason its failure gives; (None, reason) for a rule
    that no longer compiles, which nobody then matches."""
    tree = action.eligibility_compiled
    if tree is None:
        # Written around the services (a fixture, a shell): validate it now.
        from segments.rules import RuleError

        try:
            tree = compile_rule(action.eligibility)
        except RuleError as exc:
            return None, f"the eligibility rule is not valid ({exc})"[:RULE_WORDS_LIMIT]
    return tree, rule_words(tree)


# --- Learning from outcomes ---------------------------------------------------------------------

_OUTCOMES = """
WITH written AS (
    SELECT w.name, w.customer_id
    FROM unnest(%(names)s::text[], %(customers)s::bigint[]) AS w(name, customer_id)
),
answers AS (
    SELECT DISTINCT ON (d.customer_id, d.action_id)
           d.id, CASE WHEN w.name = a.accept_event THEN %(accepted)s ELSE %(rejected)s END AS outcome
    FROM written w
    JOIN journeys_action a ON w.name = a.accept_event OR (a.reject_event <> '' AND w.name = a.reject_event)
    JOIN journeys_decision d ON d.customer_id = w.customer_id AND d.action_id = a.id
    LEFT JOIN journeys_enrollment e ON e.id = d.enrollment_id
    WHERE d.outcome = %(pending)s AND d.decided_at <= %(now)s AND NOT coalesce(e.test, FALSE)
    -- The latest decision; an acceptance wins over a rejection written in the same change.
    ORDER BY d.customer_id, d.action_id, d.decided_at DESC, d.id DESC, (w.name = a.accept_event) DESC
),
marked AS (
    UPDATE journeys_decision d SET outcome = s.outcome, outcome_at = %(now)s
    FROM answers s
    WHERE d.id = s.id AND d.outcome = %(pending)s
    RETURNING d.action_id, d.outcome
),
learnt AS (
    SELECT action_id, count(*) AS n FROM marked WHERE outcome = %(accepted)s GROUP BY action_id
),
locked AS (
    SELECT a.id FROM journeys_action a WHERE a.id IN (SELECT action_id FROM learnt) ORDER BY a.id FOR UPDATE
),
counted AS (
    UPDATE journeys_action a SET accepted = a.accepted + l.n
    FROM learnt l
    WHERE a.id = l.action_id AND a.id IN (SELECT id FROM locked)
)
SELECT count(*) FROM marked
"""


def outcomes_record(*, customer_ids: Iterable[int], by_name: dict[str, frozenset[int]], now: datetime) -> int:
    """Mark the decisions the events of one change answered; returns how many were marked.

    For each customer for whom an action's ``accept_event`` (or ``reject_event``) was written,
    their latest pending decision offering that action becomes accepted (or rejected) at
    ``now``, and accepted ones count towards the action's ``accepted``. Decisions of test
    runs are left alone. Opens its own transaction (or joins the caller's).
    """
    written = {name for name, ids in by_name.items() if ids}
    if not written:
        return 0
    # Most changes write no event an action listens for: one look-up in the catalog says so.
    answering = set(
        Action.objects.filter(Q(accept_event__in=written) | Q(reject_event__in=written))
        .values_list("accept_event", "reject_event")
        .iterator()
    )
    listened = written & {name for pair in answering for name in pair}
    wanted = set(customer_ids)
    names, customers = [], []
    for name in listened:
        for customer_id in by_name[name]:
            if customer_id in wanted:
                names.append(name)
                customers.append(customer_id)
    if not names:
        return 0
    params = {
        "names": names, "customers": customers, "now": now,
        "accepted": Decision.Outcome.ACCEPTED.value, "rejected": Decision.Outcome.REJECTED.value,
        "pending": Decision.Outcome.PENDING.value,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_OUTCOMES, params)
        return cursor.fetchone()[0]
