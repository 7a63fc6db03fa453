"""The webhook node: signed POSTs to a real receiver on loopback, retries with backoff, the
host allow-list and the refusal of internal addresses, and workers that never send twice."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from journeys import executor, webhooks
from journeys.models import Enrollment, Step, WebhookCall
from journeys.webhooks import url_problem
from tests.factories import CustomerFactory
from tests.fakes.webhook import FakeWebhookReceiver
from tests.journeys.factories import live_version, waiting_at, webhook_call, webhook_graph

SECRET = "receiver-shares-this-secret"


@pytest.fixture
def loopback_allowed(settings):
    """The test receiver listens on 127.0.0.1, an internal address: allow it by name."""
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.JOURNEY_WEBHOOK_SECRET = SECRET
    settings.JOURNEY_WEBHOOK_TIMEOUT_SECONDS = 5


@pytest.fixture
def receiver():
    with FakeWebhookReceiver() as fake:
        yield fake


def waiting_call(url: str, *, context=None, **config):
    """A customer waiting at the webhook node ``hook``, and the call its step wrote."""
    version = live_version(webhook_graph(url, **config))
    enrollment = waiting_at(version, "hook", context=context or {"entry": {"cart_id": "A1"}})
    return enrollment, webhook_call(enrollment, url)


def where(enrollment) -> tuple[str, str]:
    enrollment.refresh_from_db()
    return enrollment.node, enrollment.status


# --- Sending and answers ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_post_is_signed_and_its_json_answer_goes_into_the_journey_context(loopback_allowed, receiver):
    receiver.default = (200, {"tier": "gold", "score": 7})
    enrollment, call = waiting_call(f"{receiver.url}/hooks/crm?src=journey", store_as="crm")
    before = int(time.time())

    result = webhooks.send_due()

    assert result["sent"] == 1
    (request,) = receiver.received
    assert request.path == "/hooks/crm?src=journey"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Switchboard-Journeys"
    assert request.headers["idempotency-key"] == call.idempotency_key == f"{enrollment.pk}:hook:3"
    assert before <= int(request.headers["x-switchboard-timestamp"]) <= int(time.time())
    assert request.signature_valid(SECRET)
    assert not request.signature_valid("another secret")
    assert request.json == call.payload
    call.refresh_from_db()
    assert (call.status, call.response_status, call.response, call.attempts) == ("sent", 200, {"tier": "gold", "score": 7}, 1)
    assert call.finished_at is not None and call.lease_until is None
    # The journey went on by "ok", with the answer stored under store_as for later conditions.
    assert where(enrollment) == ("after-ok", "waiting")
    enrollment.refresh_from_db()
    assert enrollment.context == {"entry": {"cart_id": "A1"}, "crm": {"tier": "gold", "score": 7}}
    assert Step.objects.get(enrollment=enrollment, node="hook").port == "ok"


@pytest.mark.django_db
def test_a_tampered_body_does_not_verify(loopback_allowed, receiver):
    waiting_call(f"{receiver.url}/hook")
    webhooks.send_due()
    (request,) = receiver.received
    request.body = request.body.replace(b"A1", b"B2")
    assert not request.signature_valid(SECRET)


@pytest.mark.django_db
def test_an_answer_that_is_not_a_json_object_is_not_kept(loopback_allowed, receiver):
    receiver.script = [(200, [1, 2, 3]), (204, b""), (200, "thanks")]
    calls = [waiting_call(f"{receiver.url}/hook", store_as="crm") for _ in range(3)]
    webhooks.send_due()
    for enrollment, call in calls:
        call.refresh_from_db()
        assert call.status == "sent" and call.response is None
        assert where(enrollment) == ("after-ok", "waiting")
        assert enrollment.context["crm"] is None


@pytest.mark.django_db
def test_without_a_configured_secret_a_stable_one_is_derived_from_the_secret_key(loopback_allowed, receiver, settings):
    settings.JOURNEY_WEBHOOK_SECRET = ""
    derived = webhooks.signing_secret()
    assert derived and derived == webhooks.signing_secret() and settings.SECRET_KEY not in derived
    settings.SECRET_KEY = settings.SECRET_KEY + "-rotated"
    assert webhooks.signing_secret() != derived
    settings.SECRET_KEY = settings.SECRET_KEY.removesuffix("-rotated")

    waiting_call(f"{receiver.url}/hook")
    webhooks.send_due()
    (request,) = receiver.received
    assert request.signature_valid(derived)


# --- Retries -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_500_is_retried_with_backoff_and_the_next_success_moves_the_journey_on(loopback_allowed, receiver):
    receiver.script = [(500, "database is down"), (200, {"ok": True})]
    enrollment, call = waiting_call(f"{receiver.url}/hook")
    start = timezone.now()

    assert webhooks.send_due(now=start)["retrying"] == 1
    call.refresh_from_db()
    assert (call.status, call.attempts, call.response_status) == ("pending", 1, 500)
    assert "HTTP 500: database is down" in call.last_error
    # 30 s for the first retry, with up to 20 % jitter either way.
    assert start + timedelta(seconds=24) <= call.next_attempt_at <= start + timedelta(seconds=36)
    assert call.lease_until is None
    assert where(enrollment) == ("hook", "waiting")

    # Not due yet: nothing is sent.
    assert webhooks.send_due(now=start + timedelta(seconds=20))["claimed"] == 0
    assert len(receiver.received) == 1

    assert webhooks.send_due(now=call.next_attempt_at)["sent"] == 1
    call.refresh_from_db()
    assert (call.status, call.attempts, call.response_status) == ("sent", 2, 200)
    assert receiver.keys() == [call.idempotency_key] * 2
    assert where(enrollment) == ("after-ok", "waiting")


def test_backoff_doubles_with_jitter_up_to_an_hour():
    for attempt, seconds in ((1, 30), (2, 60), (3, 120), (5, 480)):
        waits = {webhooks.backoff(attempt).total_seconds() for _ in range(50)}
        assert all(0.8 * seconds <= wait <= 1.2 * seconds for wait in waits), (attempt, waits)
        assert len(waits) > 1  # jittered
    assert all(2880 <= webhooks.backoff(12).total_seconds() <= 3600 for _ in range(50))
    assert webhooks.backoff(1, retry_after=600).total_seconds() == 600


@pytest.mark.django_db
def test_429_is_retried_no_sooner_than_retry_after_asks(loopback_allowed, receiver):
    receiver.script = [(429, {"error": "slow down"}, {"Retry-After": "300"})]
    _, call = waiting_call(f"{receiver.url}/hook")
    start = timezone.now()
    webhooks.send_due(now=start)
    call.refresh_from_db()
    assert call.status == "pending" and call.response_status == 429
    assert call.next_attempt_at >= start + timedelta(seconds=300)


@pytest.mark.django_db
def test_a_4xx_fails_at_once_and_the_journey_takes_the_failed_branch(loopback_allowed, receiver):
    receiver.script = [(404, {"error": "no such hook"})]
    enrollment, call = waiting_call(f"{receiver.url}/hook", retries=5)
    assert webhooks.send_due()["failed"] == 1
    call.refresh_from_db()
    assert (call.status, call.attempts, call.response_status) == ("failed", 1, 404)
    assert call.last_error.startswith("HTTP 404")
    assert len(receiver.received) == 1
    assert where(enrollment) == ("after-failed", "waiting")
    assert Step.objects.get(enrollment=enrollment, node="hook").port == "failed"


@pytest.mark.django_db
def test_when_the_retries_run_out_the_call_fails(loopback_allowed, receiver):
    receiver.script = [503, 503, 503]
    enrollment, call = waiting_call(f"{receiver.url}/hook", retries=1)
    now = timezone.now()
    webhooks.send_due(now=now)
    call.refresh_from_db()
    assert call.status == "pending"
    webhooks.send_due(now=call.next_attempt_at)
    call.refresh_from_db()
    assert (call.status, call.attempts) == ("failed", 2)
    assert "Gave up after 2 attempts" in call.last_error
    assert len(receiver.received) == 2
    assert where(enrollment) == ("after-failed", "waiting")


@pytest.mark.django_db
def test_no_answer_within_the_nodes_timeout_is_retried(loopback_allowed, receiver):
    receiver.delay = 2
    enrollment, call = waiting_call(f"{receiver.url}/slow", timeout_seconds=1)
    started = time.monotonic()
    webhooks.send_due()
    assert time.monotonic() - started < 2
    call.refresh_from_db()
    assert call.status == "pending" and call.attempts == 1
    assert call.last_error.startswith("No answer within 1 s")
    assert where(enrollment) == ("hook", "waiting")


@pytest.mark.django_db
def test_a_receiver_that_is_down_is_retried(loopback_allowed):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    _, call = waiting_call(f"http://127.0.0.1:{port}/hook")
    webhooks.send_due()
    call.refresh_from_db()
    assert call.status == "pending" and call.attempts == 1 and "ConnectError" in call.last_error


@pytest.mark.django_db
def test_a_redirect_is_not_followed(loopback_allowed, receiver):
    receiver.script = [(302, b"", {"Location": "http://169.254.169.254/latest/meta-data"})]
    enrollment, call = waiting_call(f"{receiver.url}/hook")
    webhooks.send_due()
    call.refresh_from_db()
    assert call.status == "failed" and "redirects are not followed" in call.last_error
    assert len(receiver.received) == 1
    assert where(enrollment) == ("after-failed", "waiting")


@pytest.mark.django_db
def test_a_call_whose_customer_left_the_journey_is_not_sent(loopback_allowed, receiver):
    enrollment, call = waiting_call(f"{receiver.url}/hook")
    Enrollment.objects.filter(pk=enrollment.pk).update(status="exited", ended_at=timezone.now())
    webhooks.send_due()
    call.refresh_from_db()
    assert call.status == "failed" and "left the journey" in call.last_error
    assert receiver.received == []


# --- Where webhooks may go --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook",
    "http://127.0.0.1:8000/hook",
    "http://10.0.0.1/hook",
    "http://192.168.1.20/hook",
    "http://172.16.5.4/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
    "http://2130706433/hook",  # 127.0.0.1 as one number
    "http://0x7f.1/hook",
    "http://127.1/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://printer.local/",
    "http://redis:6379/",  # a name without a dot: a host on the local network
])
def test_internal_destinations_are_refused(url, settings):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    assert url_problem(url) is not None


@pytest.mark.parametrize("url, problem", [
    (None, "must be a URL"),
    ("", "must be a URL"),
    ("https://example.com/" + "x" * 2000, "at most 2,000"),
    ("ftp://example.com/file", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("https:///no-host", "http or https"),
    ("https://example.com:99999/", "valid"),
    ("https://user:secret@example.com/", "user name or password"),
])
def test_malformed_urls_are_refused(url, problem, settings):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    assert problem in url_problem(url)


def test_public_hosts_are_allowed_without_an_allow_list(settings):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    for url in ("https://hooks.example.com/journeys", "http://93.184.216.34:8080/x", "https://[2606:4700::1111]/"):
        assert url_problem(url) is None, url


def test_with_an_allow_list_only_its_hosts_are_allowed(settings):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = [".example.com", "crm.partner.io", "127.0.0.1"]
    assert url_problem("https://example.com/x") is None
    assert url_problem("https://hooks.eu.example.com/x") is None
    assert url_problem("https://crm.partner.io/x") is None
    assert url_problem("http://127.0.0.1:8000/x") is None  # listed, so allowed though internal
    assert "not an allowed webhook host" in url_problem("https://evil.com/x")
    assert "not an allowed webhook host" in url_problem("https://notexample.com/x")
    assert "not an allowed webhook host" in url_problem("https://sub.crm.partner.io/x")
    assert "not an allowed webhook host" in url_problem("http://10.0.0.1/x")


def test_graph_validation_names_the_refused_url(settings):
    from journeys.graph import Catalog, problems

    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    catalog = Catalog(topics={}, transactional=set(), segments=set(), actions=set())
    found = problems(webhook_graph("http://10.0.0.1/hook"), catalog)
    assert [(p.node, p.field) for p in found] == [("hook", "config.url")]
    assert "internal address" in found[0].message


@pytest.mark.django_db
def test_loopback_is_refused_when_sending_unless_allowed(receiver, settings):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    # Written while 127.0.0.1 was allowed; the setting changed since.
    enrollment, call = waiting_call(f"{receiver.url}/hook", retries=5)
    assert webhooks.send_due()["failed"] == 1
    call.refresh_from_db()
    assert call.status == "failed" and call.attempts == 1
    assert call.last_error == "Refused: the URL must not point at an internal address (127.0.0.1)."
    assert receiver.received == []
    assert where(enrollment) == ("after-failed", "waiting")


@pytest.fixture
def dns(monkeypatch):
    """A resolver for made-up names (answers in order; the last one repeats); every other name
    and every IP goes to the system's."""
    answers: dict[str, list[str]] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name in answers:
            asked.append(name)
            queue = answers[name]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, asked


