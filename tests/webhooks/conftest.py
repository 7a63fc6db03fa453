import time

import pytest

from tests.conftest import WAIT_SECONDS
from tests.fakes.standard_webhooks import StandardWebhooksReceiver
from webhooks import sender, services


@pytest.fixture(autouse=True)
def quick_webhooks(settings):
    """The receivers listen on 127.0.0.1 (allowed by name); retries wait a second, not hours."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    settings.WEBHOOK_RETRY_SCHEDULE = [1, 1, 1]
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    settings.WEBHOOK_LEASE_SECONDS = 10


@pytest.fixture
def receiver():
    with StandardWebhooksReceiver() as fake:
        yield fake


@pytest.fixture
def other_receiver():
    with StandardWebhooksReceiver() as fake:
        yield fake


def register(receiver, events=("*",), **kwargs):
    """An endpoint for ``receiver``, whose secret the receiver then trusts."""
    endpoint = services.endpoint_create(url=receiver.url, events=list(events), actor="test", **kwargs)
    receiver.secrets.append(endpoint.secret)
    return endpoint


def deliver_until(condition, *, what: str = "the messages to arrive"):
    """Run the minute's catch-up (the sender) until ``condition()`` holds, or fail."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        sender.deliver_due(budget_seconds=5)
        if not condition():
            time.sleep(0.05)
