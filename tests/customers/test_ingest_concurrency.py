"""Several integrations pushing at once must neither deadlock, duplicate nor lose anything."""

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from customers.models import Customer, Event
from customers.services.ingestion import EventInput, events_ingest

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_batches_over_the_same_new_customers():
    now = timezone.now()
    errors: list[Exception] = []

    def push(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for batch in range(8):
                items = [
                    EventInput(
                        customer_id=None,
                        external_id=f"shared-{rng.randrange(40)}",
                        email=None,
                        name="app_opened",
                        properties={"worker": worker},
                        occurred_at=now - timedelta(seconds=rng.randrange(3600)),
                        idempotency_key=f"w{worker}-b{batch}-{n}",
                    )
                    for n in range(120)
                ]
                events_ingest(items=items, source="app")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=push, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Customer.objects.count() == 40
    assert Event.objects.filter(name="app_opened").count() == 4 * 8 * 120
    assert Event.objects.filter(name="customer.created").count() == 40
    for customer in Customer.objects.all():
        latest = customer.events.filter(name="app_opened").order_by("-occurred_at").first()
        assert customer.last_seen_at == latest.occurred_at