@pytest.mark.django_db
def test_a_public_name_that_resolves_to_an_internal_address_is_refused(receiver, settings, dns):
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = []
    answers, _ = dns
    answers["hooks.example.com"] = ["127.0.0.1"]
    url = f"http://hooks.example.com:{receiver.port}/hook"
    assert url_problem(url) is None  # nothing wrong with the name itself
    enrollment, call = waiting_call(url)
    webhooks.send_due()
    call.refresh_from_db()
    assert call.status == "failed"
    assert call.last_error == "Refused: hooks.example.com resolves to the internal address 127.0.0.1."
    assert receiver.received == []
    assert where(enrollment) == ("after-failed", "waiting")


@pytest.mark.django_db
def test_the_request_goes_to_the_address_that_was_checked(receiver, settings, dns):
    """DNS rebinding: a second lookup would answer another address; there is none."""
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = [".example.com"]
    settings.JOURNEY_WEBHOOK_SECRET = SECRET
    answers, asked = dns
    answers["hooks.example.com"] = ["127.0.0.1", "10.255.255.1"]
    enrollment, call = waiting_call(f"http://hooks.example.com:{receiver.port}/hook", timeout_seconds=2)
    assert webhooks.send_due()["sent"] == 1
    (request,) = receiver.received
    assert request.headers["host"] == f"hooks.example.com:{receiver.port}"
    assert request.signature_valid(SECRET)
    assert asked == ["hooks.example.com"]
    assert where(enrollment) == ("after-ok", "waiting")


