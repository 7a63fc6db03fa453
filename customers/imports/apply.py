"""Applying one chunk of a validated import, set-based: a statement per kind of change.

Each statement changes rows and writes their timeline entries through
``customers.timeline.insert_cte`` (the same names and properties as the services that make
the same change one at a time), and registers what it wrote; the chunk's transaction then
sends the one signal. A cell the file would use to re-subscribe someone who unsubscribed,
or to grant a consent that was revoked, is not applied: the row's report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from .. import timeline
from ..models import Customer
from .models import CustomerImport, ImportIssue
from .validation import LENGTHS, Plan, _object, _text

SOURCE = "import"
PROFILE = ("external_id", "email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage")
NOT_NULL = {name for name in PROFILE if name != "external_id"}
assert set(LENGTHS) <= set(PROFILE)


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    warned: int = 0


def _events(select: str) -> str:
    """A query of timeline columns (see ``timeline.COLUMNS``) from ``select``'s body."""
    return f"SELECT {select}"


def chunk(customer_import: CustomerImport, plan: Plan, *, low: int, high: int, now: datetime) -> Outcome:
    """Apply the rows on lines ``low`` < line <= ``high``. Call inside a transaction holding
    the import's row lock (the caller moves ``applied_through`` in it)."""
    params = {"low": low, "high": high, "now": now, "actor": customer_import.actor, "source": SOURCE,
              "import": customer_import.pk, "update": plan.update_existing}
    work = customer_import.work_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {work} WHERE line > %(low)s AND line <= %(high)s AND problems = '{{}}'",
                       params)
        valid = cursor.fetchone()[0]
        created = _create(cursor, work, plan, params)
        changed = _update(cursor, work, plan, params) if plan.update_existing else set()
        warned: set[int] = set()
        for position, (_index, topic_id, topic, channel) in enumerate(plan.subscriptions):
            ids, lines = _subscriptions(cursor, customer_import, position, topic_id, topic, channel, params)
            changed |= ids
            warned |= lines
        for position, (_index, spec) in enumerate(plan.consents):
            ids, lines = _consent(cursor, customer_import, position, spec, params)
            changed |= ids
            warned |= lines
    updated = len(changed - created)
    return Outcome(created=len(created), updated=updated, unchanged=valid - len(created) - updated, warned=len(warned))


def _create(cursor, work: str, plan: Plan, params: dict) -> set[int]:
    values = ", ".join(
        (f"w.f_{name}" if name == "external_id" else f"coalesce(w.f_{name}, '')") if name in plan.fields
        else ("NULL" if name == "external_id" else "''")
        for name in PROFILE
    )
    fields = _object([(name, f"CASE WHEN w.f_{name} IS NOT NULL THEN jsonb_build_array(NULL, w.f_{name}) END")
                      for name in PROFILE if name in plan.fields])
    # One pair per mapped attribute (the keys are known): cheaper than unnesting each row's object.
    attributes = _object([(f"attributes.{key}", f"CASE WHEN w.attrs ? {_text(key)} THEN "
                                                  f"jsonb_build_array(NULL, w.attrs -> {_text(key)}) END")
                          for _index, key, _type in plan.attributes])
    rows = _events(f"""w.customer_id, 'customer.created' AS name, '' AS channel,
               jsonb_build_object('fields', jsonb_strip_nulls({fields} || {attributes})) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM src w""")
    cursor.execute(f"""
        WITH src AS (SELECT * FROM {work} WHERE line > %(low)s AND line <= %(high)s AND is_new),
        ins AS (
            INSERT INTO {Customer._meta.db_table}
                ({", ".join(PROFILE)}, id, attributes, created_at, updated_at)
            SELECT {values}, w.customer_id, w.attrs, %(now)s, %(now)s FROM src w
            RETURNING id
        ),
        {timeline.insert_cte(rows)}
        SELECT coalesce((SELECT array_agg(id) FROM ins), '{{}}'), {timeline.summary_sql()}
    """, params)
    ids, summary = cursor.fetchone()
    timeline.written(summary, created=ids)
    return set(ids)


