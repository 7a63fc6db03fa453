"""The live dashboards in headless Chromium, served by a real ASGI server (uvicorn).

Opens and clicks arrive as plain HTTP requests to the tracking endpoints, the way a mail
client would send them; the open dashboard changes without a reload, and says so when its
connection drops and comes back.
"""

import html
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from campaigns import dispatch
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery, SandboxMessage
from campaigns.providers import DeliveryEvent
from tests.campaigns.conftest import audience, make_campaign  # noqa: F401  (the fixture)
from segments.services import static_members_change
from tests.conftest import PASSWORD, WAIT_SECONDS, new_context
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.servers import AsgiServer

pytestmark = [
    pytest.mark.browser,
    # channels-postgres removes sockets from groups through its own database alias.
    pytest.mark.django_db(transaction=True, databases=["default", "channels_postgres"]),
]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "static" / "screenshots"


@pytest.fixture(scope="module")
def running_asgi_server(tmp_path_factory, django_db_setup):
    """One server for the module: starting Django in a new process takes seconds on a busy machine."""
    server = AsgiServer(tmp_path_factory.mktemp("uvicorn") / "uvicorn.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def asgi_server(running_asgi_server):
    server = running_asgi_server
    if server.process.poll() is not None:  # a test that stopped it failed before starting it again
        server.start()
    logged_before = server.log_size()
    yield server
    # Anything the server logged at WARNING or above is a server-side error the page hid.
    logged = server.log(since=logged_before)
    assert "Traceback" not in logged, logged


@pytest.fixture
def sent(audience):  # noqa: F811
    """An email campaign dispatched through the sandbox: ada, bob and fay got it."""
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    deliveries = {
        d.customer.first_name.lower(): d
        for d in Delivery.objects.filter(campaign=campaign, status="sent").select_related("customer")
    }
    assert set(deliveries) == {"ada", "bob", "fay"}
    return campaign, deliveries


def tracked_urls(delivery: Delivery) -> tuple[str, str]:
    """The open pixel's and the sale link's paths, read from the email as it was sent."""
    body = SandboxMessage.objects.get(delivery_id=delivery.pk).rendered["html"]
    pixel = re.search(r'<img src="([^"]+)"', body).group(1)
    click = next(url for url in re.findall(r'href="([^"]+)"', body) if "/t/c/" in html.unescape(url))
    return urlsplit(html.unescape(pixel)).path, urlsplit(html.unescape(click)).path


def sign_in(page, base):
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("marketer")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def chart_sum(page, prefix: str) -> int:
    """The sum of the y values of the series chart's traces named ``prefix…``, as drawn."""
    return page.evaluate(
        """prefix => document.getElementById('series-chart').data
            .filter(trace => trace.name.startsWith(prefix))
            .reduce((sum, trace) => sum + trace.y.reduce((a, b) => a + b, 0), 0)""",
        prefix,
    )


def shoot(page, path: Path, copy_to: Path) -> None:
    """Screenshot into the test's directory; refresh the README's copy only when asked to
    (UPDATE_SCREENSHOTS=1), so running the tests never changes the repository."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy_to)


# asgi_server comes before page in each signature: the browser closes first, so it never sees
# the server go away at teardown (it would log the failed reconnects as console errors).
def test_the_campaign_dashboard_moves_as_opens_and_clicks_arrive(asgi_server, page, shots, marketer, sent):
    campaign, deliveries = sent
    base = asgi_server.base
    sign_in(page, base)
    # What the dashboard's socket receives.
    frames = []
    page.on("websocket", lambda socket: socket.on("framereceived", lambda payload: frames.append(payload)))
    page.goto(f"{base}/dashboards/campaigns/{campaign.pk}/")
    status = page.locator("[data-live-status]")
    expect(status).to_have_attribute("data-state", "live")
    expect(status).to_have_text("Live")
    opened = page.locator('[data-stat="opened"]')
    expect(opened).to_have_text("0 · 0")
    expect(page.locator("#campaign-headline")).to_contain_text("of 3 sent")
    # The first push on connect has already redrawn the chart.
    page.wait_for_function("() => document.getElementById('series-chart').dataset.updated")
    first_update = page.locator("#series-chart").get_attribute("data-updated")
    assert chart_sum(page, "Opens") == 0
    # Proof that nothing below reloads the page.
    page.evaluate("window.__sameDocument = true")

    with httpx.Client(base_url=base, timeout=WAIT_SECONDS) as client:
        ada_pixel, ada_click = tracked_urls(deliveries["ada"])
        bob_pixel, _ = tracked_urls(deliveries["bob"])
        for path in (ada_pixel, ada_pixel, bob_pixel):  # a mail client loading the image twice counts once
            response = client.get(path)
            assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
        response = client.get(ada_click)
        assert response.status_code == 302 and response.headers["location"] == "https://shop.example.com/sale"

    expect(opened).to_have_text("2 · 1")
    funnel = page.locator("#campaign-funnels tbody tr").first  # Email: planned, sent, delivered, opened, clicked…
    expect(funnel.locator("td").nth(3)).to_have_text("2 66.7%")
    expect(funnel.locator("td").nth(4)).to_have_text("1 33.3%")
    page.wait_for_function(
        """first => {
            const chart = document.getElementById('series-chart');
            const sum = prefix => chart.data.filter(t => t.name.startsWith(prefix))
                .reduce((s, t) => s + t.y.reduce((a, b) => a + b, 0), 0);
            return chart.dataset.updated !== first && sum('Opens') === 2 && sum('Clicks') === 1;
        }""",
        arg=first_update,
    )
    assert page.evaluate("window.__sameDocument") is True
    expect(status).to_have_attribute("data-state", "live")
    # The first push was the whole dashboard; the later ones carried only what changed: the
    # opens tile and the funnel, and the chart's values rather than its figure (which goes
    # again only when its layout changes, such as the y range of small counts, or a new
    # minute joins the chart).
    html = [frame for frame in frames if not frame.startswith("{")]
    charts = [json.loads(frame) for frame in frames if frame.startswith("{")]
    assert 'id="campaign-stat-status"' in html[0] and 'id="campaign-side"' in html[0]
    assert len(html) > 1
    assert all('id="campaign-stat-status"' not in h and 'id="campaign-side"' not in h for h in html[1:])
    assert all(re.search(r'data-stat="opened">[\d,]+ · [\d,]+<', h) for h in html)
    figure = charts[0]["charts"]["series-chart"]
    assert len(charts) > 1
    for update in charts[1:]:
        if "charts" in update:
            drawn, figure = figure, update["charts"]["series-chart"]
            assert figure["layout"] != drawn["layout"] or len(figure["data"][0]["x"]) > len(drawn["data"][0]["x"])
        else:
            assert update["points"]["series-chart"]
    shoot(page, shots / "campaign-dashboard.png", SCREENSHOTS / "campaign-dashboard.png")

    # Bob clicks: the clicks line climbs to the opens' peak, so the chart keeps its layout
    # and the page redraws it from the changed values alone.
    seen = len(frames)
    _, bob_click = tracked_urls(deliveries["bob"])
    assert httpx.get(f"{base}{bob_click}", timeout=WAIT_SECONDS).status_code == 302
    expect(opened).to_have_text("2 · 2")
    expect(funnel.locator("td").nth(4)).to_have_text("2 66.7%")
    page.wait_for_function("() => document.getElementById('series-chart').data"
                           ".filter(t => t.name.startsWith('Clicks')).some(t => t.y.includes(2))")
    assert chart_sum(page, "Opens") == 2 and chart_sum(page, "Clicks") == 2
    later = [json.loads(frame) for frame in frames[seen:] if frame.startswith("{")]
    assert later and all("points" in update or "charts" in update for update in later)
    if not any(len(update["charts"]["series-chart"]["data"][0]["x"]) > len(figure["data"][0]["x"])
               for update in later if "charts" in update):  # unless a new minute began meanwhile
        assert all(list(update) == ["points"] for update in later)

    # The overview shows today's sends, and moves too.
    page.goto(f"{base}/")
    expect(status).to_have_attribute("data-state", "live")
    expect(page.locator('[data-stat="sent-today"]')).to_have_text("3")
    today = page.locator('[data-stat="opened-today"]')
    expect(today).to_have_text("2 · 2")
    _, fay_click = tracked_urls(deliveries["fay"])
    assert httpx.get(f"{base}{fay_click}", timeout=WAIT_SECONDS).status_code == 302
    expect(today).to_have_text("3 · 3")  # a click implies the open
    expect(page.locator("#overview-channels")).to_contain_text("Email")
    shoot(page, shots / "overview.png", SCREENSHOTS / "overview.png")


def test_the_dashboard_says_when_it_loses_the_server_and_catches_up_when_it_is_back(
    asgi_server, page, marketer, sent
):
    """Stop the server under an open dashboard, change a figure meanwhile, start it again.

    While the server is down the browser logs each failed reconnect attempt as a console
    error (Chromium's "WebSocket connection … failed", and htmx's wsError as "[object Event]"). So this
    runs in a browser context of its own: those two are tolerated, and only between the
    stop and the restart; any other error, or any error outside the outage, fails.
    """
    campaign, deliveries = sent
    base = asgi_server.base
    context = new_context(page.context.browser)
    watcher = context.new_page()
    phase, errors = ["before"], []
    watcher.on("pageerror", lambda error: errors.append((phase[0], "pageerror", str(error))))
    watcher.on("console", lambda m: errors.append((phase[0], "console", m.text)) if m.type == "error" else None)

    sign_in(watcher, base)
    watcher.goto(f"{base}/dashboards/campaigns/{campaign.pk}/")
    status = watcher.locator("[data-live-status]")
    expect(status).to_have_attribute("data-state", "live")
    expect(watcher.locator('[data-stat="opened"]')).to_have_text("0 · 0")
    watcher.evaluate("window.__sameDocument = true")

    phase[0] = "outage"
    asgi_server.stop()
    expect(status).to_have_attribute("data-state", "down")
    expect(status).to_contain_text("reconnecting")
    # A click recorded while the dashboard cannot hear about it…
    delivery_events_apply(events=[DeliveryEvent("clicked", timezone.now(), delivery_id=deliveries["bob"].pk)])
    # Let a reconnect attempt fail before the server is back.
    if not any(when == "outage" and kind == "console" for when, kind, _ in errors):
        watcher.wait_for_event("console", predicate=lambda message: message.type == "error")
    asgi_server.start()
    # …htmx retries with full-jitter backoff (at most 1, 2, 4, 8 s for the first retries).
    expect(status).to_have_attribute("data-state", "live")
    phase[0] = "after"
    # …and the push on reconnecting catches the page up, without a reload.
    expect(watcher.locator('[data-stat="opened"]')).to_have_text("1 · 1")
    watcher.wait_for_function(
        """() => document.getElementById('series-chart').data.filter(t => t.name.startsWith('Clicks'))
            .reduce((s, t) => s + t.y.reduce((a, b) => a + b, 0), 0) === 1"""
    )
    expect(status).to_have_text("Live")
    assert watcher.evaluate("window.__sameDocument") is True
    context.close()

    def expected(entry):
        when, kind, text = entry
        return when == "outage" and kind == "console" and (
            re.match(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws/dashboards/campaigns/\d+/' failed", text)
            or text == "[object Event]"
        )

    assert [entry for entry in errors if not expected(entry)] == []


def test_a_form_in_a_pushed_card_still_submits(asgi_server, page, marketer, audience):  # noqa: F811
    """Pushed fragments are rendered once for every viewer, without anyone's CSRF token: the
    A/B test card's "Send the remainder" form, replaced by a push, must still post."""
    from campaigns.models import Campaign
    from campaigns.services.compose import VariantInput

    # Who is in the test group is drawn from a hash of the campaign and customer ids: with the
    # audience's three reachable customers, one run in a thousand put none of them in it.
    # Eight more leave no realistic chance (0.1^11) that nobody gets the test's email.
    more = [CustomerFactory(timezone="UTC") for _ in range(8)]
    for customer in more:
        SubscriptionFactory(customer=customer, topic=audience["topic"], channel="email")
    static_members_change(segment=audience["segment"], add=True, ids=[c.pk for c in more], actor="test")
    content = {"email": {"subject": "Winter sale", "html": "<p>Hi</p><a href='https://shop.example.com/sale'>Sale</a>",
                         "text": ""}}
    campaign = make_campaign(
        audience, channels=("email",), test_percent=90, test_metric="click", test_hours=6,
        variants=[VariantInput(key="A", content=content),
                  VariantInput(key="B", content={"email": {**content["email"], "subject": "Sale!"}})],
    )
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    sent = list(Delivery.objects.filter(campaign=campaign, status="sent").order_by("id"))
    base = asgi_server.base
    sign_in(page, base)
    page.goto(f"{base}/dashboards/campaigns/{campaign.pk}/")
    expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live")
    form = page.locator(f"form[action='/campaigns/{campaign.pk}/send-remainder/']")
    expect(form).to_be_visible()
    # A click changes the test card: the push replaces it, form and all.
    page.evaluate("() => { document.querySelector('form[action*=send-remainder]').dataset.original = '1'; }")
    _, click = tracked_urls(sent[0])
    assert httpx.get(f"{base}{click}", timeout=WAIT_SECONDS).status_code == 302
    expect(form).not_to_have_attribute("data-original", "1")
    assert form.locator("input[name=csrfmiddlewaretoken]").count() == 0  # rendered for nobody in particular
    form.get_by_role("button").click()
    expect(page.locator("#flash")).to_contain_text("The rest of the audience gets variant")
    assert Campaign.objects.get(pk=campaign.pk).winner_decided_at is not None
