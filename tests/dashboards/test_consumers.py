"""The live dashboard sockets: who may listen, what they receive, and how bursts are coalesced."""

import asyncio
import json
import re
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
from dashboards import live
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


CAMPAIGN_FRAGMENTS = (
    "campaign-stat-status", "campaign-stat-progress", "campaign-stat-opened", "campaign-stat-converted",
    "campaign-funnels", "campaign-side",
)


async def receive_update(ws, timeout=WAIT_SECONDS):
    """A whole push, as the first one after connecting is: the out-of-band HTML fragments,
    then the chart JSON."""
    html = await ws.receive_from(timeout=timeout)
    assert html.startswith("<"), html[:80]
    charts = json.loads(await ws.receive_from(timeout=timeout))
    return html, charts


async def receive_frames(ws, timeout=WAIT_SECONDS, quiet=0.5):
    """The frames of the next push (or pushes), once the socket has been quiet for ``quiet``
    seconds: (the HTML frames, the JSON frames decoded)."""
    frames = [await ws.receive_from(timeout=timeout)]
    while not await ws.receive_nothing(timeout=quiet):
        frames.append(await ws.receive_from(timeout=timeout))
    assert all(frame for frame in frames), "an empty frame"
    return [f for f in frames if not f.startswith("{")], [json.loads(f) for f in frames if f.startswith("{")]


def fragment_ids(html: str) -> list[str]:
    """The ids of the out-of-band fragments in an HTML frame, in order."""
    return re.findall(r'id="([\w-]+)"[^>]*hx-swap-oob="true"', html)


def opened(html: str) -> str:
    """What the opens tile shows, read as bench/realtime.py reads it."""
    return re.search(r'data-stat="opened">([\d,]+ · [\d,]+)<', html).group(1)


def clear_of_the_next_minute(seconds: float = 10) -> None:
    """Wait for the next minute if this one ends within ``seconds``: the chart gains a minute
    then (a whole figure is sent again) and the sending rate moves."""
    left = 60 - timezone.now().second - timezone.now().microsecond / 1e6
    if left < seconds:
        time.sleep(left + 0.1)


def apply(kind: str, delivery: Delivery) -> int:
    return delivery_events_apply(events=[DeliveryEvent(kind, timezone.now(), delivery_id=delivery.pk)])


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
        assert fragment_ids(html) == list(CAMPAIGN_FRAGMENTS)
        assert 'data-stat="opened">0 · 0<' in html
        opens = [trace for trace in charts["charts"]["series-chart"]["data"] if trace["name"].startswith("Opens")]
        assert opens and sum(opens[0]["y"]) == 0
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_bursts_are_coalesced_and_the_last_change_is_never_lost(marketer, launched, settings, memory_layer):
    settings.DASHBOARD_PUSH_INTERVAL = 1.0
    session = cookie_for(marketer)
    ada, bob, fay = Delivery.objects.filter(campaign=launched, status="sent").order_by("pk")
    # Six real changes spread over a burst of 60 notifications: without coalescing, each
    # would be a push of its own.
    changes = {0: ("opened", ada), 10: ("clicked", ada), 20: ("opened", bob), 30: ("clicked", bob),
               40: ("opened", fay), 59: ("clicked", fay)}

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        await ws.connect(timeout=WAIT_SECONDS)
        await receive_update(ws)
        layer = get_channel_layer()
        started = time.monotonic()
        for i in range(60):
            if i in changes:
                assert await sync_to_async(apply)(*changes[i])
            await layer.group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        # Every push until one shows the last change, then any that still follow it.
        pushes, last, last_at = 0, "", started
        while "data-stat=\"opened\">3 · 3<" not in last:
            last = await ws.receive_from(timeout=WAIT_SECONDS)
            if not last.startswith("{"):
                pushes, last_at = pushes + 1, time.monotonic()
        while not await ws.receive_nothing(timeout=2 * settings.DASHBOARD_PUSH_INTERVAL):
            frame = await ws.receive_from()
            if not frame.startswith("{"):
                last, pushes, last_at = frame, pushes + 1, time.monotonic()
        # Six changes became at most one push per interval, however long the machine took
        # to deliver them (one or two on a quiet machine), not one per change…
        assert 1 <= pushes <= 1 + int((last_at - started) / settings.DASHBOARD_PUSH_INTERVAL)
        # …and the trailing push shows the last change.
        assert opened(last) == "3 · 3"
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_after_the_first_push_a_socket_receives_only_what_changed(marketer, launched, memory_layer):
    session = cookie_for(marketer)
    ada = Delivery.objects.filter(campaign=launched, status="sent").order_by("pk").first()
    clear_of_the_next_minute()

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        assert (await ws.connect(timeout=WAIT_SECONDS))[0]
        _, first = await receive_update(ws)
        traces = first["charts"]["series-chart"]["data"]
        opens = next(i for i, trace in enumerate(traces) if trace["name"] == "Opens · Email")
        now = len(traces[opens]["y"]) - 1
        layer = get_channel_layer()

        await sync_to_async(apply)("opened", ada)
        await layer.group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        html, charts = await receive_frames(ws)
        # The opens tile and the funnel changed; the other tiles and the side cards did not.
        assert [fragment_ids(frame) for frame in html] == [["campaign-stat-opened", "campaign-funnels"]]
        assert opened(html[0]) == "1 · 0"
        # The chart: only the value that moved, not the figure again.
        assert charts == [{"points": {"series-chart": [[opens, now, 1]]}}]

        # Nothing changed: nothing is sent, not even an empty frame.
        await layer.group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        assert await ws.receive_nothing(timeout=1)
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_the_chart_is_not_resent_when_its_figures_did_not_change(marketer, launched, memory_layer):
    """A delivery receipt moves the funnel but none of the chart's lines (opens, clicks and
    conversions): an HTML frame only, which still carries the opens tile for whoever reads
    the frames for it (bench/realtime.py)."""
    session = cookie_for(marketer)
    ada = Delivery.objects.filter(campaign=launched, status="sent").order_by("pk").first()
    clear_of_the_next_minute()

    async def scenario():
        ws = communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session)
        assert (await ws.connect(timeout=WAIT_SECONDS))[0]
        await receive_update(ws)
        await sync_to_async(apply)("delivered", ada)
        await get_channel_layer().group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        html, charts = await receive_frames(ws)
        assert charts == []
        assert [fragment_ids(frame) for frame in html] == [["campaign-stat-opened", "campaign-funnels"]]
        assert opened(html[0]) == "0 · 0"
        assert re.search(r"<td class=\"num\">1 <span class=\"muted small\">33.3%</span></td>", html[0])
        await ws.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_a_socket_that_reconnects_gets_the_whole_dashboard_again(marketer, launched, memory_layer):
    session = cookie_for(marketer)
    ada, bob, _ = Delivery.objects.filter(campaign=launched, status="sent").order_by("pk")
    path = f"/ws/dashboards/campaigns/{launched.pk}/"
    clear_of_the_next_minute()

    def opens_drawn(figure) -> int:
        return sum(sum(trace["y"]) for trace in figure["data"] if trace["name"].startswith("Opens"))

    async def scenario():
        ws = communicator(path, session)
        assert (await ws.connect(timeout=WAIT_SECONDS))[0]
        await receive_update(ws)
        await sync_to_async(apply)("opened", ada)
        await get_channel_layer().group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        await receive_frames(ws)
        await ws.disconnect(timeout=WAIT_SECONDS)
        # Missed while away.
        await sync_to_async(apply)("clicked", bob)

        again = communicator(path, session)
        assert (await again.connect(timeout=WAIT_SECONDS))[0]
        html, charts = await receive_update(again)
        assert fragment_ids(html) == list(CAMPAIGN_FRAGMENTS)
        assert opened(html) == "2 · 1"
        assert opens_drawn(charts["charts"]["series-chart"]) == 2
        assert await again.receive_nothing(timeout=1)
        await again.disconnect(timeout=WAIT_SECONDS)

    asyncio.run(scenario())


