"""Date triggers: customers whose date attribute (shifted by the trigger's offset) is today
in their own timezone enter once the local time of day has come. The run key is the date,
so a yearly date (a birthday, a renewal) lets a customer in once a year and a sweep that
runs twice lets nobody in twice."""

from __future__ import annotations

from django.db import connection, transaction
from django.utils import timezone

from campaigns.policy import ZONES_SQL, local_zone_sql

from . import executor
from . import graph as graphs
from .models import Journey
from .services import date_match_sql, date_params


def date_triggers_run(*, now=None) -> int:
    now = now or timezone.now()
    entered = 0
    live = Journey.objects.filter(status=Journey.Status.LIVE, live_version__isnull=False).select_related("live_version")
    for journey in live:
        config = (graphs.trigger(journey.live_version.graph) or {}).get("config") or {}
        if config.get("kind") != "date":
            continue
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH {ZONES_SQL}
                SELECT c.id, left(c.attributes ->> %(attr)s, 10) FROM customers_customer c
                WHERE c.attributes ->> %(attr)s ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' AND {date_match_sql()}
                  AND (%(now)s::timestamptz AT TIME ZONE {local_zone_sql()})::time >= %(at)s::time
                  AND NOT EXISTS (SELECT 1 FROM journeys_enrollment e WHERE e.journey_id = %(journey)s
                                  AND e.customer_id = c.id AND e.run_key = left(c.attributes ->> %(attr)s, 10))
                """,
                {**date_params(config), "now": now, "at": config.get("at", "09:00"), "journey": journey.pk},
            )
            entries = [executor.Entry(pk, {"date": day}, day) for pk, day in cursor.fetchall()]
        for start in range(0, len(entries), 5000):
            with transaction.atomic():
                entered += len(executor.enter(journey=journey, version=journey.live_version,
                                              entries=entries[start:start + 5000], now=now, run_keys=True))
    return entered
