"""The live map's socket (/ws/journeys/<id>/): who may listen, and counts that follow
customers as events move them."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.test import Client

from config.asgi import application
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory
from tests.journeys.welcome import ingest, welcome_journey

# channels-postgres removes sockets from groups through its own database alias.
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])


def cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def communicator(path, session=None):
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_counts(ws) -> dict:
    return json.loads(await ws.receive_from(timeout=WAIT_SECONDS))["counts"]


@pytest.fixture
def memory_layer(settings):
    """An in-process channel layer: the publisher hands its messages to the test's event loop."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def journey(topics):
    return welcome_journey()


def test_outsiders_support_staff_and_strangers_are_refused(journey, outsider, support, marketer, memory_layer):
    async def scenario():
        ws = communicator(f"/ws/journeys/{journey.pk}/")
        assert await ws.connect(timeout=WAIT_SECONDS) == (False, 4401)
        for user in (outsider, support):
            ws = communicator(f"/ws/journeys/{journey.pk}/", await sync_to_async(cookie_for)(user))
            assert await ws.connect(timeout=WAIT_SECONDS) == (False, 4403)
        ws = communicator("/ws/journeys/999999/", await sync_to_async(cookie_for)(marketer))
        assert await ws.connect(timeout=WAIT_SECONDS) == (False, 4403)

    asyncio.run(scenario())


def test_a_marketer_gets_the_counts_and_sees_a_customer_arrive(journey, marketer, memory_layer):
    session = cookie_for(marketer)
    ada = CustomerFactory(phone="")

    async def scenario():
        ws = communicator(f"/ws/journeys/{journey.pk}/", session)
        connected, _ = await ws.connect(timeout=WAIT_SECONDS)
        assert connected
        counts = await receive_counts(ws)  # at once, on connect
        assert counts["nodes"]["wait"] == {"now": 0, "entered": 0} and counts["edges"]["start:out"] == 0

        # An event through the ingestion service enters ada; she stops at the wait.
        await sync_to_async(ingest)(ada, "signed_up", plan="pro")
        counts = await receive_counts(ws)
        while counts["nodes"]["wait"]["now"] != 1:  # a push may show an earlier moment first
            counts = await receive_counts(ws)
        assert counts["nodes"]["wait"] == {"now": 1, "entered": 1}
        assert counts["nodes"]["start"]["entered"] == 1
        assert counts["edges"]["start:out"] == 1 and counts["edges"]["welcome:suppressed"] == 1

        # Her order is the goal: she leaves, and the branch she took converted.
        await sync_to_async(ingest)(ada, "order_completed", total=30)
        counts = await receive_counts(ws)
        while counts["nodes"]["wait"]["now"] != 0:
            counts = await receive_counts(ws)
        assert counts["conversion"]["welcome:suppressed"] == 1.0
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())
