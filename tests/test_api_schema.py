"""The JSON API against its own OpenAPI description, fuzzed by schemathesis.

Every operation served at /api/openapi.json is called with generated valid and invalid
input, with a real API key and seeded data (topics, customers, segments, campaigns, a sent
message) so that calls reach the code behind them, not only the "no such id" answer. Each
answer must be no server error, with a status code, content type and body that the
description documents.

The calls run in-process through Django's WSGI handler on the test's database connection;
each one runs inside a savepoint that is rolled back afterwards, so what one call writes
(a deleted segment, a launched campaign) never changes what the next one sees, within an
operation or across operations (each operation is a test of its own, in its own rolled-back
transaction, with freshly seeded data). Generation is derandomized: a failure found once is found
on every run, and is reported with the request that reproduces it.
"""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from campaigns import dispatch
from campaigns.services.lifecycle import campaign_launch, campaign_pause
from campaigns.models import Delivery
from segments.services import segment_create
from tests.campaigns.conftest import audience, make_campaign  # noqa: F401  (the fixture)
from tests.conftest import WAIT_SECONDS
from tests.factories import EventFactory
from webhooks import services as webhook_services

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Enough to reach every branch of the smaller operations and a fair sample of the larger
# ones, while the whole run stays within a minute or two on a busy machine.
EXAMPLES_PER_OPERATION = 20


@pytest.fixture
def seeded(audience):  # noqa: F811
    """Ids that exist, per path parameter name: the fuzzer picks among them and random ones."""
    people = audience["people"]
    for person in people.values():
        EventFactory(customer=person, name="order_completed")
    dynamic = segment_create(
        name="Recent buyers", rules={"event": "order_completed", "within_days": 30}, actor="test"
    )
    draft = make_campaign(audience, name="Winter sale")
    sending = make_campaign(audience, channels=("email",), name="Spring sale")
    campaign_launch(campaign=sending, actor="test")
    paused = make_campaign(audience, channels=("sms",), name="Summer sale")
    campaign_launch(campaign=paused, actor="test")
    campaign_pause(campaign=paused, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    deliveries = list(Delivery.objects.filter(campaign=sending).values_list("pk", flat=True))
    assert deliveries
    webhook = webhook_services.endpoint_create(url="https://hooks.example.com/x", events=["*"], actor="test")
    return {
        "customer_id": [person.pk for person in people.values()],
        "segment_id": [audience["segment"].pk, dynamic.pk],
        "campaign_id": [draft.pk, sending.pk, paused.pk],
        "delivery_id": deliveries[:2],
        "webhook_id": [webhook.pk],
    }


# Loaded from the app itself, as a client would fetch it; each operation becomes a test.
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", WSGIHandler())
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, deterministic=True, database="none")

# The ids the current test seeded, per path parameter name (filled by the `known_ids` fixture).
KNOWN_IDS: dict[str, list[int]] = {}


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # Mostly ids that exist, so the call reaches the code behind the lookup; sometimes the
    # generated one, which is almost never an id that exists.
    if not path_parameters:
        return st.just(path_parameters)
    return st.fixed_dictionaries({
        name: st.sampled_from([*KNOWN_IDS[name], value]) if KNOWN_IDS.get(name) else st.just(value)
        for name, value in path_parameters.items()
    })


@pytest.fixture
def known_ids(seeded):
    KNOWN_IDS.update(seeded)
    yield
    KNOWN_IDS.clear()


@pytest.fixture
def in_process_requests(db):
    """Requests share the test's connection and transaction, as with Django's test client:
    the handler must not close the connection at the end of each request."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_every_operation_answers_as_documented(case, api_key, known_ids, in_process_requests):
    # A savepoint per call: what it writes is gone before the next call.
    with transaction.atomic():
        case.call_and_validate(headers={"Authorization": f"Bearer {api_key}"}, checks=CHECKS)
        transaction.set_rollback(True)