def _update(cursor, work: str, plan: Plan, params: dict) -> set[int]:
    mapped = [name for name in PROFILE if name in plan.fields]
    old = {name: (f"lower(w.o_{name})" if name == "email" else f"w.o_{name}") for name in mapped}
    fields = _object([
        (name, f"CASE WHEN w.f_{name} IS NOT NULL AND w.f_{name} IS DISTINCT FROM {old[name]} "
               f"THEN jsonb_build_array(w.o_{name}, w.f_{name}) END")
        for name in mapped
    ])
    attributes = _object([
        (f"attributes.{key}", f"CASE WHEN w.attrs ? {_text(key)} AND w.o_attributes -> {_text(key)} IS DISTINCT FROM "
                              f"w.attrs -> {_text(key)} THEN jsonb_build_array(w.o_attributes -> {_text(key)}, "
                              f"w.attrs -> {_text(key)}) END")
        for _index, key, _type in plan.attributes])
    olds = ", ".join(f"c.{name} AS o_{name}" for name in mapped)
    sets = ", ".join(f"{name} = CASE WHEN d.changes ? {_text(name)} THEN d.f_{name} ELSE c.{name} END" for name in mapped)
    rows = _events("""d.customer_id, 'customer.updated' AS name, '' AS channel,
               jsonb_build_object('changes', d.changes) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM diff d WHERE d.changes <> '{}'""")
    table = Customer._meta.db_table
    cursor.execute(f"""
        WITH src AS (
            SELECT w.*, {olds + "," if olds else ""} c.attributes AS o_attributes
            FROM {work} w JOIN {table} c ON c.id = w.customer_id
            WHERE w.line > %(low)s AND w.line <= %(high)s AND w.problems = '{{}}' AND NOT w.is_new
            ORDER BY c.id FOR UPDATE OF c
        ),
        diff AS (
            SELECT w.*, jsonb_strip_nulls({fields} || {attributes}) AS changes FROM src w
        ),
        up AS (
            UPDATE {table} c SET {sets + "," if sets else ""}
                attributes = c.attributes || d.attrs, updated_at = %(now)s
            FROM diff d WHERE c.id = d.customer_id AND d.changes <> '{{}}'
            RETURNING c.id
        ),
        {timeline.insert_cte(rows)}
        SELECT coalesce((SELECT array_agg(id) FROM up), '{{}}'),
               coalesce((SELECT array_agg(DISTINCT k) FROM diff, jsonb_object_keys(diff.changes) k), '{{}}'),
               {timeline.summary_sql()}
    """, params)
    ids, fields_changed, summary = cursor.fetchone()
    timeline.written(summary, fields=fields_changed)
    return set(ids)


def _warnings(customer_import: CustomerImport, rows: str, message: str) -> str:
    """A CTE ``warned`` adding ``message`` (SQL, per row of ``rows``) to the rows' report."""
    columns = ", ".join(f"s.c{i}" for i in range(len(customer_import.columns)))
    return f"""warned AS (
        INSERT INTO {ImportIssue._meta.db_table} AS i (customer_import_id, line, kind, reason, "values")
        SELECT %(import)s, k.line, '{ImportIssue.Kind.WARNING.value}', string_agg({message}, '; '),
               (array_agg(to_jsonb(ARRAY[{columns}]::text[])))[1]
        FROM {rows} k JOIN {customer_import.staging_table} s ON s.line = k.line
        GROUP BY k.line
        ON CONFLICT (customer_import_id, line, kind) DO UPDATE SET reason = i.reason || '; ' || EXCLUDED.reason
        RETURNING line
    )"""


def _subscriptions(cursor, customer_import, position: int, topic_id: int, topic: str, channel: str,
                   params: dict) -> tuple[set[int], set[int]]:
    work = customer_import.work_table
    kept_note = ("format('%%s by %%s: kept unsubscribed: unsubscribed on %%s via %%s', k.topic, k.channel, "
                 "to_char(k.previous_at, 'YYYY-MM-DD'), replace(coalesce(nullif(k.previous_source, ''), 'unknown'), '-', ' '))")
    rows = _events("""t.customer_id, 'subscription.changed' AS name, t.channel,
               jsonb_build_object('topic', t.topic, 'channel', t.channel, 'subscribed', t.wanted,
                                  'previous', t.previous, 'source', %(source)s) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM todo t""")
    cursor.execute(f"""
        WITH cells AS (
            SELECT w.line, w.customer_id, %(topic_id)s::bigint AS topic_id, %(topic)s::text AS topic,
                   %(channel)s::text AS channel, w.s{int(position)} AS wanted,
                   s.subscribed AS previous, s.source AS previous_source, s.updated_at AS previous_at
            FROM {work} w
            LEFT JOIN customers_subscription s
                ON s.customer_id = w.customer_id AND s.topic_id = %(topic_id)s AND s.channel = %(channel)s
            WHERE w.line > %(low)s AND w.line <= %(high)s AND w.problems = '{{}}' AND (w.is_new OR %(update)s)
              AND w.s{int(position)} IS NOT NULL
        ),
        kept AS (SELECT * FROM cells WHERE wanted AND previous IS FALSE),
        todo AS (SELECT * FROM cells WHERE previous IS DISTINCT FROM wanted AND NOT (wanted AND previous IS FALSE)),
        up AS (
            INSERT INTO customers_subscription (customer_id, topic_id, channel, subscribed, source, updated_at)
            SELECT customer_id, topic_id, channel, wanted, %(source)s, %(now)s FROM todo
            ON CONFLICT (customer_id, topic_id, channel) DO UPDATE
                SET subscribed = EXCLUDED.subscribed, source = EXCLUDED.source, updated_at = EXCLUDED.updated_at
        ),
        {_warnings(customer_import, "kept", kept_note)},
        {timeline.insert_cte(rows)}
        SELECT coalesce((SELECT array_agg(customer_id) FROM todo), '{{}}'),
               coalesce((SELECT array_agg(line) FROM warned), '{{}}'), {timeline.summary_sql()}
    """, {**params, "topic_id": topic_id, "topic": topic, "channel": channel})
    ids, lines, summary = cursor.fetchone()
    timeline.written(summary)
    return set(ids), set(lines)


