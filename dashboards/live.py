"""What a live dashboard receives: the same partials the pages render, marked out-of-band,
plus the charts' figures; and the counts a journey's live map receives.

An update is rendered once per group per push interval in each process and shared by every
socket watching it, so 200 open dashboards cost one render, not 200. Each socket then sends
only what changed since the update it sent last (``Update.frames``): the fragments whose
HTML differs, and the chart values that moved.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from campaigns.models import Campaign
from journeys import queries as journey_queries
from journeys.models import Journey

from . import charts, queries

# Element id -> the partial that renders it (each partial is an element with that id).
CAMPAIGN_FRAGMENTS = {
    "campaign-stat-status": "dashboards/campaign.html#stat_status",
    "campaign-stat-progress": "dashboards/campaign.html#stat_progress",
    "campaign-stat-opened": "dashboards/campaign.html#stat_opened",
    "campaign-stat-converted": "dashboards/campaign.html#stat_converted",
    "campaign-funnels": "dashboards/campaign.html#funnels",
    "campaign-side": "dashboards/campaign.html#side",
}
OVERVIEW_FRAGMENTS = {
    "overview-stat-customers": "dashboards/home.html#stat_customers",
    "overview-stat-sent-today": "dashboards/home.html#stat_sent",
    "overview-stat-opened-today": "dashboards/home.html#stat_opened",
    "overview-stat-converted-today": "dashboards/home.html#stat_converted",
    "overview-channels": "dashboards/home.html#channels",
    "overview-lists": "dashboards/home.html#lists",
    "overview-ingest-total": "dashboards/home.html#ingest_total",
}
# Every HTML frame to a campaign dashboard carries the opens tile, changed or not (a few
# hundred bytes), so whoever reads the frames (bench/realtime.py does) finds the current
# opens in each one.
CAMPAIGN_ANCHOR = "campaign-stat-opened"


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


def _render(fragments: dict[str, str], context: dict) -> dict[str, str]:
    return {element_id: render_to_string(partial, context).strip() for element_id, partial in fragments.items()}


_serials = itertools.count(1)


class Update:
    """What a dashboard shows at one moment: out-of-band fragments and chart figures, each by
    the id of the element it replaces. Immutable once built; shared by every socket."""

    def __init__(self, fragments: dict[str, str], figures: dict[str, dict], *, anchor: str | None = None) -> None:
        self.serial = next(_serials)
        self.fragments = fragments
        self.figures = figures
        self.anchor = anchor
        self._frames: dict[int, list[str]] = {}

    def frames(self, since: Update | None) -> list[str]:
        """The websocket frames that bring a page showing ``since`` up to this update.

        ``since`` is the update this socket sent last, None when it has sent nothing (a
        connect or reconnect): then everything goes. At most an HTML frame of out-of-band
        fragments, then a JSON frame of chart changes; none when nothing changed. Worked
        out once per ``since`` and shared by the sockets that last sent the same update.
        """
        if since is self:
            return []
        key = since.serial if since is not None else 0
        frames = self._frames.get(key)
        if frames is None:
            frames = self._frames[key] = self._frames_since(since)
        return frames

    def _frames_since(self, since: Update | None) -> list[str]:
        frames = []
        before = since.fragments if since is not None else {}
        changed = [element_id for element_id, html in self.fragments.items() if before.get(element_id) != html]
        if changed:
            if self.anchor is not None and self.anchor not in changed:
                changed.append(self.anchor)
            frames.append("".join(self.fragments[element_id] for element_id in self.fragments if element_id in changed))
        whole, points = {}, {}
        for element_id, figure in self.figures.items():
            previous = since.figures.get(element_id) if since is not None else None
            moved = charts.changed_points(previous, figure) if previous is not None else None
            if moved is None:
                whole[element_id] = figure
            elif moved:
                points[element_id] = moved
        if whole or points:
            # Whole figures go to Plotly.react; points are [trace, index, y] for figures the page has.
            message = {"charts": whole} if whole else {}
            if points:
                message["points"] = points
            frames.append(json.dumps(message, separators=(",", ":")))
        return frames


def overview_update() -> dict[bool, Update]:
    """The overview's update, by whether the viewer may use the marketing pages (the lists link
    to them only then; on the page, the context processor says so)."""
    context = overview_context(oob=True)
    figures = {"ingest-chart": context["ingest_chart"]}
    shared = _render({k: v for k, v in OVERVIEW_FRAGMENTS.items() if k != "overview-lists"}, context)
    updates = {}
    for marketing in (False, True):
        lists = render_to_string(OVERVIEW_FRAGMENTS["overview-lists"], {**context, "nav_marketing": marketing}).strip()
        fragments = {k: shared[k] if k in shared else lists for k in OVERVIEW_FRAGMENTS}
        updates[marketing] = Update(fragments, figures)
    return updates


def campaign_update(campaign_id: int) -> Update | None:
    """The campaign dashboard's update; None once the campaign is gone."""
    # Variants are read by the funnel and again by a staged campaign's test results.
    campaign = Campaign.objects.prefetch_related("variants").filter(pk=campaign_id).first()
    if campaign is None:
        return None
    context = campaign_context(campaign, oob=True)
    fragments = _render(CAMPAIGN_FRAGMENTS, context)
    return Update(fragments, {"series-chart": context["series_chart"]}, anchor=CAMPAIGN_ANCHOR)


def journey_map_update(journey_id: int) -> str | None:
    """The live map's figures as JSON ``{"counts": …}``; None once the journey is gone."""
    journey = Journey.objects.select_related("live_version").filter(pk=journey_id).first()
    if journey is None:
        return None
    return json.dumps({"counts": journey_queries.map_figures(journey)})


class SharedRenders:
    """One render per group at a time, reused by every consumer in this process that needs
    figures no older than that render."""

    # How long to remember when a notification was first heard here: far longer than a
    # notification takes to reach every socket of the process.
    HEARD_SECONDS = 30.0

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._cache: dict[str, tuple[float, object]] = {}
        self._heard: OrderedDict[str, float] = OrderedDict()

    def heard(self, notice: str | None) -> float:
        """When a socket of this process first heard of change notice ``notice`` (a
        ``time.monotonic()`` reading; now for a notice without an id).

        The change was committed before its notice went out, so a render begun after any
        socket here heard of it shows the change: the sockets that hear of it a little
        later (200 of them take a few milliseconds) can share that render instead of
        asking for another."""
        now = time.monotonic()
        if notice is None:
            return now
        while self._heard and next(iter(self._heard.values())) < now - self.HEARD_SECONDS:
            self._heard.popitem(last=False)
        return self._heard.setdefault(notice, now)

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
