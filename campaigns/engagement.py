"""The engagement queue: opens and clicks answered at once, applied moments later in batches.

A campaign to a million people brings thousands of opens a second. The tracking route
(``campaigns.tracking_route``) does not apply them one by one: it hands each hit to this
process's :class:`Recorder`, which writes whatever hits arrived meanwhile in one statement
and lets their requests answer once that statement has committed, so a hit that was
answered is never lost. The :class:`Drainer` then applies them through the transitions path
(first time only, one counter bump per batch, timeline events and the event stream's signal
once per batch) in the same transaction that deletes them from the queue: a process that
dies in between leaves them queued, and the next drain, in any process, applies them.

This module is the only writer of ``campaigns_engagementhit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict

import psycopg
from django.conf import settings
from django.db import OperationalError, close_old_connections, connection, transaction
from psycopg import generators, pq

from .services.delivery_events import engagement_apply_claimed

logger = logging.getLogger(__name__)

# Hits one recorder statement writes at most, and statements in flight at once per process;
# one drain applies at most DRAIN_BATCH.
WRITE_BATCH = 5000
WRITERS = 4
DRAIN_BATCH = 5000
# A burst, for the drainer: this process accepting more hits a second than this.
BUSY_HITS_PER_SECOND = 1000
BURST_SHARE = 0.05
BURST_BATCH = 500

PREPARE = (
    "PREPARE engagement_hits (bigint[], text[]) AS "
    "INSERT INTO campaigns_engagementhit (delivery_id, kind) SELECT * FROM unnest($1, $2)"
)
CLAIM = """
    DELETE FROM campaigns_engagementhit
    WHERE id IN (SELECT id FROM campaigns_engagementhit ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING delivery_id, kind, at
"""


# --- Applying: the drain ------------------------------------------------------------------------


def engagement_drain(*, limit: int = DRAIN_BATCH) -> int:
    """Apply up to ``limit`` queued hits, oldest first, in one transaction; returns how many.

    Safe to run in several processes at once: each claims rows the others have not locked.
    A repeat of an open already counted (or queued twice) changes nothing.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            # The claim and its effects commit together, and a commit lost in a database crash
            # takes every later one with it, so the hits would just be applied again: this
            # commit need not wait for the disk, and the recorders' commits wait less.
            cursor.execute("SET LOCAL synchronous_commit TO off")
        return engagement_apply_claimed(claim=CLAIM, params={"limit": limit})


def engagement_drain_all(*, budget_seconds: float = 30.0) -> int:
    """Drain until the queue is empty or the budget is spent; returns how many hits were applied."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    while time.monotonic() < deadline:
        applied = engagement_drain()
        total += applied
        if applied < DRAIN_BATCH:
            break
    return total


class Drainer:
    """A background thread in each web process that applies queued hits soon after they commit.

    Woken by the recorder after each write, it drains at most once per
    ``TRACKING_DRAIN_INTERVAL`` seconds so that hits arriving together are applied (and
    announced to the dashboards) together; it also looks for leftovers every
    ``TRACKING_DRAIN_POLL`` seconds, such as hits a killed process had answered.

    Applying costs several times what accepting does. During a burst, while this process
    accepts more than ``BUSY_HITS_PER_SECOND``, the drainer rests after each drain so that it
    takes about ``BURST_SHARE`` of the time, in batches of ``BURST_BATCH``: readers are answered
    first and the backlog is applied as the burst eases, at full speed once it is over.
    """

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def wake(self) -> None:
        if not settings.TRACKING_DRAIN_IN_WEB:
            return
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                    self._pid = os.getpid()
                    self._thread = threading.Thread(target=self._run, name="engagement-drainer", daemon=True)
                    self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Stop this process's thread and wait for it (before its database goes away, as at the
        end of a test session); the next hit starts it again."""
        with self._lock:
            thread, self._stopping = self._thread, True
            self._wake.set()
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10)
            self._thread, self._stopping = None, False

    def _run(self) -> None:
        rest_until = 0.0
        while not self._stopping:
            self._wake.wait(settings.TRACKING_DRAIN_POLL)
            self._wake.clear()
            if self._stopping:
                return
            pause = rest_until - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                close_old_connections()
                while True:
                    busy = recorder.hits_per_second() > BUSY_HITS_PER_SECOND
                    started = time.monotonic()
                    applied = engagement_drain(limit=BURST_BATCH if busy else DRAIN_BATCH)
                    took = time.monotonic() - started
                    if busy or recorder.hits_per_second() > BUSY_HITS_PER_SECOND:
                        rest_until = time.monotonic() + took * (1 / BURST_SHARE - 1)
                        self._wake.set()  # more is queued or coming: come back after the rest
                        break
                    if applied < DRAIN_BATCH:
                        rest_until = started + settings.TRACKING_DRAIN_INTERVAL
                        break
            except OperationalError:
                # The database went away or restarted: the hits stay queued; try again later.
                logger.warning("could not apply queued opens and clicks; retrying", exc_info=True)
                connection.close()
                time.sleep(1)
            except Exception:
                logger.exception("could not apply queued opens and clicks")
                connection.close()
                time.sleep(1)


