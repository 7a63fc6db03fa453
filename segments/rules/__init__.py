"""The rule language: validation, compilation to one SQL query, and per-customer explanation.

A rule tree is JSON (see the README, "Rule language")::

    {"all": [
      {"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
      {"event": "message.opened", "where": [{"prop": "channel", "op": "eq", "value": "email"}],
       "within_days": 21, "count": {"op": "eq", "value": 0}},
      {"any": [{"subscribed": {"topic": "coupons", "channel": "sms"}}, {"not": {"segment": 12}}]},
      {"reachable": "sms"}
    ]}

The package, by subject:

- ``language``: the vocabulary (fields, operators, limits), :class:`RuleError`, ``leaves`` and
  ``dependencies`` (what a tree reads, so a change re-evaluates only the segments it can affect);
- ``validate``: returns a normalised tree (topic keys resolved to ids, counts filled in) or
  raises :class:`RuleError` naming every problem by its path in the tree;
- ``compile``: turns a normalised tree into one SQL query over ``customers_customer c``;
  behaviour rules become semi-joins (``c.id IN (SELECT customer_id … GROUP BY … HAVING …)``),
  which PostgreSQL runs as hash joins over the whole customer table, so a full evaluation is
  one scan of each table it needs;
- ``windows``: the customers a relative time window may have moved since the last pass;
- ``explain``: every condition of a tree evaluated for one customer, and a tree in words.
"""

from .compile import compile_event_filter, compile_query
from .explain import describe, explain_query, explain_tree
from .language import (
    BOOL_OPS,
    BUILTIN_FIELDS,
    COUNT_OPS,
    DATE_FIELDS,
    DATE_OPS,
    ISO_DATE,
    NUMBER_OPS,
    TEXT_OPS,
    Dependencies,
    RuleError,
    dependencies,
    leaves,
)
from .validate import validate
from .windows import window_crossings_query

__all__ = [
    "BOOL_OPS", "BUILTIN_FIELDS", "COUNT_OPS", "DATE_FIELDS", "DATE_OPS", "ISO_DATE", "NUMBER_OPS", "TEXT_OPS",
    "Dependencies", "RuleError", "compile_event_filter", "compile_query", "dependencies", "describe", "explain_query", "explain_tree",
    "leaves", "validate", "window_crossings_query",
]
