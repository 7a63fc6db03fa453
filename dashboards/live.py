"""The fragments a live dashboard receives: the same partials the pages render, marked
out-of-band, plus the chart figures as JSON; and the counts a journey's live map receives.

Rendered once per group per push interval in each process and shared by every socket
watching it, so 200 open dashboards cost one render, not 200.
"""

from __future__ import annotations

import asyncio
import json
import time

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from campaigns.models import Campaign
from journeys import queries as journey_queries
from journeys.models import Journey

from . import charts, queries


def overview_context(*, oob: bool = False) -> dict:
    overview = queries.overview()
    return {
        "overview": overview,
        "ingest_chart": charts.ingest_series(overview.ingest_x, overview.ingest_y),
        "oob": oob,
    }


def campaign_context(campaign: Campaign, *, oob: bool = False) -> dict:
    dashboard = queries.campaign_dashboard(campaign)
    return {"campaign": campaign, "dash": dashboard, "series_chart": charts.campaign_series(dashboard), "oob": oob}


def overview_update() -> tuple[str, str]:
    context = overview_context(oob=True)
    html = render_to_string("dashboards/home.html#live", context)
    html += render_to_string("dashboards/home.html#ingest_total", context)
    return html, json.dumps({"charts": {"ingest-chart": context["ingest_chart"]}})


def campaign_update(campaign_id: int) -> tuple[str, str] | None:
    campaign = Campaign.objects.select_related("topic").filter(pk=campaign_id).first()
    if campaign is None:
        return None
    context = campaign_context(campaign, oob=True)
    html = render_to_string("dashboards/campaign.html#live", context)
    return html, json.dumps({"charts": {"series-chart": context["series_chart"]}})


def journey_map_update(journey_id: int) -> str | None:
    """The live map's figures as JSON ``{"counts": …}``; None once the journey is gone."""
    journey = Journey.objects.select_related("live_version").filter(pk=journey_id).first()
    if journey is None:
        return None
    return json.dumps({"counts": journey_queries.map_figures(journey)})


class SharedRenders:
    """One render per group at a time, reused by every consumer in this process that needs
    figures no older than that render."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._cache: dict[str, tuple[float, object]] = {}

    async def get(self, group: str, build, *args, since: float):
        """The group's update, rendered after ``since`` (a ``time.monotonic()`` reading)."""
        lock = self._locks.setdefault(group, asyncio.Lock())
        async with lock:
            cached = self._cache.get(group)
            if cached and cached[0] >= since:
                return cached[1]
            started = time.monotonic()
            value = await database_sync_to_async(build)(*args)
            self._cache[group] = (started, value)
            return value

    def forget(self, group: str) -> None:
        self._cache.pop(group, None)


renders = SharedRenders()
