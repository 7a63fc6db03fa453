"""The parts every feature stands on: database, channel layer across processes, task broker."""

import asyncio
import os
import sys

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import WAIT_SECONDS

PUBLISH = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
async_to_sync(get_channel_layer().group_send)("infrastructure-test", {"type": "hello", "from": os.getpid()})
"""


@pytest.mark.django_db
def test_database_is_postgresql_18_or_the_configured_server():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        assert int(cursor.fetchone()[0]) >= 150000


@pytest.mark.django_db(transaction=True)
def test_another_process_can_push_to_a_websocket_group():
    """A worker process publishes; the web process (here, the test) receives it."""

    async def listen_while_other_process_publishes():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("infrastructure-test", channel)
        env = dict(os.environ)
        if not settings.REDIS_URL:
            params = conninfo_to_dict(env["DATABASE_URL"])
            params["dbname"] = connection.settings_dict["NAME"]
            env["DATABASE_URL"] = make_conninfo(**params)
        publisher = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISH, env=env)
        message = await asyncio.wait_for(layer.receive(channel), timeout=WAIT_SECONDS)
        assert await publisher.wait() == 0
        return message, publisher.pid

    message, publisher_pid = asyncio.run(listen_while_other_process_publishes())
    assert message["type"] == "hello"
    assert message["from"] == publisher_pid != os.getpid()


def test_task_broker_matches_the_environment():
    if settings.REDIS_URL:
        assert settings.Q_CLUSTER["redis"] == settings.REDIS_URL
    else:
        assert settings.Q_CLUSTER["orm"] == "default"
    # A slow task must not be handed out twice, nor retried forever.
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]
    assert settings.Q_CLUSTER["max_attempts"] > 0
