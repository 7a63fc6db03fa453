"""The real Segment and RudderStack SDKs, pointed at a real server, send what a user then
sees on the customers' timelines and profiles."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from customers.models import ApiKey, Customer, Event
from customers.services import api_keys
from tests.conftest import WAIT_SECONDS
from tests.servers import AsgiServer

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def running_server(tmp_path_factory, django_db_setup):
    """One server for the module: starting Django in a new process takes seconds on a busy machine."""
    server = AsgiServer(tmp_path_factory.mktemp("uvicorn") / "uvicorn.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(running_server):
    logged_before = running_server.log_size()
    yield running_server
    logged = running_server.log(since=logged_before)
    assert "Traceback" not in logged, logged


@pytest.fixture
def write_key(db) -> str:
    _, raw = api_keys.api_key_create(name="sdk", scope=ApiKey.Scope.SOURCE)
    return raw


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"waited {WAIT_SECONDS} s for {what}")


def events(customer: Customer, name: str) -> list[Event]:
    return list(Event.objects.filter(customer=customer, name=name).order_by("occurred_at", "id"))


def test_segment_python_sdk_gzipped_batches_profiles_events_and_a_merge(server, write_key, customer):
    from segment.analytics.client import Client

    errors = []
    client = Client(write_key=write_key, host=server.base, gzip=True, max_retries=0,
                    on_error=lambda error, batch: errors.append(error))
    context = {"app": {"name": "Shop", "version": "2.1"}, "campaign": {"source": "newsletter", "medium": "email"}}
    client.page(anonymous_id="py-visitor-1", name="Pricing", category="Docs", properties={"path": "/pricing"},
                context=context)
    client.track(anonymous_id="py-visitor-1", event="Trial Started", properties={"plan": "pro"})
    client.flush()
    visitor = wait_for(lambda: Customer.objects.filter(anonymous_id="py-visitor-1").first(), "the visitor")
    assert not errors, errors
    # Before anyone knows who it is, the visitor has a timeline of its own.
    assert {"page_viewed", "Trial Started"} <= set(Event.objects.filter(customer=visitor).values_list("name", flat=True))

    client.identify(user_id="crm-ada", anonymous_id="py-visitor-1",
                    traits={"email": "ada@example.com", "phone": "+44 20 7946 0958", "company": "Analytical"})
    client.track(user_id="crm-ada", event="Order Completed", properties={"total": 99.5}, message_id="order-1")
    client.track(user_id="crm-ada", event="Order Completed", properties={"total": 99.5}, message_id="order-1")
    client.flush()
    assert not errors, errors

    customer.refresh_from_db()
    assert customer.phone == "+442079460958" and customer.attributes["company"] == "Analytical"
    # The visitor's page view and trial moved to Ada's timeline, with their context.
    (page,) = events(customer, "page_viewed")
    assert page.properties["name"] == "Pricing" and page.properties["path"] == "/pricing"
    assert page.properties["context"]["campaign"] == {"source": "newsletter", "medium": "email"}
    assert page.properties["context"]["library"]["name"] == "analytics-python"
    assert [e.properties["plan"] for e in events(customer, "Trial Started")] == ["pro"]
    (merged,) = events(customer, "customer.merged")
    assert merged.properties["anonymous_id"] == "py-visitor-1" and merged.properties["events_moved"] == 2
    # The retried order (same messageId) is stored once.
    assert len(events(customer, "Order Completed")) == 1
    client.shutdown()


def test_rudderstack_python_sdk(server, write_key):
    from rudderstack.analytics.client import Client

    errors = []
    client = Client(write_key=write_key, host=server.base, max_retries=0,
                    on_error=lambda error, batch: errors.append(error))
    client.identify(user_id="rs-1", traits={"firstName": "Grace", "lastName": "Hopper", "plan": "team"})
    client.track(user_id="rs-1", event="Report Exported", properties={"format": "csv"},
                 context={"device": {"type": "desktop"}}, message_id="rs-m-1")
    client.flush()
    client.track(user_id="rs-1", event="Report Exported", properties={"format": "csv"}, message_id="rs-m-1")
    client.flush()
    assert not errors, errors
    grace = Customer.objects.get(external_id="rs-1")
    assert (grace.first_name, grace.last_name, grace.attributes) == ("Grace", "Hopper", {"plan": "team"})
    (exported,) = events(grace, "Report Exported")
    assert exported.properties["format"] == "csv"
    assert exported.properties["context"]["device"] == {"type": "desktop"}
    client.shutdown()


NODE_SCRIPT = """
const { Analytics } = require('@segment/analytics-node')
const analytics = new Analytics({ writeKey: process.env.WRITE_KEY, host: process.env.HOST, flushAt: 10,
                                  flushInterval: 200, maxRetries: 0 })
analytics.on('error', (error) => { console.error('error', JSON.stringify(error)); process.exitCode = 1 })
analytics.track({ anonymousId: 'node-visitor', event: 'Video Played', properties: { title: 'Intro' },
                  context: { device: { type: 'mobile' } } })
analytics.screen({ anonymousId: 'node-visitor', name: 'Player', properties: { seconds: 30 } })
analytics.identify({ userId: 'node-user', anonymousId: 'node-visitor',
                     traits: { name: 'Katherine Johnson', email: 'kj@example.com', locale: 'en-US' } })
analytics.group({ userId: 'node-user', groupId: 'nasa', traits: { name: 'NASA' } })
analytics.closeAndFlush().then(() => console.log('flushed'))
"""


def test_segment_node_sdk(server, write_key):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed")
    finished = subprocess.run([node, "-e", NODE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                              timeout=2 * WAIT_SECONDS, env={"PATH": "/usr/bin:/bin", "WRITE_KEY": write_key,
                                                             "HOST": server.base})
    assert finished.returncode == 0 and "flushed" in finished.stdout, finished.stderr
    katherine = Customer.objects.get(external_id="node-user")
    assert (katherine.first_name, katherine.last_name, katherine.email, katherine.locale) == (
        "Katherine", "Johnson", "kj@example.com", "en-US")
    assert katherine.attributes == {"group_id": "nasa", "group": {"name": "NASA"}}
    (played,) = events(katherine, "Video Played")
    assert played.properties["title"] == "Intro" and played.properties["context"]["device"] == {"type": "mobile"}
    (screen,) = events(katherine, "screen_viewed")
    assert screen.properties["name"] == "Player" and screen.properties["seconds"] == 30
    assert len(events(katherine, "customer.merged")) == 1
    visitor = Customer.objects.get(anonymous_id="node-visitor")
    assert visitor.merged_into_id == katherine.pk