def _consent(cursor, customer_import, position: int, spec: dict, params: dict) -> tuple[set[int], set[int]]:
    work = customer_import.work_table
    kept_note = ("format('%%s consent: kept revoked: revoked on %%s via %%s', k.channel, "
                 "to_char(k.previous_at, 'YYYY-MM-DD'), replace(coalesce(nullif(k.previous_source, ''), 'unknown'), '-', ' '))")
    rows = _events("""l.customer_id, CASE WHEN l.granted THEN 'consent.granted' ELSE 'consent.revoked' END AS name,
               l.channel, jsonb_build_object('channel', l.channel, 'source', l.source, 'legal_basis', l.legal_basis,
                                             'consent_id', l.id)
                   || CASE WHEN l.wording <> '' THEN jsonb_build_object('wording', l.wording) ELSE '{}' END AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, l.source AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM ledger l""")
    cursor.execute(f"""
        WITH cells AS (
            SELECT w.line, w.customer_id, %(channel)s::text AS channel, w.k{int(position)} AS wanted,
                   cs.granted AS previous, cs.updated_at AS previous_at, c.source AS previous_source
            FROM {work} w
            LEFT JOIN customers_consentstate cs ON cs.customer_id = w.customer_id AND cs.channel = %(channel)s
            LEFT JOIN customers_consent c ON c.id = cs.consent_id
            WHERE w.line > %(low)s AND w.line <= %(high)s AND w.problems = '{{}}' AND (w.is_new OR %(update)s)
              AND w.k{int(position)} IS NOT NULL
        ),
        kept AS (SELECT * FROM cells WHERE wanted AND previous IS FALSE),
        todo AS (SELECT * FROM cells WHERE previous IS DISTINCT FROM wanted AND NOT (wanted AND previous IS FALSE)),
        ledger AS (
            INSERT INTO customers_consent (customer_id, channel, granted, occurred_at, source, legal_basis,
                                           ip_address, user_agent, wording, form_url, recorded_by)
            SELECT customer_id, channel, wanted, %(now)s, %(consent_source)s, %(legal_basis)s, NULL, '',
                   %(wording)s, '', %(actor)s
            FROM todo
            RETURNING id, customer_id, channel, granted, source, legal_basis, wording
        ),
        state AS (
            INSERT INTO customers_consentstate AS cs (customer_id, channel, granted, updated_at, consent_id)
            SELECT customer_id, channel, granted, %(now)s, id FROM ledger
            ON CONFLICT (customer_id, channel) DO UPDATE
                SET granted = EXCLUDED.granted, updated_at = EXCLUDED.updated_at, consent_id = EXCLUDED.consent_id
                WHERE cs.updated_at <= EXCLUDED.updated_at
        ),
        {_warnings(customer_import, "kept", kept_note)},
        {timeline.insert_cte(rows)}
        SELECT coalesce((SELECT array_agg(customer_id) FROM todo), '{{}}'),
               coalesce((SELECT array_agg(line) FROM warned), '{{}}'), {timeline.summary_sql()}
    """, {**params, "channel": spec["channel"], "consent_source": spec["source"], "legal_basis": spec["legal_basis"],
          "wording": spec.get("wording", "")})
    ids, lines, summary = cursor.fetchone()
    timeline.written(summary)
    return set(ids), set(lines)
