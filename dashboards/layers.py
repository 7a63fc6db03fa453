"""Channel layers that recover by themselves when their server restarts.

The zero-setup mode's layer is channels-postgres, made to survive a database restart;
production's is channels-redis, made to survive a Redis restart (see RedisChannelLayer).

channels-postgres keeps one psycopg pool for the whole process (its background workers live
on whichever event loop opened it first) and one LISTEN connection, and neither comes back
when PostgreSQL restarts: pooled connections are handed out dead (``AdminShutdown``), and
the listener task dies with its connection while the layer goes on believing it runs, so no
message reaches this process's sockets again until the server process is restarted.

PostgresChannelLayer keeps a pool per event loop, and when an operation fails on a dead connection it
checks the pool (dropping every connection that died with the server) and tries once more.
Its listener reconnects with backoff and then delivers what was stored for this process's
channels while nobody was listening.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import typing
import uuid
from collections import defaultdict

import channels_redis.core
import psycopg
import psycopg_pool
import redis.exceptions
from channels_postgres.core import PostgresChannelLayer as LibraryChannelLayer
from channels_postgres.db import GROUP_CHANNEL_TABLE, MESSAGE_TABLE, DatabaseLayer, utc_now
from psycopg import sql

logger = logging.getLogger(__name__)

# Raised when the server went away under a connection (a restart ends every session with
# AdminShutdown, a crash just closes the socket). A PoolTimeout means the server is still
# down: trying again would only wait as long once more.
CONNECTION_LOST = (psycopg.OperationalError, psycopg.InterfaceError)

LISTEN_BACKOFF_MAX = 5.0

REDIS_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RecoveringDatabaseLayer(DatabaseLayer):
    """channels-postgres's queries, on a pool per event loop that heals after a restart."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Pools are opened by a task, so concurrent first users of a loop share one pool.
        self._pools: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}

    async def get_db_pool(self, db_params: dict[str, typing.Any]) -> psycopg_pool.AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        opening = self._pools.get(loop)
        if opening is None:
            # Forget pools of loops that are gone (a test's asyncio.run, a finished thread).
            for old in [old for old in self._pools if old.is_closed()]:
                del self._pools[old]
            opening = self._pools[loop] = loop.create_task(self._open_pool(db_params))
        try:
            return await asyncio.shield(opening)
        except Exception:
            # Could not open (the server is down): the next operation tries afresh.
            if self._pools.get(loop) is opening:
                del self._pools[loop]
            raise

    async def _open_pool(self, db_params: dict[str, typing.Any]) -> psycopg_pool.AsyncConnectionPool:
        async def configure(conn: psycopg.AsyncConnection) -> None:
            # As the library configures its own pool.
            await conn.set_autocommit(True)
            conn.prepare_threshold = 0
            conn.prepared_max = None

        pool = psycopg_pool.AsyncConnectionPool(
            conninfo=psycopg.conninfo.make_conninfo(conninfo="", **db_params),
            open=False,
            configure=configure,
            **self.psycopg_options,
        )
        await pool.open(wait=True)
        return pool

    async def _retrying(self, operation, *args):
        """Run ``operation``; if its connection turns out dead, heal the pool and run it once more."""
        try:
            return await operation(*args)
        except psycopg_pool.PoolTimeout:
            raise
        except CONNECTION_LOST as exc:
            logger.warning("channel layer: lost a database connection (%s); retrying once", exc)
            opening = self._pools.get(asyncio.get_running_loop())
            if opening is not None and opening.done() and not opening.exception():
                await opening.result().check()
            return await operation(*args)

    async def retrieve_group_channels(self, group_key: str) -> list[str]:
        return await self._retrying(super().retrieve_group_channels, group_key)

    async def send_to_channel(self, group_key, message, expire, channel=None) -> None:
        return await self._retrying(super().send_to_channel, group_key, message, expire, channel)

    async def add_channel_to_group(self, group_key: str, channel: str, expire: int) -> None:
        return await self._retrying(super().add_channel_to_group, group_key, channel, expire)

    async def retrieve_non_expired_queued_messages(self):
        return await self._retrying(super().retrieve_non_expired_queued_messages)

    async def retrieve_non_expired_queued_message_from_channel(self, channel: str):
        return await self._retrying(super().retrieve_non_expired_queued_message_from_channel, channel)

    async def acquire_advisory_lock(self, channel: str) -> bool:
        return await self._retrying(super().acquire_advisory_lock, channel)

    async def delete_message_returning_message(self, message_id: int):
        return await self._retrying(super().delete_message_returning_message, message_id)

    async def flush(self) -> None:
        return await self._retrying(super().flush)

    async def delete_channel_group(self, group_key: str, channel: str) -> None:
        # The library deletes through the ORM on a Django connection that, outside a request,
        # is never closed, so it stays dead after a restart; use the pool like every other query.
        async def delete():
            pool = await self.get_db_pool(self.db_params)
            async with pool.connection() as conn:
                await conn.execute(
                    sql.SQL("DELETE FROM {table} WHERE group_key = %s AND channel = %s").format(
                        table=sql.Identifier(GROUP_CHANNEL_TABLE)
                    ),
                    (group_key, channel),
                )

        await self._retrying(delete)

    async def delete_expired_groups(self) -> None:
        # Fire-and-forget sweeps (after a random delay): a failure only waits for the next one.
        try:
            await super().delete_expired_groups()
        except psycopg.Error as exc:
            logger.warning("channel layer: could not delete expired groups (%s)", exc)

    async def delete_expired_messages(self, expire: int | None = None) -> None:
        try:
            await super().delete_expired_messages(expire)
        except psycopg.Error as exc:
            logger.warning("channel layer: could not delete expired messages (%s)", exc)

    async def stored_messages(self, channels: list[str], after_id: int) -> list[tuple[str, str, bytes, str]]:
        """Unexpired messages for ``channels`` newer than ``after_id``, oldest first.

        They stay in the table (they expire), as messages delivered by NOTIFY do.
        """
        query = sql.SQL(
            "SELECT id::text, channel, message, extract(epoch from expire)::text FROM {table} "
            "WHERE channel = ANY(%s) AND expire > %s AND id > %s ORDER BY id"
        ).format(table=sql.Identifier(MESSAGE_TABLE))

        async def select():
            pool = await self.get_db_pool(self.db_params)
            async with pool.connection() as conn:
                cursor = await conn.execute(query, (channels, utc_now(), after_id))
                return await cursor.fetchall()

        return await self._retrying(select)


