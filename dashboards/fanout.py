"""One channel-layer member per group per web process, which hands each message to its sockets.

With every socket in the channel layer's groups itself, a change to a dashboard watched by
200 people became 200 channel messages, each stored, fetched, decoded and dispatched: at a
few changes a second that is thousands of messages a second, which took most of a web
process while a campaign's opens were arriving. Here each process joins a group once, on its
own channel, when the first of its sockets needs it, and leaves when the last one goes; one
listener task per process receives the group's messages and passes them to the process's
sockets directly. Group membership still lives in the channel layer, so the layers' recovery
after a restart (``dashboards.layers``) covers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


class ProcessFanout:
    """The groups this process's sockets watch, and the task that delivers their messages.

    A member is any object with ``deliver(message)``, a plain method that must not block
    (a consumer schedules its own work)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._members: dict[str, set] = defaultdict(set)
        self._channel: str | None = None
        self._listener: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None

    async def join(self, layer, group: str, member) -> None:
        await self._start(layer)
        async with self._lock:
            first = not self._members[group]
            self._members[group].add(member)
            if first:
                await layer.group_add(group, self._channel)

    async def leave(self, layer, group: str, member) -> None:
        if self._loop is not asyncio.get_running_loop():
            return
        async with self._lock:
            members = self._members.get(group)
            if members is None or member not in members:
                return
            members.discard(member)
            if not members:
                del self._members[group]
                await layer.group_discard(group, self._channel)

    def members(self, group: str) -> int:
        """How many of this process's sockets watch ``group``."""
        return len(self._members.get(group, ()))

    async def _start(self, layer) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._listener is not None and not self._listener.done():
            return
        if self._loop is not loop:
            # A new event loop (a test's, a forked worker's): the old loop's state is unusable.
            self._loop, self._members, self._lock = loop, defaultdict(set), asyncio.Lock()
            # The layer's default prefix: channels-redis reads every channel of a process from one list.
            self._channel = await layer.new_channel()
        self._listener = loop.create_task(self._listen(layer, self._channel))

    async def _listen(self, layer, channel: str) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("dashboards: could not receive from the channel layer; retrying", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for member in list(self._members.get(message.get("group", ""), ())):
                try:
                    member.deliver(message)
                except Exception:
                    logger.exception("dashboards: a socket could not take %s", message.get("type"))


fanout = ProcessFanout()
