"""Websocket consumers for the live dashboards and the journeys' live maps: authenticate,
check access, join the group, and forward coalesced updates. They never write."""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from campaigns.models import Campaign
from customers.roles import can_use_marketing, can_view_customers
from journeys.models import Journey

from . import live
from .fanout import fanout
from .publish import OVERVIEW, campaign_group, journey_group, publisher, session_group

# Close codes the page understands: not signed in, not allowed.
UNAUTHENTICATED = 4401
FORBIDDEN = 4403


class DashboardConsumer(AsyncWebsocketConsumer):
    group = ""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if not await database_sync_to_async(self.allowed)(user):
            await self.close(code=FORBIDDEN)
            return
        self._last_push = 0.0
        self._flush: asyncio.Task | None = None
        # One push at a time: each sends what changed since the one before.
        self._pushing = asyncio.Lock()
        self._shown: live.Update | None = None
        publisher.server_loop = asyncio.get_running_loop()
        # The dashboard's figures, and the session's end (signing out closes the socket),
        # through this process's one member of each group (dashboards.fanout).
        self._joined = [self.group, session_group(self.scope["session"].session_key)]
        for group in self._joined:
            await fanout.join(self.channel_layer, group, self)
        # Changes committed before the join are not announced to this socket: the first push
        # must be rendered after it.
        self._changed_at = time.monotonic()
        await self.accept()
        # Catch up at once: on first connect and after every reconnect.
        await self.push()

    async def disconnect(self, code):
        if getattr(self, "_flush", None) is not None:
            self._flush.cancel()
        for group in getattr(self, "_joined", ()):
            await fanout.leave(self.channel_layer, group, self)

    def deliver(self, message: dict) -> None:
        """A message to one of this socket's groups, from the process's fanout."""
        if message["type"] == "dashboard.changed":
            self.changed(message)
        elif message["type"] == "session.ended":
            # The user signed out in this session: the page asks them to sign in again.
            asyncio.ensure_future(self.close(code=UNAUTHENTICATED))

    def allowed(self, user) -> bool:
        raise NotImplementedError

    def build(self):
        raise NotImplementedError

    def changed(self, event: dict) -> None:
        """Coalesce: at most one push per DASHBOARD_PUSH_INTERVAL; the last change is never dropped."""
        self._changed_at = max(self._changed_at, live.renders.heard(event.get("id")))
        if self._flush is not None:
            return
        wait = self._last_push + settings.DASHBOARD_PUSH_INTERVAL - time.monotonic()
        self._flush = asyncio.ensure_future(self._push_later(wait))

    async def _push_later(self, wait: float):
        if wait > 0:
            await asyncio.sleep(wait)
        self._flush = None
        try:
            await self.push()
        except OSError:
            # The browser left while the update was being rendered (the server reports
            # ClientDisconnected, an OSError); its disconnect follows and cleans up.
            pass

    async def push(self):
        self._last_push = time.monotonic()
        async with self._pushing:
            # A render shared with other sockets is good enough only if it began after the last
            # change this socket heard of; an older one would show the figures before that change.
            update = await live.renders.get(self.group, self.build, since=self._changed_at)
            if update is None:
                await self.close(code=FORBIDDEN)
                return
            await self.send_update(update)

    async def send_update(self, update: live.Update) -> None:
        """What changed since this socket's last push (everything on the first): the
        out-of-band fragments, then the charts."""
        for frame in update.frames(since=self._shown):
            await self.send(text_data=frame)
        self._shown = update


class OverviewConsumer(DashboardConsumer):
    group = OVERVIEW

    def allowed(self, user) -> bool:
        self.marketing = can_use_marketing(user)
        return self.marketing or can_view_customers(user)

    def build(self):
        return live.overview_update()

    async def send_update(self, update: dict[bool, live.Update]) -> None:
        await super().send_update(update[self.marketing])


class CampaignConsumer(DashboardConsumer):
    def allowed(self, user) -> bool:
        self.campaign_id = int(self.scope["url_route"]["kwargs"]["campaign_id"])
        self.group = campaign_group(self.campaign_id)
        return can_use_marketing(user) and Campaign.objects.filter(pk=self.campaign_id).exists()

    def build(self):
        return live.campaign_update(self.campaign_id)


class JourneyMapConsumer(DashboardConsumer):
    """A journey's live map: JSON ``{"counts": {...}}`` in the shape the journey canvas takes
    (see journeys.queries.map_counts), on connect and after customers move."""

    def allowed(self, user) -> bool:
        self.journey_id = int(self.scope["url_route"]["kwargs"]["journey_id"])
        self.group = journey_group(self.journey_id)
        return can_use_marketing(user) and Journey.objects.filter(pk=self.journey_id).exists()

    def build(self):
        return live.journey_map_update(self.journey_id)

    async def send_update(self, update) -> None:
        await self.send(text_data=update)
