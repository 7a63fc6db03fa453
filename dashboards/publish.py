"""Tell the dashboards and the journeys' live maps that figures changed, coalesced per process.

Services publish after commit (``campaigns.signals.counters_changed``, ingestion,
segment changes, ``journeys.signals.journeys_moved``). A burst of thousands of changes a
second must not become thousands of channel-layer messages to every open dashboard, so
each process collects the groups that changed and sends one message per group at most
every ``DASHBOARD_PUBLISH_INTERVAL`` seconds, from one background thread with its own event
loop. The first change after a quiet spell goes out at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.dispatch import receiver
from django.utils.crypto import salted_hmac

from campaigns.signals import counters_changed
from customers.signals import customers_changed
from journeys.signals import journeys_moved

logger = logging.getLogger(__name__)

OVERVIEW = "overview"


def campaign_group(campaign_id: int) -> str:
    return f"campaign.{campaign_id}"


def journey_group(journey_id: int) -> str:
    return f"journey-{journey_id}"


def session_group(session_key: str) -> str:
    """Every dashboard socket of one signed-in session. Named by a keyed hash, so the channel
    layer's storage never holds session keys."""
    return "session." + salted_hmac("dashboards.session_group", session_key, algorithm="sha256").hexdigest()[:32]


class Publisher:
    def __init__(self) -> None:
        self._pending: set[str] = set()
        # Messages that go out as they are, at once and in order (not coalesced).
        self._messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = None
        # The event loop of the ASGI server in this process, once a dashboard connects.
        self.server_loop: asyncio.AbstractEventLoop | None = None

    def publish(self, groups: set[str]) -> None:
        if not groups:
            return
        with self._lock:
            self._pending |= groups
            self._ensure_thread()
        self._wake.set()

    def send(self, group: str, message: dict) -> None:
        """Send ``message`` to ``group`` from synchronous code, on the right event loop."""
        with self._lock:
            # The group rides along: each process hands it to the sockets watching it (dashboards.fanout).
            self._messages.append((group, {**message, "group": group}))
            self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        import os

        # A forked worker inherits the object but not the thread.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="dashboard-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        last = 0.0
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                messages, self._messages = self._messages, []
            for group, message in messages:
                self._group_send(loop, group, message)
            interval = settings.DASHBOARD_PUBLISH_INTERVAL
            wait = last + interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                groups, self._pending = self._pending, set()
            if not groups:
                continue
            last = time.monotonic()
            sent_at = time.time()
            for group in sorted(groups):
                # The id lets the sockets of a process that hear of it share one render
                # (dashboards.live.SharedRenders.heard).
                notice = {"type": "dashboard.changed", "group": group, "at": sent_at, "id": uuid.uuid4().hex}
                self._group_send(loop, group, notice)

    def _group_send(self, loop: asyncio.AbstractEventLoop, group: str, message: dict) -> None:
        from channels.layers import get_channel_layer

        send = get_channel_layer().group_send(group, message)
        try:
            server_loop = self.server_loop
            if server_loop is not None and server_loop.is_running():
                # In the web server, publish on its own event loop: channel layers
                # (channels-postgres's connection pool in particular) belong to one loop.
                asyncio.run_coroutine_threadsafe(send, server_loop).result(timeout=10)
            else:
                loop.run_until_complete(send)
        except Exception:
            logger.exception("could not publish a dashboard update to %s", group)


publisher = Publisher()


@receiver(counters_changed, dispatch_uid="dashboards.on_counters")
def on_counters(sender, campaign_ids=(), journey_ids=(), **kwargs):
    publisher.publish({campaign_group(pk) for pk in campaign_ids} | {OVERVIEW})


@receiver(customers_changed, dispatch_uid="dashboards.on_customers_changed")
def on_customers_changed(sender, change, **kwargs):
    # The overview shows events received and segment sizes; message events move campaign
    # figures, which counters_changed publishes already.
    publisher.publish({OVERVIEW})


@receiver(journeys_moved, dispatch_uid="dashboards.on_journeys_moved")
def on_journeys_moved(sender, journey_ids=(), **kwargs):
    """Customers entered, moved in or left these journeys: their live maps refresh."""
    publisher.publish({journey_group(pk) for pk in journey_ids})


@receiver(user_logged_out, dispatch_uid="dashboards.on_logout")
def on_logout(sender, request=None, **kwargs):
    """Signing out closes the session's open dashboards (the consumer closes with 4401)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        group = session_group(session_key)
        transaction.on_commit(lambda: publisher.send(group, {"type": "session.ended"}))
