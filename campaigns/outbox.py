"""The Delivery outbox: writing a campaign's audience snapshot.

The snapshot writes each Delivery row in its first status (planned, held for a staged
send's winner, or suppressed with a reason) and counts it. Every status change after that
goes through :func:`campaigns.transitions.deliveries_transition`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from django.db import connection

from .models import Campaign, DeliveryStatus
from .policy import RECENT_SQL, ZONES_SQL, PolicySettings, defer_sql, joins_sql, local_zone_sql, reason_sql
from .transitions import bump_ctes, publish_after_commit


# --- Launch: the audience snapshot --------------------------------------------------------

# A campaign's audience: members of its segments, minus members of its exclusions.
AUDIENCE_SQL = """
    audience AS (
        SELECT DISTINCT m.customer_id FROM segments_segmentmembership m WHERE m.segment_id = ANY(%(segments)s)
        EXCEPT
        SELECT m.customer_id FROM segments_segmentmembership m WHERE m.segment_id = ANY(%(excluded)s)
    )"""


def audience_attribute_types(campaign: Campaign, keys: Iterable[str]) -> list[tuple[str, str | None, int, object]]:
    """For each of ``keys``, the JSON types ``attributes.<key>`` has across the campaign's
    audience, in one query: (key, type or None when missing, customers, one customer's value)."""
    keys = sorted(set(keys))
    if not keys:
        return []
    params = {
        "segments": list(campaign.segments.values_list("pk", flat=True)),
        "excluded": list(campaign.exclude_segments.values_list("pk", flat=True)),
        "keys": keys,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH {AUDIENCE_SQL},
            typed AS (
                SELECT k.key, jsonb_typeof(c.attributes -> k.key) AS type, count(*) AS customers, min(c.id) AS example
                FROM audience a JOIN customers_customer c ON c.id = a.customer_id
                CROSS JOIN unnest(%(keys)s::text[]) AS k(key)
                GROUP BY 1, 2
            )
            SELECT typed.key, typed.type, typed.customers, c.attributes -> typed.key
            FROM typed JOIN customers_customer c ON c.id = typed.example
            ORDER BY 1, 2
            """,
            params,
        )
        # Django's cursor hands jsonb back as text.
        return [(key, kind, customers, json.loads(value) if isinstance(value, str) else value)
                for key, kind, customers, value in cursor.fetchall()]


def _bucket(salt: str, modulo: int) -> str:
    return f"(abs(hashtext(%(campaign_id)s::text || '{salt}' || a.customer_id::text)::bigint) %% {modulo})"


# Each candidate (customer, channel, …) of ``cand`` judged by the send policy, with what routing
# reads: an explicit subscription, engagement (the CTE ``engaged``) and the customer's zone.
JUDGED_SQL = f"""judged AS (
        SELECT cand.*, {reason_sql(cap_counts="recent.sent")} AS reason, sub.subscribed IS TRUE AS explicit,
               coalesce(e.score, 0) AS score, t.is_transactional, {local_zone_sql()} AS zone
        FROM cand {joins_sql()}
        LEFT JOIN recent ON recent.customer_id = cand.customer_id
        LEFT JOIN engaged e ON e.customer_id = cand.customer_id AND e.channel = cand.channel
    )"""


def snapshot_sql(campaign: Campaign, *, variants: list[tuple[int, int]], test_share: int | None) -> tuple[str, str, dict]:
    """The one INSERT … SELECT that writes a campaign's Delivery rows, with routing and policy,
    in two parts: the routing CTEs, ending in ``j`` (one row per candidate customer × channel,
    ``choice = 1`` for the channel picked), and the INSERT with its counters that follows them.

    ``variants`` is [(variant id, weight)]; ``test_share`` the staged test's percentage.
    """
    policy = PolicySettings.current()
    channels = list(campaign.channels)
    total = sum(weight for _, weight in variants)
    # Weighted variant choice, by a stable hash of (campaign, customer).
    cases, upper = [], 0
    for variant_id, weight in variants:
        upper += weight
        cases.append(f"WHEN {_bucket(':v:', total)} < {upper} THEN {int(variant_id)}")
    variant_expr = f"CASE {' '.join(cases)} END"
    staged = bool(test_share)
    in_test = f"({_bucket(':t:', 100)} < %(test_share)s)" if staged else "true"
    if campaign.schedule == Campaign.Schedule.LOCAL and campaign.send_at_local:
        # The same wall-clock time in each customer's zone; already past there means now.
        base = "greatest(%(now)s::timestamptz, %(send_at_local)s::timestamp AT TIME ZONE j.zone)"
    else:
        base = "%(start)s::timestamptz"
    params = {
        **policy.params(),
        "campaign_id": campaign.pk,
        "topic_id": campaign.topic_id,
        "channels": channels,
        "segments": list(campaign.segments.values_list("pk", flat=True)),
        "excluded": list(campaign.exclude_segments.values_list("pk", flat=True)),
        "test_share": test_share or 0,
        "now": None,  # set by the caller
        "start": None,
        "send_at_local": campaign.send_at_local.replace(tzinfo=None) if campaign.send_at_local else None,
        "planned": DeliveryStatus.PLANNED,
        "held": DeliveryStatus.HELD,
        "suppressed": DeliveryStatus.SUPPRESSED,
    }
    if campaign.strategy == Campaign.Strategy.ALL:
        pick = "WHERE true"
        routed = "'all'"
        chosen_channel = "j.channel"
    else:
        # One channel per customer: an explicit subscription, else engagement, else fallback
        # order; in a channel test, customers without an explicit choice are split at random.
        pick = "WHERE j.choice = 1"
        routed = "j.routed_by"
        chosen_channel = "j.channel"
    test_channels = staged and campaign.test_channels and campaign.strategy == Campaign.Strategy.PREFERRED
    split = "abs(hashtext(%(campaign_id)s::text || ':c:' || cand.customer_id::text || cand.channel)::bigint)"
    routing = f"""
    WITH {ZONES_SQL}, {RECENT_SQL},
    {AUDIENCE_SQL},
    engaged AS (
        SELECT d.customer_id, d.channel, count(d.opened_at) + count(d.clicked_at) AS score
        FROM campaigns_delivery d
        WHERE d.opened_at IS NOT NULL AND d.created_at > %(now)s - interval '180 days'
        GROUP BY 1, 2
    ),
    cand AS (
        SELECT a.customer_id, ch.channel, ch.pos, %(topic_id)s::bigint AS topic_id, {in_test} AS in_test,
               {variant_expr} AS variant_id
        FROM audience a CROSS JOIN unnest(%(channels)s::text[]) WITH ORDINALITY AS ch(channel, pos)
    ),
    {JUDGED_SQL},
    ranked AS (
        SELECT judged.*,
               count(*) FILTER (WHERE explicit AND reason IS NULL) OVER w AS explicit_ok,
               count(*) FILTER (WHERE reason IS NULL) OVER w AS ok
        FROM judged WINDOW w AS (PARTITION BY customer_id)
    ),
    j AS (
        SELECT cand.*,
               CASE WHEN cand.reason IS NOT NULL THEN 'fallback'
                    WHEN cand.explicit_ok = 1 AND cand.explicit THEN 'explicit'
                    WHEN {'cand.in_test AND cand.explicit_ok = 0 AND cand.ok > 1' if test_channels else 'false'} THEN 'test'
                    WHEN cand.score > 0 THEN 'engagement'
                    ELSE 'fallback' END AS routed_by,
               row_number() OVER (
                   PARTITION BY cand.customer_id
                   ORDER BY cand.reason IS NULL DESC, cand.explicit DESC,
                            {f'CASE WHEN cand.in_test AND cand.explicit_ok = 0 THEN {split} END' if test_channels else 'NULL'},
                            cand.score DESC, cand.pos
               ) AS choice
        FROM ranked cand
    )"""
    insert = f"""
    ins AS (
        INSERT INTO campaigns_delivery
            (campaign_id, variant_id, customer_id, topic_id, channel, status, reason, test_group, routed_by, due_at)
        SELECT %(campaign_id)s, CASE WHEN j.in_test THEN j.variant_id END, j.customer_id, j.topic_id, {chosen_channel},
               CASE WHEN j.reason IS NOT NULL THEN %(suppressed)s WHEN j.in_test THEN %(planned)s ELSE %(held)s END,
               coalesce(j.reason, ''), {'j.in_test' if staged else 'false'}, {routed},
               CASE WHEN j.is_transactional THEN {base}
                    ELSE {defer_sql(base, 'j.zone')} END
        FROM j {pick}
        ON CONFLICT (campaign_id, customer_id, channel) WHERE campaign_id IS NOT NULL DO NOTHING
        RETURNING id, customer_id, channel, variant_id, status, reason
    ),
    {bump_ctes("""SELECT %(campaign_id)s::bigint AS campaign_id, 0::bigint AS journey_id, channel,
        coalesce(variant_id, 0) AS variant_id,
        CASE WHEN status = %(suppressed)s THEN status || '.' || reason ELSE %(planned)s END AS metric,
        %(now)s::timestamptz AS at, count(*) AS n FROM ins GROUP BY 3, 4, 5""")}
    SELECT count(*), count(DISTINCT customer_id), count(*) FILTER (WHERE status <> %(suppressed)s) FROM ins
    """
    return routing, insert, params


def snapshot_write(campaign: Campaign, *, now: datetime, start: datetime) -> tuple[int, int, int]:
    """Write the Delivery rows for ``campaign`` (call holding its row lock).

    Returns (rows written, customers, rows to send). Safe to run twice: existing rows are kept.
    """
    variants = list(campaign.variants.order_by("key").values_list("pk", "weight"))
    routing, insert, params = snapshot_sql(campaign, variants=variants, test_share=campaign.test_percent)
    params.update(now=now, start=start)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(f"{routing},{insert}", params)
        written, customers, to_send = cursor.fetchone()
    publish_after_commit([(campaign.pk, 0, written)])
    return written, customers, to_send


def predicted(campaign: Campaign, *, now: datetime) -> dict:
    """What a launch would write now, without writing: rows per channel and suppressions by reason."""
    variants = list(campaign.variants.order_by("key").values_list("pk", "weight")) or [(0, 1)]
    routing, _, params = snapshot_sql(campaign, variants=variants, test_share=campaign.test_percent)
    params.update(now=now, start=now)
    pick = "WHERE j.choice = 1" if campaign.strategy == Campaign.Strategy.PREFERRED else ""
    with connection.cursor() as cursor:
        cursor.execute(f"""{routing}
    SELECT j.channel, coalesce(j.reason, ''), count(*) FROM j {pick} GROUP BY 1, 2
    """, params)
        rows = cursor.fetchall()
    result: dict = {"channels": {}, "suppressed": {}, "to_send": 0}
    for channel, reason, count in rows:
        per = result["channels"].setdefault(channel, {"send": 0, "suppressed": 0})
        if reason:
            per["suppressed"] += count
            result["suppressed"][reason] = result["suppressed"].get(reason, 0) + count
        else:
            per["send"] += count
            result["to_send"] += count
    return result


def json_rows(rows: list[dict]) -> str:
    return json.dumps(rows, default=str)


# --- Journey steps: one message per customer, through the same policy ---------------------------


def journey_deliveries_write(
    *, journey_id: int, node_id: str, topic_id: int, channels: list[str], content: dict,
    rows: list[tuple[int, str]], now: datetime, sandbox: bool = False,
) -> dict[str, tuple[int, str, str]]:
    """Write one Delivery per (customer id, idempotency key) of a journey's send step, in one
    statement: the channel is the only one in ``channels``, or (for the customer's preferred
    channel) chosen like a ``preferred`` campaign: an explicit subscription, then engagement,
    then the order of ``channels``. The send policy decides each row: planned (due now, or
    deferred by quiet hours) or suppressed with its reason.

    A key already written is kept as it was (a retried step sends nothing twice). ``sandbox``
    pins the sandbox provider and leaves the counters alone (test mode). Returns {key: (delivery id, channel, status)}
    for every key, old or new.
    """
    if not rows:
        return {}
    policy = PolicySettings.current()
    params = {
        **policy.params(),
        "rows": json_rows([{"customer_id": customer_id, "key": key} for customer_id, key in rows]),
        "channels": channels,
        "topic_id": topic_id,
        "journey_id": journey_id,
        "node": node_id,
        "payload": json.dumps(content),
        "now": now,
        "planned": DeliveryStatus.PLANNED,
        "suppressed": DeliveryStatus.SUPPRESSED,
        "provider": "sandbox" if sandbox else "",
        # A test run's messages are not the journey's results.
        "counted": not sandbox,
    }
    sql = f"""
    WITH {ZONES_SQL}, {RECENT_SQL},
    asked AS (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(customer_id bigint, key text)),
    fresh AS (
        SELECT asked.* FROM asked
        WHERE NOT EXISTS (SELECT 1 FROM campaigns_delivery d WHERE d.idempotency_key = asked.key)
    ),
    engaged AS (
        SELECT d.customer_id, d.channel, count(d.opened_at) + count(d.clicked_at) AS score
        FROM campaigns_delivery d
        WHERE d.customer_id IN (SELECT customer_id FROM fresh)
          AND d.opened_at IS NOT NULL AND d.created_at > %(now)s - interval '180 days'
        GROUP BY 1, 2
    ),
    cand AS (
        SELECT fresh.customer_id, fresh.key, ch.channel, ch.pos, %(topic_id)s::bigint AS topic_id
        FROM fresh CROSS JOIN unnest(%(channels)s::text[]) WITH ORDINALITY AS ch(channel, pos)
    ),
    {JUDGED_SQL},
    j AS (
        SELECT judged.*,
               CASE WHEN judged.reason IS NOT NULL THEN 'fallback' WHEN judged.explicit THEN 'explicit'
                    WHEN judged.score > 0 THEN 'engagement' ELSE 'fallback' END AS routed_by,
               row_number() OVER (
                   PARTITION BY judged.key
                   ORDER BY judged.reason IS NULL DESC, judged.explicit DESC, judged.score DESC, judged.pos
               ) AS choice
        FROM judged
    ),
    ins AS (
        INSERT INTO campaigns_delivery
            (journey_id, journey_step, customer_id, topic_id, channel, status, reason, routed_by, due_at,
             payload, idempotency_key, provider)
        SELECT %(journey_id)s, %(node)s, j.customer_id, j.topic_id, j.channel,
               CASE WHEN j.reason IS NOT NULL THEN %(suppressed)s ELSE %(planned)s END,
               coalesce(j.reason, ''), CASE WHEN cardinality(%(channels)s::text[]) = 1 THEN 'explicit' ELSE j.routed_by END,
               CASE WHEN j.is_transactional THEN %(now)s::timestamptz ELSE {defer_sql('%(now)s::timestamptz', 'j.zone')} END,
               %(payload)s::jsonb, j.key, %(provider)s
        FROM j WHERE j.choice = 1
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, idempotency_key, channel, status, reason
    ),
    {bump_ctes("""SELECT 0::bigint AS campaign_id, %(journey_id)s::bigint AS journey_id, channel, 0::bigint AS variant_id,
        CASE WHEN status = %(suppressed)s THEN status || '.' || reason ELSE %(planned)s END AS metric,
        %(now)s::timestamptz AS at, count(*) AS n FROM ins WHERE %(counted)s GROUP BY 3, 5""")}
    SELECT idempotency_key, id, channel, status FROM ins
    UNION ALL
    SELECT d.idempotency_key, d.id, d.channel, d.status FROM campaigns_delivery d
    WHERE d.idempotency_key IN (SELECT key FROM asked) AND d.idempotency_key NOT IN (SELECT key FROM fresh)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        result = {key: (delivery_id, channel, status) for key, delivery_id, channel, status in cursor.fetchall()}
    if result and not sandbox:
        publish_after_commit([(0, journey_id, len(result))])
    return result