# --- Through the executor ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_customer_entering_the_journey_is_posted_with_their_profile_and_context(loopback_allowed, receiver):
    receiver.default = (200, {"segment": "vip"})
    version = live_version(webhook_graph(f"{receiver.url}/hook", store_as="crm"))
    customer = CustomerFactory(email="grace@example.com", first_name="Grace")
    (enrollment_id,) = executor.enter(journey=version.journey, version=version,
                                      entries=[executor.Entry(customer.pk, {"cart_id": "A1"})])
    call = WebhookCall.objects.get(enrollment_id=enrollment_id)
    assert call.status == "pending" and call.node == "hook"

    webhooks.send_due()

    body = receiver.received[0].json
    assert body["customer"]["email"] == "grace@example.com" and body["customer"]["first_name"] == "Grace"
    assert body["context"] == {"entry": {"cart_id": "A1"}}
    assert body["journey"]["id"] == version.journey_id
    enrollment = Enrollment.objects.get(pk=enrollment_id)
    assert (enrollment.node, enrollment.context["crm"]) == ("after-ok", {"segment": "vip"})


@pytest.mark.django_db
def test_send_soon_queues_the_sending_task():
    from django_q.models import OrmQ

    webhooks.send_soon()
    (queued,) = OrmQ.objects.all()
    assert queued.func() == "journeys.tasks.webhooks_send"


