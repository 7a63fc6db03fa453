"""The open pixel and click redirect as mail clients reach them: through the real ASGI server,
whose tracking route queues each hit and answers once it is stored, and whose drainer applies
the queue. Counted once however many copies arrive at once, never lost once answered, even
when the server is killed before applying what it answered."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from django.db import connection

from campaigns import dispatch, links
from campaigns.engagement import engagement_drain, engagement_drain_all
from campaigns.models import Campaign, Delivery, EngagementHit, Link
from campaigns.queries import campaign_summary
from campaigns.services.lifecycle import campaign_launch
from campaigns.tasks import tick
from customers.models import Event
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.servers import AsgiServer

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"])


@pytest.fixture
def sent(audience):
    """An email campaign sent to ada, bob and fay; their deliveries and one tracked link."""
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 3
    deliveries = {d.customer.first_name.lower(): d
                  for d in Delivery.objects.filter(campaign=campaign, status="sent").select_related("customer")}
    link = Link.objects.get(url="https://shop.example.com/sale")
    return {"campaign": campaign, "deliveries": deliveries, "link": link, **audience}


def pixel(delivery) -> str:
    return urlsplit(links.open_url(delivery.pk)).path


def click(delivery, link) -> str:
    return urlsplit(links.click_url(delivery.pk, link.pk)).path


def totals(campaign) -> dict:
    return campaign_summary(Campaign.objects.get(pk=campaign.pk))["totals"]


def wait_until(condition, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(workers: int = 1, **env) -> AsgiServer:
        started = AsgiServer(tmp_path / f"uvicorn-{len(servers)}.log", env={k: str(v) for k, v in env.items()},
                             workers=workers)
        started.start()
        servers.append(started)
        return started

    yield start
    for started in servers:
        started.stop()
    for started in servers:
        # Django logs a refused Host header with its traceback; nothing else may be logged so.
        logged = started.log()
        assert logged.count("Traceback") == logged.count("exceptions.DisallowedHost:"), logged


def test_simultaneous_first_opens_and_clicks_through_the_route_count_once(sent, server):
    """Image proxies and link scanners fetch at once, across both server processes."""
    asgi = server(workers=2)
    link = sent["link"]
    paths = [pixel(d) for d in sent["deliveries"].values()] * 20 + [click(d, link) for d in sent["deliveries"].values()] * 20
    barrier = threading.Barrier(24)

    def get(path):
        with httpx.Client(base_url=asgi.base, timeout=WAIT_SECONDS) as http:
            barrier.wait()
            return path, http.get(path)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(get, paths))
    for path, response in answers:
        if "/t/o/" in path:
            assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
            assert response.content.startswith(b"GIF89a") and len(response.content) == 43
            assert "no-store" in response.headers["cache-control"]
        else:
            assert response.status_code == 302 and response.headers["location"] == "https://shop.example.com/sale"
    # Applied by the servers' own drainers, in the background.
    wait_until(lambda: totals(sent["campaign"]).get("clicked") == 3 and not EngagementHit.objects.exists(),
               "every hit applied")
    counts = totals(sent["campaign"])
    assert (counts["opened"], counts["clicked"]) == (3, 3)
    for delivery in sent["deliveries"].values():
        delivery.refresh_from_db()
        assert delivery.status == "clicked" and delivery.opened_at and delivery.clicked_at
        assert Event.objects.filter(customer=delivery.customer, name="message.opened").count() == 1
        assert Event.objects.filter(customer=delivery.customer, name="message.clicked").count() == 1


def test_a_hit_answered_just_before_the_server_is_killed_is_applied_after_restart(sent, server):
    ada = sent["deliveries"]["ada"]
    # A server whose drainer does not run: what it answers stays queued.
    first = server(TRACKING_DRAIN_IN_WEB=0)
    response = httpx.get(first.base + pixel(ada), timeout=WAIT_SECONDS)
    assert response.status_code == 200
    assert list(EngagementHit.objects.values_list("delivery_id", "kind")) == [(ada.pk, "opened")]
    first.kill()
    ada.refresh_from_db()
    assert ada.opened_at is None and totals(sent["campaign"]).get("opened", 0) == 0

    # The restarted server applies it without any new hit: its first request of any kind
    # (here the readiness check's login page) starts the drainer.
    server()
    wait_until(lambda: Delivery.objects.get(pk=ada.pk).opened_at is not None, "the queued open applied")
    assert totals(sent["campaign"])["opened"] == 1
    assert Event.objects.filter(customer=ada.customer, name="message.opened").count() == 1
    assert not EngagementHit.objects.exists()


def test_what_no_web_process_applies_the_minute_tick_does(sent, server):
    asgi = server(TRACKING_DRAIN_IN_WEB=0)
    bob = sent["deliveries"]["bob"]
    assert httpx.get(asgi.base + click(bob, sent["link"]), timeout=WAIT_SECONDS).status_code == 302
    assert EngagementHit.objects.count() == 1
    assert tick()["engagement_applied"] == 1
    counts = totals(sent["campaign"])
    assert (counts["opened"], counts["clicked"]) == (1, 1)


def test_racing_drains_apply_each_hit_once(sent):
    """Two processes draining the same queue: SKIP LOCKED splits it, the row locks settle repeats."""
    ada, bob = sent["deliveries"]["ada"], sent["deliveries"]["bob"]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO campaigns_engagementhit (delivery_id, kind) "
            "SELECT d, k FROM unnest(%s::bigint[]) d, unnest(%s::text[]) k, generate_series(1, 50)",
            [[ada.pk, bob.pk], ["opened", "clicked"]],
        )
    barrier = threading.Barrier(2)

    def drain():
        from django.db import connections

        try:
            barrier.wait()
            return sum(iter(lambda: engagement_drain(limit=37), 0))
        finally:
            connections.close_all()

    with ThreadPoolExecutor(2) as pool:
        applied = sum(pool.map(lambda _: drain(), range(2)))
    assert applied == 200
    counts = totals(sent["campaign"])
    assert (counts["opened"], counts["clicked"]) == (2, 2)
    assert Event.objects.filter(name="message.opened").count() == 2
    assert engagement_drain_all() == 0


def test_the_route_gives_the_answers_django_gave(sent, server):
    asgi = server()
    ada, link = sent["deliveries"]["ada"], sent["link"]
    with httpx.Client(base_url=asgi.base, timeout=WAIT_SECONDS) as http:
        # A proxy checking the image is not a reader.
        head = http.head(pixel(ada))
        assert head.status_code == 200 and head.headers["content-type"] == "image/gif"
        # Forged or mangled pixels still answer the image, and record nothing.
        forged = pixel(ada)[:-5] + ("A" if pixel(ada)[-5] != "A" else "B") + ".gif"
        for path in (forged, "/t/o/nonsense.gif", f"/t/o/{links.sign(str(ada.pk), links.CLICK_SALT)}.gif"):
            response = http.get(path)
            assert response.status_code == 200 and response.content.startswith(b"GIF89a"), path
        # Links that do not verify, or name no stored link, get Django's page.
        for path in (f"/t/c/{links.sign(f'{ada.pk}.999999', links.CLICK_SALT)}", "/t/c/nonsense",
                     click(ada, link)[:-1] + "x"):
            response = http.get(path)
            assert response.status_code == 404 and "link" in response.text.lower(), path
            assert response.headers["x-robots-tag"] == "noindex, nofollow"  # Django's invalid-link page
        # Other methods and unknown hosts are Django's too.
        assert http.post(pixel(ada)).status_code in (403, 405)
        assert http.get(pixel(ada), headers={"host": "evil.example"}).status_code == 400
        # Whatever the request adds, the destination is the stored one.
        response = http.get(click(ada, link), params={"url": "https://evil.example/"})
        assert response.status_code == 302 and response.headers["location"] == "https://shop.example.com/sale"
        assert response.headers["x-content-type-options"] == "nosniff" and not response.cookies
    wait_until(lambda: totals(sent["campaign"]).get("clicked") == 1, "the click applied")
    assert totals(sent["campaign"])["opened"] == 1  # the click implies the open; HEAD and forgeries count nothing
