"""An integrator whose retry overlaps the original request must get an answer, not a 500."""

import threading

import httpx
import pytest

from customers.models import Customer, Event

pytestmark = pytest.mark.django_db(transaction=True)


def _race(url: str, headers: dict, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at the same moment, each from its own client, and return the answers."""
    start = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def post(index: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            responses[index] = client.post(url, json=bodies[index], headers=headers)

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


@pytest.fixture
def headers(api_key):
    return {"Authorization": f"Bearer {api_key}"}


def test_parallel_creates_of_one_new_customer_answer_201_once_and_200_otherwise(live_server, headers):
    url = f"{live_server.url}/api/v1/customers"
    for round_ in range(5):
        external_id = f"crm-race-{round_}"
        responses = _race(url, headers, [{"external_id": external_id, "first_name": "Ada"}] * 4)

        assert sorted(r.status_code for r in responses) == [200, 200, 200, 201], [r.text for r in responses]
        customer = Customer.objects.get(external_id=external_id)
        assert {r.json()["id"] for r in responses} == {customer.pk}
        assert [r.json()["created"] for r in responses].count(True) == 1
        assert Event.objects.filter(customer=customer, name="customer.created").count() == 1


def test_parallel_identical_batches_of_new_customers_all_succeed(live_server, headers):
    batch = {"customers": [{"email": f"race{n}@example.com", "first_name": f"N{n}"} for n in range(300)]}
    responses = _race(f"{live_server.url}/api/v1/customers/batch", headers, [batch] * 3)

    assert [r.status_code for r in responses] == [200, 200, 200], [r.text[:300] for r in responses]
    created = [sum(item["created"] for item in r.json()["customers"]) for r in responses]
    # Every customer was created by exactly one of the three requests.
    assert sum(created) == 300
    ids = [[item["id"] for item in r.json()["customers"]] for r in responses]
    assert ids[0] == ids[1] == ids[2]
    assert Customer.objects.filter(email__startswith="race").count() == 300
    assert Event.objects.filter(name="customer.created").count() == 300