drainer = Drainer()


# --- Accepting: the recorder ---------------------------------------------------------------------


class Recorder:
    """Writes hits to the queue in batches on this process's event loop.

    ``record`` returns once the hit's batch has committed (True), or False when the
    database could not take it; the caller answers the request either way. While
    ``WRITERS`` batches are being written, the hits that arrive wait for the next: the busier
    the endpoint, the larger the batches, with no fixed delay added when it is quiet.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, str, asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writers = 0
        self._idle: list = []
        # Hits already committed here: a mail client loading the pixel again is not queued again.
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()
        # Hits written in the current and the previous second, for hits_per_second.
        self._second, self._this_second, self._last_second = 0, 0, 0

    def hits_per_second(self) -> int:
        """Hits this process wrote in the last whole second, or so far in this one if more
        (read from the drainer's thread: a burst counts from its first second)."""
        second = int(time.monotonic())
        if second == self._second:
            return max(self._last_second, self._this_second)
        return self._this_second if second == self._second + 1 else 0

    def _count(self, hits: int) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._last_second = self._this_second if second == self._second + 1 else 0
            self._second, self._this_second = second, 0
        self._this_second += hits

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a forked worker, a test's loop): nothing of the old one is usable.
            self._loop, self._writers, self._idle, self._pending = loop, 0, [], []
        return loop

    async def record(self, delivery_id: int, kind: str) -> bool:
        if (delivery_id, kind) in self._seen:
            return True  # stored already: a mail client loading the pixel again
        loop = self._bind()
        future = loop.create_future()
        self._pending.append((delivery_id, kind, future))
        if self._writers < WRITERS:
            self._writers += 1
            loop.create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        """Write pending hits until there are none; up to WRITERS of these run at once, each
        on a connection of its own, so a batch need not wait for the previous one's commit."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:WRITE_BATCH], self._pending[WRITE_BATCH:]
                ok = await self._write(batch)
                for delivery_id, kind, future in batch:
                    if ok:
                        self._remember(delivery_id, kind)
                    if not future.done():
                        future.set_result(ok)
                if ok:
                    self._count(len(batch))
                    drainer.wake()
        finally:
            self._writers -= 1

    async def _write(self, batch) -> bool:
        # Straight through libpq with the arrays as text: psycopg's execute spent about 120 µs
        # of this process's CPU per statement, most of a small batch's cost. The values are
        # ints and the two status names, so the array literals need no quoting.
        ids = ("{" + ",".join([str(row[0]) for row in batch]) + "}").encode()
        kinds = ("{" + ",".join([row[1] for row in batch]) + "}").encode()
        try:
            async with self._connection() as conn:
                conn.pgconn.send_query_prepared(b"engagement_hits", [ids, kinds])
                results = await conn.wait(generators.execute(conn.pgconn))
                if results[-1].status != pq.ExecStatus.COMMAND_OK:
                    raise psycopg.DatabaseError(results[-1].get_error_message())
            return True
        except Exception:
            logger.exception("could not queue %s opens and clicks", len(batch))
            return False

    async def link_url(self, link_id: int) -> str | None:
        """Where a tracked link leads, or None when there is no such link or no database."""
        self._bind()
        try:
            async with self._connection() as conn:
                cursor = await conn.execute("SELECT url FROM campaigns_link WHERE id = %s", [link_id], prepare=True)
                row = await cursor.fetchone()
        except Exception:
            logger.exception("could not look up link %s", link_id)
            return None
        return row[0] if row else None

    @contextlib.asynccontextmanager
    async def _connection(self):
        """An idle connection of this process's (a new one if none is idle); one that failed is dropped."""
        from django.db import connections

        conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            params = connections["default"].get_connection_params()
            params.pop("cursor_factory", None)
            conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            await conn.execute(PREPARE)
        try:
            yield conn
        except BaseException:
            await conn.close()
            raise
        self._idle.append(conn)

    def _remember(self, delivery_id: int, kind: str) -> None:
        self._seen[(delivery_id, kind)] = None
        if len(self._seen) > settings.TRACKING_SEEN_CACHE:
            self._seen.popitem(last=False)


recorder = Recorder()