# --- Workers --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_worker_that_outlived_its_lease_cannot_overwrite_the_next_workers_result(loopback_allowed, receiver):
    enrollment, call = waiting_call(f"{receiver.url}/hook")
    now = timezone.now()
    (late,) = webhooks.claim(limit=10, now=now)
    # Its lease ran out; another worker claims the call again and settles it.
    after = now + webhooks._lease(10) + timedelta(seconds=1)
    (current,) = webhooks.claim(limit=10, now=after)
    assert (late.attempt, current.attempt) == (1, 2)
    assert webhooks.record([webhooks.Outcome(current, "sent", port="ok", response_status=200)], now=after) == 1
    # The first worker's answer comes in last: it is dropped, and the journey does not move twice.
    assert webhooks.record([webhooks.Outcome(late, "failed", port="failed", error="late")], now=after) == 0
    call.refresh_from_db()
    assert (call.status, call.response_status, call.last_error) == ("sent", 200, "")
    assert where(enrollment) == ("after-ok", "waiting")
    assert list(Step.objects.filter(enrollment=enrollment).values_list("node", "port")) == [("hook", "ok")]


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_send_each_call_once(loopback_allowed):
    with FakeWebhookReceiver(delay=0.2) as receiver:
        calls = [waiting_call(f"{receiver.url}/hook")[1] for _ in range(12)]
        start = threading.Barrier(2)
        results: dict[str, list[dict]] = {"a": [], "b": []}
        errors = []

        def worker(name):
            try:
                start.wait()
                for _ in range(3):
                    results[name].append(webhooks.send_due(limit=4))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker, args=(name,)) for name in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    assert sorted(receiver.keys()) == sorted(call.idempotency_key for call in calls)
    claimed = {name: sum(result["claimed"] for result in batches) for name, batches in results.items()}
    assert sum(claimed.values()) == 12
    assert set(WebhookCall.objects.values_list("status", "attempts")) == {("sent", 1)}
    assert set(Enrollment.objects.values_list("node", flat=True)) == {"after-ok"}
    # Both workers took part: they really raced.
    assert all(claimed.values()), claimed
