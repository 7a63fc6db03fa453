"""The outbox's writer: one statement per change, whatever its size, and safe to repeat."""

from __future__ import annotations

import pytest

from customers import timeline
from tests.factories import CustomerFactory
from webhooks import outbox, services
from webhooks.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def public_hosts(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []


def written_change(django_capture_on_commit_callbacks, events) -> timeline.Change:
    """Write ``events`` (customer, name) and return the change the signal would carry."""
    heard = []

    def listener(sender, change, **kwargs):
        heard.append(change)

    from customers.signals import customers_changed

    customers_changed.connect(listener, dispatch_uid="test-outbox")
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            timeline.add_many([timeline.entry(customer=c, name=name) for c, name in events])
        for callback in callbacks:
            callback()
    finally:
        customers_changed.disconnect(dispatch_uid="test-outbox")
    Message.objects.all().delete()  # what the real listener wrote: the test enqueues by itself
    (change,) = heard
    return change


def test_a_large_change_is_one_insert_and_repeating_it_writes_nothing(django_capture_on_commit_callbacks,
                                                                       django_assert_num_queries):
    services.endpoint_create(url="https://a.example.com/x", events=["message.*"], actor="test")
    services.endpoint_create(url="https://b.example.com/x", events=["*"], actor="test")
    people = [CustomerFactory() for _ in range(20)]
    events = [(person, name) for person in people for name in ("message.sent", "message.delivered", "page_viewed")]
    change = written_change(django_capture_on_commit_callbacks, events)

    with django_assert_num_queries(2):  # the endpoints, then one INSERT … SELECT
        written = outbox.enqueue(change)
    assert sorted(written.values()) == [40, 60]
    # In the order the events were written, for each endpoint.
    for endpoint_id in written:
        event_ids = list(Message.objects.filter(endpoint_id=endpoint_id).order_by("id").values_list("event_id", flat=True))
        assert event_ids == sorted(event_ids)
    assert outbox.enqueue(change) == {}
    assert Message.objects.count() == 100


def test_rows_of_other_customers_inside_the_id_range_are_left_to_their_own_change(
        django_capture_on_commit_callbacks):
    services.endpoint_create(url="https://a.example.com/x", events=["order_completed"], actor="test")
    ada, bob = CustomerFactory(), CustomerFactory()
    change = written_change(django_capture_on_commit_callbacks, [(ada, "order_completed"), (bob, "order_completed")])
    only_ada = timeline.Change(customer_ids=frozenset({ada.pk}), by_name={"order_completed": frozenset({ada.pk})},
                               event_ids=change.event_ids)
    assert list(outbox.enqueue(only_ada).values()) == [1]
    assert Message.objects.get().customer_id == ada.pk
