"""Validating a staged file in SQL: the typed work table and the rejected rows.

One ``CREATE TABLE … AS SELECT`` reads the staging table once and writes, per row, the
normalised values of the mapped columns and the problems found (regular expressions, the
server's own ``pg_timezone_names``); then window functions find rows that repeat a key
of an earlier row, joins match existing customers and find emails or external ids that
belong to someone else, and new customers get their ids from the customers' sequence.
Rows with a problem go to the report with their original values; the others are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

from ..models import Customer, Topic
from . import staging
from .models import CustomerImport, ImportIssue

# What each profile field accepts, as (SQL condition on the trimmed value r, its value, the problem).
EMAIL_RE = r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
PHONE_RE = r"^\+[1-9][0-9]{6,14}$"
LOCALE_RE = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
NUMBER_RE = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?$"
DATE_RE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
TRUE_WORDS = ("yes", "y", "true", "1", "subscribed", "granted")
FALSE_WORDS = ("no", "n", "false", "0", "unsubscribed", "revoked")
LENGTHS = {"external_id": 255, "first_name": 150, "last_name": 150, "lifecycle_stage": 64}


def _text(value: str) -> str:
    """A SQL string literal of a value we chose ourselves (column names come from the file:
    they are escaped here and never part of an identifier)."""
    return "'" + value.replace("'", "''").replace("%", "%%") + "'"


def _words(words) -> str:
    return "(" + ", ".join(_text(w) for w in words) + ")"


@dataclass
class Plan:
    """The mapping as the SQL needs it: which raw column feeds each target."""

    match_on: str
    update_existing: bool
    fields: dict[str, int] = field(default_factory=dict)            # profile field → column index
    attributes: list[tuple[int, str, str]] = field(default_factory=list)  # (index, key, type)
    subscriptions: list[tuple[int, int, str, str]] = field(default_factory=list)  # (index, topic id, key, channel)
    consents: list[tuple[int, dict]] = field(default_factory=list)  # (index, spec)
    names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, customer_import: CustomerImport) -> Plan:
        plan = cls(match_on=customer_import.match_on, update_existing=customer_import.update_existing,
                   names=list(customer_import.columns))
        topics = dict(Topic.objects.values_list("key", "pk"))
        for index, name in enumerate(customer_import.columns):
            spec = customer_import.mapping.get(name) or {"to": "skip"}
            kind = spec["to"]
            if kind == "attribute":
                plan.attributes.append((index, spec["key"], spec["type"]))
            elif kind == "subscription":
                plan.subscriptions.append((index, topics[spec["topic"]], spec["topic"], spec["channel"]))
            elif kind == "consent":
                plan.consents.append((index, spec))
            elif kind != "skip":
                plan.fields[kind] = index
        return plan


def _raw(index: int) -> str:
    return f"r{int(index)}"


def _profile(name: str, column: str, r: str) -> tuple[str, str, str]:
    """(valid, value, problem) SQL for a profile field, on the trimmed raw value ``r``."""
    label = _text(column)
    if name == "email":
        return (f"(length({r}) <= 254 AND lower({r}) ~ {_text(EMAIL_RE)})", f"lower({r})",
                f"format('%%s: ''%%s'' is not an email address', {label}, {r})")
    if name == "phone":
        digits = f"regexp_replace({r}, '[[:space:]().-]', '', 'g')"
        return (f"({digits} ~ {_text(PHONE_RE)})", digits,
                f"format('%%s: ''%%s'' is not an E.164 phone number such as +14155550123 "
                f"(after removing spaces, dashes and brackets)', {label}, {r})")
    if name == "timezone":
        return (f"({r} IN (SELECT name FROM tz))", r,
                f"format('%%s: ''%%s'' is not a time zone name such as Europe/Paris', {label}, {r})")
    if name == "locale":
        return (f"(length({r}) <= 35 AND {r} ~ {_text(LOCALE_RE)})", r,
                f"format('%%s: ''%%s'' is not a locale such as en, en-GB or pt_BR', {label}, {r})")
    limit = LENGTHS[name]
    return (f"(length({r}) <= {limit})", r,
            f"format('%%s: longer than {limit} characters', {label})")


def _attribute(kind: str, column: str, r: str) -> tuple[str, str, str]:
    label = _text(column)
    if kind == "number":
        return (f"({r} ~ {_text(NUMBER_RE)})", f"to_jsonb({r}::numeric)",
                f"format('%%s: ''%%s'' is not a number', {label}, {r})")
    if kind == "boolean":
        words = TRUE_WORDS[:4] + FALSE_WORDS[:4]
        return (f"(lower({r}) IN {_words(words)})", f"to_jsonb(lower({r}) IN {_words(TRUE_WORDS[:4])})",
                f"format('%%s: ''%%s'' is not yes/no, true/false or 1/0', {label}, {r})")
    if kind == "date":
        # The pattern, then the day within its month (PostgreSQL 15 has no safe cast to test).
        last_day = (f"extract(day from make_date(substr({r}, 1, 4)::int, substr({r}, 6, 2)::int, 1)"
                    f" + interval '1 month' - interval '1 day')")
        valid = (f"(CASE WHEN {r} ~ {_text(DATE_RE)} THEN substr({r}, 9, 2) <= '28' "
                 f"OR substr({r}, 9, 2)::int <= {last_day} ELSE false END)")
        return (valid, f"to_jsonb({r})",
                f"format('%%s: ''%%s'' is not a date as YYYY-MM-DD', {label}, {r})")
    return ("true", f"to_jsonb({r})", "NULL")


def _choice(column: str, r: str, true_words, false_words, what: str) -> tuple[str, str, str]:
    return (f"(lower({r}) IN {_words((*true_words, *false_words))})", f"(lower({r}) IN {_words(true_words)})",
            f"format('%%s: ''%%s'' is not {what}', {_text(column)}, {r})")


def _object(pairs: list[tuple[str, str]]) -> str:
    """``jsonb_build_object`` of many pairs (a function takes at most 100 arguments)."""
    if not pairs:
        return "'{}'::jsonb"
    groups = [pairs[i:i + 40] for i in range(0, len(pairs), 40)]
    return " || ".join(
        "jsonb_build_object(" + ", ".join(f"{_text(k)}, {v}" for k, v in group) + ")" for group in groups
    )


def build(customer_import: CustomerImport) -> int:
    """Create the work table of ``customer_import`` and report its rejected rows; returns how
    many were rejected. Idempotent (the work table is made anew). Call inside a transaction."""
    plan = Plan.of(customer_import)
    work, stage = customer_import.work_table, customer_import.staging_table
    names = plan.names
    used = sorted({*plan.fields.values(), *(a[0] for a in plan.attributes), *(s[0] for s in plan.subscriptions),
                   *(c[0] for c in plan.consents)})
    raw = ", ".join(f"nullif(btrim({staging.column(i)}), '') AS {_raw(i)}" for i in used)
    select, problems, attributes = ["n.line"], [], []

    flags: list[str] = []

    def checked(valid: str, value: str, problem: str, r: str) -> tuple[str, str]:
        """The value when valid, the problem when not; each check runs once per row (its
        result is a column of the middle query)."""
        if valid == "true":
            return f"CASE WHEN {r} IS NOT NULL THEN {value} END", "NULL"
        flag = f"ok{len(flags)}"
        flags.append(f"{r} IS NULL OR {valid} AS {flag}")
        return f"CASE WHEN {r} IS NOT NULL AND {flag} THEN {value} END", f"CASE WHEN NOT {flag} THEN {problem} END"

    for name, index in plan.fields.items():
        r = _raw(index)
        value, problem = checked(*_profile(name, names[index], r), r)
        select.append(f"{value} AS f_{name}")
        problems.append(problem)
        if name == plan.match_on:
            select.append(f"{value} AS key")
    key_column = names[plan.fields[plan.match_on]]
    problems.append(f"CASE WHEN {_raw(plan.fields[plan.match_on])} IS NULL THEN "
                    f"format('%%s: empty; rows are matched by {plan.match_on}', {_text(key_column)}) END")
    for index, key, kind in plan.attributes:
        r = _raw(index)
        value, problem = checked(*_attribute(kind, names[index], r), r)
        attributes.append((key, value))
        if kind != "text":
            problems.append(problem)
    select.append(f"jsonb_strip_nulls({_object(attributes)}) AS attrs")
    for position, (index, *_rest) in enumerate(plan.subscriptions):
        r = _raw(index)
        value, problem = checked(*_choice(names[index], r, TRUE_WORDS[:5], FALSE_WORDS[:5],
                                          "yes/no, true/false, 1/0 or subscribed/unsubscribed"), r)
        select.append(f"{value} AS s{position}")
        problems.append(problem)
    for position, (index, _spec) in enumerate(plan.consents):
        r = _raw(index)
        true_words, false_words = (*TRUE_WORDS[:4], "granted"), (*FALSE_WORDS[:4], "revoked")
        value, problem = checked(*_choice(names[index], r, true_words, false_words,
                                          "granted/revoked, yes/no, true/false or 1/0"), r)
        select.append(f"{value} AS k{position}")
        problems.append(problem)
    problem_list = ", ".join(problems) if problems else "NULL"
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(f"DROP TABLE IF EXISTS {work}")
        cursor.execute(f"""
            CREATE UNLOGGED TABLE {work} AS
            WITH tz AS MATERIALIZED (SELECT name FROM pg_timezone_names)
            SELECT {", ".join(select)},
                   array_remove(ARRAY[{problem_list}]::text[], NULL) AS problems,
                   NULL::bigint AS customer_id, false AS is_new
            FROM (SELECT *, {", ".join(flags) or "true AS ok"} FROM (SELECT line, {raw} FROM {stage}) r) n
        """, [])
        _duplicates(cursor, work, "key", key_column)
        for name in ("email", "external_id"):
            if name in plan.fields and name != plan.match_on:
                _duplicates(cursor, work, f"f_{name}", names[plan.fields[name]])
        _match(cursor, work, plan, key_column)
        _conflicts(cursor, work, plan, names)
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Customer._meta.db_table])
        sequence = cursor.fetchone()[0]
        cursor.execute(f"""
            UPDATE {work} SET customer_id = nextval(%s::regclass), is_new = true
            WHERE customer_id IS NULL AND problems = '{{}}'
        """, [sequence])
        cursor.execute(f"ALTER TABLE {work} ADD PRIMARY KEY (line)")
        cursor.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {stage}_line ON {stage} (line)")
        # Without statistics the chunk statements join the work table by nested loops over
        # whole tables (minutes per chunk instead of a second).
        cursor.execute(f"ANALYZE {work}")
        columns = ", ".join(staging.column(i) for i in range(len(names)))
        cursor.execute(f"""
            INSERT INTO {ImportIssue._meta.db_table} (customer_import_id, line, kind, reason, "values")
            SELECT %s, w.line, %s, array_to_string(w.problems, '; '), to_jsonb(ARRAY[{columns}]::text[])
            FROM {work} w JOIN {stage} s ON s.line = w.line
            WHERE w.problems <> '{{}}'
            ON CONFLICT DO NOTHING
        """, [customer_import.pk, ImportIssue.Kind.REJECTED])
        cursor.execute(f"SELECT count(*) FROM {work} WHERE problems <> '{{}}'")
        return cursor.fetchone()[0]


def _duplicates(cursor, work: str, column: str, label: str) -> None:
    """A row repeating the value of an earlier (valid) row is rejected, naming that row."""
    cursor.execute(f"""
        UPDATE {work} w SET problems = w.problems || format('%%s: duplicate of line %%s', %s::text, d.first)
        FROM (SELECT line, min(line) OVER (PARTITION BY {column}) AS first
              FROM {work} WHERE {column} IS NOT NULL AND problems = '{{}}') d
        WHERE w.line = d.line AND d.first <> d.line
    """, [label])


def _match(cursor, work: str, plan: Plan, label: str) -> None:
    table = Customer._meta.db_table
    if plan.match_on == "external_id":
        cursor.execute(f"""UPDATE {work} w SET customer_id = c.id FROM {table} c
                           WHERE c.external_id = w.key AND w.problems = '{{}}'""")
    elif plan.match_on == "email":
        cursor.execute(f"""UPDATE {work} w SET customer_id = c.id FROM {table} c
                           WHERE lower(c.email) = w.key AND c.email <> '' AND w.problems = '{{}}'""")
    else:
        # A number is no unique key: one that several customers share cannot say which.
        cursor.execute(f"""
            UPDATE {work} w SET
                customer_id = CASE WHEN m.n = 1 THEN m.id END,
                problems = CASE WHEN m.n = 1 THEN w.problems ELSE w.problems || format(
                    '%%s: %%s belongs to %%s customers; match by external id or email instead', %s::text, w.key, m.n) END
            FROM (SELECT c.phone, min(c.id) AS id, count(*) AS n FROM {table} c
                  WHERE c.phone <> '' AND c.phone IN (SELECT key FROM {work}) GROUP BY c.phone) m
            WHERE m.phone = w.key AND w.problems = '{{}}'
        """, [label])


def _conflicts(cursor, work: str, plan: Plan, names: list[str]) -> None:
    """Rows that would give a customer an email or external id another customer has."""
    table = Customer._meta.db_table
    applied = "w.problems = '{}' AND (w.customer_id IS NULL OR %(update)s)"
    if "email" in plan.fields and plan.match_on != "email":
        cursor.execute(f"""
            UPDATE {work} w SET problems = w.problems || format(
                '%%s: %%s already belongs to another customer (id %%s)', %(label)s::text, w.f_email, c.id)
            FROM {table} c
            WHERE lower(c.email) = w.f_email AND c.email <> '' AND c.id IS DISTINCT FROM w.customer_id AND {applied}
        """, {"label": names[plan.fields["email"]], "update": plan.update_existing})
    if "external_id" in plan.fields and plan.match_on != "external_id":
        cursor.execute(f"""
            UPDATE {work} w SET problems = w.problems || format(
                '%%s: %%s already belongs to another customer (id %%s)', %(label)s::text, w.f_external_id, c.id)
            FROM {table} c
            WHERE c.external_id = w.f_external_id AND c.id IS DISTINCT FROM w.customer_id AND {applied}
        """, {"label": names[plan.fields["external_id"]], "update": plan.update_existing})
        # A customer keeps the external id the CRM gave them: the row is someone else.
        cursor.execute(f"""
            UPDATE {work} w SET problems = w.problems || format(
                '%%s: the customer with this %%s has external id %%s, not %%s', %(label)s::text,
                %(match)s::text, c.external_id, w.f_external_id)
            FROM {table} c
            WHERE c.id = w.customer_id AND c.external_id IS NOT NULL AND w.f_external_id IS NOT NULL
              AND c.external_id <> w.f_external_id AND {applied}
        """, {"label": names[plan.fields["external_id"]], "match": plan.match_on, "update": plan.update_existing})
