"""The live dashboard sockets: who may listen, what they receive, and how bursts are coalesced."""

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing.websocket import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from campaigns.providers import DeliveryEvent
from config.asgi import application
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS

# channels-postgres removes sockets from groups through its own database alias.
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])


def cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def communicator(path, session=None, origin=b"http://testserver", host=b"testserver"):
    """A browser's websocket: the page's origin, and the host it was served from."""
    headers = [(b"origin", origin), (b"host", host)]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_update(ws, timeout=WAIT_SECONDS):
    """One push: the out-of-band HTML fragments, then the chart JSON."""
    html = await ws.receive_from(timeout=timeout)
    charts = json.loads(await ws.receive_from(timeout=timeout))
    return html, charts


@pytest.fixture
def memory_layer(settings):
    """An in-process channel layer, for tests about the consumer itself rather than the transport."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def launched(audience):
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    return campaign


def test_a_marketer_gets_the_whole_dashboard_as_soon_as_the_socket_opens(memory_layer, marketer, launched):
    """Changes after commit reaching an open page are tested end to end, on a real ASGI
    server, in tests/test_browser_dashboards.py."""
    session = cookie_for(marketer)

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        connected, _ = await ws.connect(timeout=WAIT_SECONDS)
        assert connected
        html, charts = await receive_update(ws)
        assert 'id="campaign-headline"' in html and 'hx-swap-oob="true"' in html
        assert 'data-stat="opened">0 · 0<' in html
        opens = [trace for trace in charts["charts"]["series-chart"]["data"] if trace["name"].startswith("Opens")]
        assert opens and sum(opens[0]["y"]) == 0
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_bursts_are_coalesced_and_the_last_change_is_never_lost(marketer, launched, settings, memory_layer):
    settings.DASHBOARD_PUSH_INTERVAL = 1.0
    session = cookie_for(marketer)
    delivery = Delivery.objects.filter(campaign=launched, status="sent").first()

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        await ws.connect(timeout=WAIT_SECONDS)
        await receive_update(ws)
        layer = get_channel_layer()
        started = time.monotonic()
        for i in range(50):
            if i == 49:
                # The last notification of the burst carries a real change.
                await sync_to_async(Delivery.objects.filter(pk=delivery.pk).update)(opened_at=timezone.now())
                await sync_to_async(delivery_events_apply)(
                    events=[DeliveryEvent("clicked", timezone.now(), delivery_id=delivery.pk)]
                )
            await layer.group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed"})
        # Every push until one shows the last change, then any that still follow it.
        pushes, last, last_at = 0, "", started
        while 'data-stat="opened">0 · 1<' not in last:
            last, _ = await receive_update(ws)
            pushes, last_at = pushes + 1, time.monotonic()
        while not await ws.receive_nothing(timeout=2 * settings.DASHBOARD_PUSH_INTERVAL):
            last, _ = await receive_update(ws)
            pushes, last_at = pushes + 1, time.monotonic()
        # 50 notifications became at most one push per interval, however long the machine
        # took to deliver them (one or two on a quiet machine), not one per notification…
        assert 1 <= pushes <= 1 + int((last_at - started) / settings.DASHBOARD_PUSH_INTERVAL)
        # …and the trailing push shows the last change.
        assert 'data-stat="opened">0 · 1<' in last
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_anonymous_visitors_are_refused(launched, memory_layer):
    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/")
        connected, code = await ws.connect(timeout=WAIT_SECONDS)
        assert not connected and code == 4401

    asyncio.run(scenario())


def test_support_staff_cannot_watch_a_campaign_but_can_watch_the_overview(support, launched, memory_layer):
    session = cookie_for(support)

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        connected, code = await ws.connect(timeout=WAIT_SECONDS)
        assert not connected and code == 4403
        ws = communicator("/ws/dashboards/overview/", session)
        connected, _ = await ws.connect(timeout=WAIT_SECONDS)
        assert connected
        html, _ = await receive_update(ws)
        assert 'id="overview-headline"' in html
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_outsiders_and_unknown_campaigns_are_refused(outsider, marketer, launched, memory_layer):
    outsider_session, marketer_session = cookie_for(outsider), cookie_for(marketer)

    async def scenario():
        ws = communicator("/ws/dashboards/overview/", outsider_session)
        assert (await ws.connect(timeout=WAIT_SECONDS)) == (False, 4403)
        ws = communicator("/ws/dashboards/campaigns/999999/", marketer_session)
        assert (await ws.connect(timeout=WAIT_SECONDS)) == (False, 4403)

    asyncio.run(scenario())


def test_other_origins_are_refused(marketer, launched, memory_layer):
    session = cookie_for(marketer)

    async def scenario():
        ws = communicator("/ws/dashboards/overview/", session, origin=b"https://evil.example")
        connected, _ = await ws.connect(timeout=WAIT_SECONDS)
        assert not connected

    asyncio.run(scenario())


def test_only_the_sites_own_origin_may_open_a_socket(marketer, launched, memory_layer, settings):
    """Scheme, host and port must all match: another app on the same host is another site."""
    settings.SITE_URL = "http://localhost:8000"
    settings.CSRF_TRUSTED_ORIGINS = ["http://localhost:8000", "https://*.switchboard.example"]
    session = cookie_for(marketer)

    async def connects(origin: bytes, host: bytes = b"localhost:8000") -> bool:
        ws = communicator("/ws/dashboards/overview/", session, origin=origin, host=host)
        connected, _ = await ws.connect()
        if connected:
            await ws.disconnect(timeout=5)
        return connected

    async def scenario():
        assert await connects(b"http://localhost:8000")
        assert not await connects(b"http://localhost:9999")
        assert not await connects(b"https://localhost:8000")
        assert not await connects(b"http://127.0.0.1:9999", host=b"127.0.0.1:8000")
        # The origin the browser reached this server at (as for a form post), and trusted origins.
        assert await connects(b"http://127.0.0.1:8000", host=b"127.0.0.1:8000")
        assert await connects(b"https://eu.switchboard.example", host=b"internal:8000")
        # …but not for a host the site does not serve (DNS rebinding).
        assert not await connects(b"http://rebound.example:8000", host=b"rebound.example:8000")

    asyncio.run(scenario())


def test_signing_out_closes_that_sessions_dashboards(marketer, launched, memory_layer):
    """A dashboard left open after signing out stops at once and asks to sign in again; the
    same user's dashboards in another browser go on."""
    browser, other_browser = Client(), Client()
    browser.force_login(marketer)
    other_browser.force_login(marketer)

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", browser.cookies["sessionid"].value)
        assert (await ws.connect())[0]
        await receive_update(ws)
        other = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", other_browser.cookies["sessionid"].value)
        assert (await other.connect())[0]
        await receive_update(other)

        response = await sync_to_async(browser.post)("/accounts/logout/")
        assert response.status_code == 302

        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
        await get_channel_layer().group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed"})
        html, _ = await receive_update(other)
        assert 'id="campaign-headline"' in html
        await other.disconnect(timeout=5)

    asyncio.run(scenario())