def test_the_overview_links_to_campaigns_for_marketers_only(marketer, support, launched, memory_layer):
    """The overview is rendered once for everyone watching it, in a version for each role."""
    link = f'href="/dashboards/campaigns/{launched.pk}/"'

    async def first_push(user):
        ws = communicator("/ws/dashboards/overview/", await sync_to_async(cookie_for)(user))
        assert (await ws.connect(timeout=WAIT_SECONDS))[0]
        html, _ = await receive_update(ws)
        await ws.disconnect(timeout=WAIT_SECONDS)
        return html

    async def scenario():
        marketing, support_html = await first_push(marketer), await first_push(support)
        assert link in marketing and launched.name in marketing
        assert link not in support_html and launched.name in support_html

    asyncio.run(scenario())


def test_sockets_that_hear_of_the_same_change_share_one_render(marketer, launched, settings, memory_layer):
    """200 open dashboards cost one render per change, not one per socket: those that hear
    of a change a little later than the first reuse the render it started."""
    session = cookie_for(marketer)
    group = f"campaign.{launched.pk}"

    def rendered() -> int:
        return live.renders._cache[group][1].serial

    async def scenario():
        sockets = [communicator(f"/ws/dashboards/campaigns/{launched.pk}/", session) for _ in range(10)]
        for ws in sockets:
            assert (await ws.connect(timeout=WAIT_SECONDS))[0]
            await receive_update(ws)
        # Idle for longer than the push interval: each socket pushes as soon as it hears.
        await asyncio.sleep(2 * settings.DASHBOARD_PUSH_INTERVAL)
        before = rendered()
        await get_channel_layer().group_send(group, {"type": "dashboard.changed", "group": group, "id": "one-change"})
        await asyncio.sleep(0.5)
        for ws in sockets:
            assert await ws.receive_nothing(timeout=0.05)  # nothing changed, so nothing to send
        assert rendered() == before + 1
        for ws in sockets:
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
        assert 'id="overview-stat-customers"' in html and 'data-stat="sent-today">3<' in html
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
    delivery = Delivery.objects.filter(campaign=launched, status="sent").first()
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
        await sync_to_async(apply)("opened", delivery)
        await get_channel_layer().group_send(f"campaign.{launched.pk}", {"type": "dashboard.changed", "group": f"campaign.{launched.pk}"})
        html, _ = await receive_frames(other)
        assert opened(html[0]) == "1 · 0"
        await other.disconnect(timeout=5)

    asyncio.run(scenario())
