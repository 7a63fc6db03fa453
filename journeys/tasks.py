"""django-q2 entry points: thin, take ids or nothing, safe to run twice."""

from __future__ import annotations

import time

from django.conf import settings
from django.utils import timezone


def tick() -> dict:
    """Every minute: run due wake-ups (claiming batch after batch and sleeping until the next
    one falls due, for most of the minute, so a short wait ends on time), let date-triggered
    customers in, and send due webhook calls."""
    from . import demo, executor, triggers, webhooks

    started = time.monotonic()
    demo.simulate()
    budget = settings.JOURNEY_TICK_SECONDS
    result = {"entered": triggers.date_triggers_run(), "woken": 0, "webhooks": 0}
    while True:
        result["woken"] += executor.wake_all(budget_seconds=max(1.0, budget - (time.monotonic() - started)))
        result["webhooks"] += webhooks.send_due().get("sent", 0)
        left = budget - (time.monotonic() - started)
        if left <= 0:
            return result
        upcoming = executor.next_due()
        pause = 1.0 if upcoming is None else (upcoming - timezone.now()).total_seconds()
        time.sleep(min(max(pause, 0.05), 1.0, left))


def wake() -> int:
    from . import executor

    return executor.wake_all()


def react(change: dict) -> None:
    """A change the real-time receiver could not handle, retried in the background."""
    from customers.timeline import Change

    from . import receivers

    rebuilt = Change(
        customer_ids=frozenset(pk for ids in change["by_name"].values() for pk in ids),
        by_name={name: frozenset(ids) for name, ids in change["by_name"].items()},
        event_ids={name: tuple(span) for name, span in change.get("event_ids", {}).items()},
        memberships={(name, segment): frozenset(ids) for name, segment, ids in change.get("memberships", [])},
    )
    receivers.react(rebuilt, {name for name in rebuilt.names if not name.startswith("journey.")})


def webhooks_send() -> dict:
    from . import webhooks

    return webhooks.send_pending(budget_seconds=40)
