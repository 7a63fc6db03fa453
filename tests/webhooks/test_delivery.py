"""Outgoing webhooks end to end: events written through the product's real paths reach a
loopback receiver that verifies every signature with the official ``standardwebhooks``
package and dedupes by ``webhook-id``."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch
from core.models import AuditEntry
from customers import timeline
from customers.services.profiles import CustomerInput, customers_upsert
from segments.services import segment_create, static_members_change
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory
from webhooks import sender, services
from webhooks.models import Attempt, Endpoint, Message

from .conftest import deliver_until, register

pytestmark = pytest.mark.django_db(transaction=True)


def order(customer, number: int):
    """An order_completed event for ``customer``, written as the events API writes one."""
    with timeline.batched():
        return timeline.add(customer=customer, name="order_completed", properties={"n": number}, source="api")


def numbers(receiver) -> list[int]:
    return [request.json["data"]["properties"]["n"] for request in receiver.processed
            if request.json["type"] == "order_completed"]


def test_events_written_through_real_paths_arrive_signed_with_their_data(receiver, api, topics):
    endpoint = register(receiver)
    ada = CustomerFactory(email="ada@example.com", external_id="crm-ada", first_name="Ada", timezone="UTC")

    # The events API.
    answer = api.post("/events", {"events": [{"customer": {"external_id": "crm-ada"}, "name": "order_completed",
                                              "properties": {"total": 42}}]})
    assert answer.status_code in (200, 201, 202), answer.content
    # A profile update.
    customers_upsert(items=[CustomerInput(external_id="crm-ada", first_name="Augusta")], source="api", actor="test")
    # A segment entry (not a timeline row: it comes from the change's memberships).
    segment = segment_create(name="VIP", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[ada.pk], actor="test")
    # A message sent by a campaign (the delivery's status change).
    SubscriptionFactory(customer=ada, topic=topics["newsletter"], channel="email")
    campaign = make_campaign({"segment": segment, "topic": topics["newsletter"]}, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 1

    wanted = {"order_completed", "customer.updated", "segment.entered", "message.sent"}
    deliver_until(lambda: wanted <= set(receiver.types()))

    assert receiver.rejected == [] and receiver.duplicates == 0
    by_type = {request.json["type"]: request for request in receiver.processed}
    order_completed = by_type["order_completed"].json
    stored = ada.events.get(name="order_completed")
    assert order_completed["data"]["id"] == stored.pk
    assert order_completed["data"]["customer"] == {"id": ada.pk, "external_id": "crm-ada"}
    assert order_completed["data"]["properties"] == {"total": 42}
    assert order_completed["data"]["source"] == "api"
    assert order_completed["timestamp"].startswith(stored.occurred_at.strftime("%Y-%m-%dT%H:%M:%S"))
    entered = by_type["segment.entered"].json["data"]
    assert entered["properties"] == {"segment_id": segment.pk, "segment": "VIP"}
    assert entered["customer"]["id"] == ada.pk
    assert by_type["message.sent"].json["data"]["channel"] == "email"
    # Standard Webhooks headers; the signature verified with the package (above, in the receiver).
    headers = by_type["order_completed"].headers
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    log = Message.objects.get(endpoint=endpoint, event_type="order_completed")
    assert log.status == Message.Status.DELIVERED and log.last_status_code == 200
    assert Attempt.objects.filter(message=log, succeeded=True).count() == 1


def test_a_receiver_that_fails_for_a_while_gets_every_event_in_order_exactly_once(receiver, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [0.5, 1, 1.5, 2, 2.5, 3]
    register(receiver, ["order_completed"])
    ada = CustomerFactory()
    # 500s, a connection reset and a timeout, then it recovers.
    receiver.script = [500, 500, "reset", ("hang", 2), 502]
    for number in range(1, 6):
        order(ada, number)

    deliver_until(lambda: len(numbers(receiver)) == 5)

    assert numbers(receiver) == [1, 2, 3, 4, 5]
    assert receiver.duplicates == 0 and receiver.rejected == []
    first = Message.objects.filter(event_type="order_completed").order_by("id").first()
    attempts = list(Attempt.objects.filter(message=first).order_by("id"))
    # The five failures, each logged, then the delivery; the head held back every later message.
    assert [(a.succeeded, a.status_code) for a in attempts[:2]] == [(False, 500), (False, 500)]
    assert len(attempts) >= 3 and attempts[-1].succeeded
    assert any("Error" in a.error or "reset" in a.error.lower() for a in attempts if a.status_code is None)
    assert all(a.response or a.error for a in attempts)
    # Each wait followed the (growing) schedule, counted from the end of the failed attempt.
    gaps = [(later.attempted_at - earlier.attempted_at).total_seconds() for earlier, later in zip(attempts, attempts[1:])]
    assert all(gap >= wait for gap, wait in zip(gaps, settings.WEBHOOK_RETRY_SCHEDULE)), gaps
    arrivals = [r.headers["webhook-id"] for r in receiver.requests]
    first_ids = list(dict.fromkeys(arrivals))
    assert len(first_ids) == 5 and arrivals[: arrivals.index(first_ids[1])] == [first_ids[0]] * 6


def test_a_timeout_is_logged_as_an_error_and_retried(receiver):
    register(receiver, ["order_completed"])
    receiver.script = [("hang", 2)]
    order(CustomerFactory(), 1)
    deliver_until(lambda: numbers(receiver) == [1])
    first, second = Attempt.objects.order_by("id")
    assert not first.succeeded and "No answer within 1 s" in first.error and first.latency_ms >= 900
    assert second.succeeded and second.status_code == 200 and '"status": 200' in second.response


def test_pattern_matching_message_star_gets_message_events_only(receiver, other_receiver):
    register(receiver, ["message.*"])
    register(other_receiver, ["order_completed", "customer.*"])
    ada = CustomerFactory()
    with timeline.batched():
        timeline.add(customer=ada, name="message.sent", channel="sms")
        timeline.add(customer=ada, name="order_completed")
        timeline.add(customer=ada, name="message.opened", channel="sms")
        timeline.add(customer=ada, name="messages_exported")
        timeline.add(customer=ada, name="journey.step")

    deliver_until(lambda: len(receiver.processed) == 2 and len(other_receiver.processed) == 1)
    assert receiver.types() == ["message.sent", "message.opened"]
    assert other_receiver.types() == ["order_completed"]
    assert Message.objects.count() == 3


def test_with_no_endpoints_the_listener_writes_nothing(django_assert_max_num_queries):
    ada = CustomerFactory()
    with django_assert_max_num_queries(1):
        from webhooks import outbox

        assert outbox.enqueue(timeline.Change(
            customer_ids=frozenset({ada.pk}), by_name={"message.sent": frozenset({ada.pk})},
            event_ids={"message.sent": (1, 1_000_000)})) == {}
    order(ada, 1)
    assert Message.objects.count() == 0


def test_a_disabled_endpoint_keeps_its_outbox_and_is_not_sent_to(receiver):
    endpoint = register(receiver, ["segment.*"])
    order(CustomerFactory(), 1)
    assert Message.objects.count() == 0  # not an event it wants
    services.endpoint_disable(endpoint=endpoint, actor="test", reason="paused")
    segment = segment_create(name="Static", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[CustomerFactory().pk], actor="test")
    assert Message.objects.filter(endpoint=endpoint, status=Message.Status.PENDING).count() == 1
    assert sender.deliver_due(budget_seconds=2)["endpoints"] == 0
    assert receiver.requests == []


def test_a_segment_exit_arrives_after_the_entry(receiver):
    register(receiver, ["segment.*"])
    ada = CustomerFactory()
    segment = segment_create(name="Trial", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[ada.pk], actor="test")
    static_members_change(segment=segment, add=False, ids=[ada.pk], actor="test")
    deliver_until(lambda: len(receiver.processed) == 2)
    assert receiver.types() == ["segment.entered", "segment.exited"]
    exited = receiver.processed[1].json["data"]
    assert exited["id"] < 0 and exited["properties"]["segment"] == "Trial"


def test_rotation_signs_with_both_secrets_during_the_grace_period_then_only_the_new(receiver, api, settings):
    endpoint = register(receiver, ["order_completed"])
    old_secret = endpoint.secret
    answer = api.post(f"/webhooks/{endpoint.pk}/rotate-secret")
    assert answer.status_code == 200
    new_secret = answer.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    ada = CustomerFactory()

    # During the grace period a receiver holding either secret verifies.
    receiver.secrets = [old_secret]
    order(ada, 1)
    deliver_until(lambda: numbers(receiver) == [1])
    request = receiver.processed[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert receiver.verifies(request, old_secret) and receiver.verifies(request, new_secret)

    # After it, only the new one.
    Endpoint.objects.filter(pk=endpoint.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    receiver.secrets = [new_secret]
    order(ada, 2)
    deliver_until(lambda: numbers(receiver) == [1, 2])
    request = receiver.processed[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert receiver.verifies(request, new_secret) and not receiver.verifies(request, old_secret)


def test_replay_sends_the_same_message_again_with_the_same_id(receiver, api):
    endpoint = register(receiver, ["order_completed"])
    order(CustomerFactory(), 1)
    deliver_until(lambda: numbers(receiver) == [1])
    message = Message.objects.get()

    answer = api.post(f"/webhooks/{endpoint.pk}/deliveries/{message.pk}/replay")
    assert answer.status_code == 202 and answer.json()["status"] == "pending"
    deliver_until(lambda: len(receiver.requests) == 2, what="the replay")
    first, again = receiver.requests
    assert again.id == first.id == message.webhook_id and again.body == first.body
    assert receiver.duplicates == 1  # the receiver's id check recognised it
    assert AuditEntry.objects.filter(action="webhook.replay", object_id=str(message.pk)).exists()


def test_repeated_failures_disable_the_endpoint_and_enabling_resumes_in_order(receiver, api):
    endpoint = register(receiver, ["order_completed"])
    receiver.script = [500] * 4  # the first attempt and the three retries of the schedule
    ada = CustomerFactory()
    for number in (1, 2, 3):
        order(ada, number)

    deliver_until(lambda: Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.DISABLED,
                  what="the endpoint to be disabled")
    endpoint.refresh_from_db()
    assert "Disabled automatically" in endpoint.disabled_reason and "HTTP 500" in endpoint.disabled_reason
    assert endpoint.disabled_at is not None
    assert numbers(receiver) == [] and len(receiver.requests) == 4
    assert AuditEntry.objects.filter(action="webhook.auto_disable", object_id=str(endpoint.pk)).exists()
    shown = api.get(f"/webhooks/{endpoint.pk}").json()
    assert shown["status"] == "disabled" and "Disabled automatically" in shown["disabled_reason"]
    # Nothing more is tried while disabled; new events still wait in the outbox.
    order(ada, 4)
    sender.deliver_due(budget_seconds=2)
    assert len(receiver.requests) == 4

    answer = api.post(f"/webhooks/{endpoint.pk}/enable")
    assert answer.status_code == 200 and answer.json()["status"] == "enabled"
    deliver_until(lambda: len(numbers(receiver)) == 4)
    assert numbers(receiver) == [1, 2, 3, 4]
    assert AuditEntry.objects.filter(action="webhook.enable", object_id=str(endpoint.pk)).exists()


def test_two_endpoints_are_independent(receiver, other_receiver):
    down = register(receiver, ["order_completed"])
    register(other_receiver, ["order_completed"])
    receiver.script = [503] * 100
    ada = CustomerFactory()
    for number in (1, 2, 3):
        order(ada, number)
    deliver_until(lambda: len(numbers(other_receiver)) == 3)
    assert numbers(other_receiver) == [1, 2, 3]
    assert numbers(receiver) == []
    assert Message.objects.filter(endpoint=down, status=Message.Status.PENDING).count() == 3


def test_two_senders_at_once_never_send_one_endpoint_concurrently_or_out_of_order(receiver):
    endpoint = register(receiver, ["order_completed"])
    ada = CustomerFactory()
    for number in range(1, 21):
        order(ada, number)
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()
    original = sender.attempt

    def counting(*args, **kwargs):
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            time.sleep(0.01)
            return original(*args, **kwargs)
        finally:
            with lock:
                in_flight["now"] -= 1

    sender.attempt = counting
    try:
        results = []

        def run():
            try:
                results.append(sender.deliver_endpoint(endpoint.pk, budget_seconds=WAIT_SECONDS))
            finally:
                connection.close()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sender.attempt = original
    deliver_until(lambda: len(numbers(receiver)) == 20)
    assert numbers(receiver) == list(range(1, 21))
    assert len(receiver.requests) == 20 and receiver.duplicates == 0
    assert in_flight["most"] == 1


def test_a_killed_senders_lease_runs_out_and_another_takes_the_endpoint_over(receiver, settings):
    endpoint = register(receiver, ["order_completed"])
    order(CustomerFactory(), 1)
    import uuid

    # A sender took the endpoint and died: nobody else sends until its lease ends.
    assert sender.claim(endpoint.pk, uuid.uuid4())
    assert sender.deliver_endpoint(endpoint.pk) == {"delivered": 0, "failed": 0}
    assert receiver.requests == []
    Endpoint.objects.filter(pk=endpoint.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert sender.deliver_endpoint(endpoint.pk)["delivered"] == 1
    assert numbers(receiver) == [1]


def test_enqueueing_kicks_one_task_per_endpoint(receiver):
    from django_q.models import OrmQ

    endpoint = register(receiver, ["order_completed"])
    ada = CustomerFactory()
    for number in (1, 2, 3):
        order(ada, number)
    # Three changes, one task queued (the ORM broker runs about 20 a second).
    assert OrmQ.objects.count() == 1
    from webhooks import tasks

    assert tasks.send(endpoint.pk)["delivered"] == 3
    assert numbers(receiver) == [1, 2, 3]
    order(ada, 4)
    assert OrmQ.objects.count() == 2  # the task ran: the next change kicks again