class PostgresChannelLayer(LibraryChannelLayer):
    """channels-postgres that recovers by itself when PostgreSQL restarts (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        library = self.django_db
        self.django_db = RecoveringDatabaseLayer(library.psycopg_options, self.db_params, logger=library.logger)
        # One listener per event loop, set once it listens for the first time.
        self._listening: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}

    def _get_or_create_listener_task(self) -> tuple[asyncio.Event, bool]:
        loop = asyncio.get_running_loop()
        listening = self._listening.get(loop)
        if listening is not None:
            return listening, False
        for old in [old for old in self._listening if old.is_closed()]:
            del self._listening[old]
        listening = self._listening[loop] = asyncio.Event()
        self.listener_task_is_running = listening
        return listening, True

    async def listen_to_all_channels(self) -> None:
        """LISTEN for new messages, and reconnect whenever the connection is lost.

        After each (re)connection, messages stored for this process's channels since the
        last one it saw are delivered first, then notifications are, skipping repeats.
        """
        listening = self._listening[asyncio.get_running_loop()]
        conninfo = psycopg.conninfo.make_conninfo(conninfo="", **self.db_params)
        last_id, backoff = 0, 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
                    await connection.execute("LISTEN channels_postgres_messages")
                    ours = [channel for channel, locked in self._channel_advisory_locks.items() if locked]
                    caught_up = set()
                    for message_id, channel, message, expire in await self.django_db.stored_messages(ours, last_id):
                        payload = f"{message_id}:{channel}:{base64.b64encode(message).decode()}:{expire}"
                        self._get_or_create_queue(channel).put_nowait(payload)
                        caught_up.add(message_id)
                        last_id = max(last_id, int(message_id))
                    listening.set()
                    backoff = 0.1
                    async for event in connection.notifies():
                        if event.payload == "1:shutdown":
                            return
                        message_id, channel = event.payload.split(":")[:2]
                        if message_id in caught_up or not self._channel_advisory_locks.get(channel, False):
                            continue
                        last_id = max(last_id, int(message_id))
                        self._get_or_create_queue(channel).put_nowait(event.payload)
            except CONNECTION_LOST as exc:
                # Receivers keep waiting on their queues; nothing is lost that is still stored.
                if backoff == 0.1:
                    logger.warning("channel layer: lost the LISTEN connection (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF_MAX)


class RedisChannelLayer(channels_redis.core.RedisChannelLayer):
    """channels-redis that carries on when Redis restarts.

    channels-redis lets a lost connection escape from ``receive``, which kills every consumer
    of the process; and a restarted Redis without persistence has forgotten every group. This
    layer waits for Redis to answer again instead, then adds this process's channels back to
    the groups they had joined.

    Whether Redis forgot the groups is not read from connection errors (redis-py reconnects
    and retries a command by itself, so a short restart can pass without one): each layer
    keeps a marker key of its own beside its groups, and a missing marker means Redis lost
    its data. The marker is checked before this layer sends anything and, at most once per
    ``CHECK_SECONDS``, while its sockets wait for messages.
    """

    RETRY_SECONDS = 0.1
    CHECK_SECONDS = 1.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = [
            {
                # channels-redis waits for messages with a 5 s blocking pop, and redis-py 8 stops
                # reading after socket_timeout, 5 s by default: every idle socket raced that
                # timeout and its consumer died. A hung Redis is still noticed.
                "socket_timeout": 15,
                # A pooled connection that Redis closed (a restart) is reconnected and the
                # command sent once more, instead of failing the send.
                "retry_on_error": [redis.exceptions.ConnectionError],
                **host,
            }
            for host in self.hosts
        ]
        self._memberships: dict[str, set[str]] = defaultdict(set)
        self._marker = f"{self.prefix}:layer:{uuid.uuid4().hex}"
        self._checked = 0.0

    async def _rejoin_if_lost(self, *, force: bool = False) -> None:
        """Join this process's groups again if Redis lost them (raises while it is still down).

        Done before anything else this layer sends, so a message published right after
        Redis comes back reaches the sockets that were open before."""
        if not self._memberships:
            return
        now = time.monotonic()
        if not force and now - self._checked < self.CHECK_SECONDS:
            return
        self._checked = now
        lost = False
        for index in range(self.ring_size):
            lost = lost or not await self.connection(index).exists(self._marker)
        if not lost:
            return
        for group, members in list(self._memberships.items()):
            for member in list(members):
                await super().group_add(group, member)
        await self._mark()
        logger.warning("channel layer: Redis had lost this process's groups; rejoined %d", len(self._memberships))

    async def _mark(self) -> None:
        for index in range(self.ring_size):
            await self.connection(index).set(self._marker, b"1", ex=self.group_expiry)

    async def send(self, channel: str, message: dict) -> None:
        await self._rejoin_if_lost(force=True)
        await super().send(channel, message)

    async def group_send(self, group: str, message: dict) -> None:
        await self._rejoin_if_lost(force=True)
        await super().group_send(group, message)

    async def group_add(self, group: str, channel: str) -> None:
        await self._rejoin_if_lost(force=True)
        await super().group_add(group, channel)
        self._memberships[group].add(channel)
        # Refreshed with every join, so it outlives the groups it stands for.
        await self._mark()

    async def group_discard(self, group: str, channel: str) -> None:
        members = self._memberships.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del self._memberships[group]
        await super().group_discard(group, channel)

    async def _brpop_with_clean(self, index, channel, timeout):
        # Only one receive per process waits here at a time (channels-redis's receive lock).
        try:
            await self._rejoin_if_lost()
            return await super()._brpop_with_clean(index, channel, timeout)
        except REDIS_LOST as exc:
            logger.warning("channel layer: lost Redis (%s); waiting for it", exc)
        while True:
            await asyncio.sleep(self.RETRY_SECONDS)
            try:
                await self.connection(index).ping()
                await self._rejoin_if_lost(force=True)
            except REDIS_LOST:
                continue
            # Nothing received: channels-redis's loop calls again.
            return None
