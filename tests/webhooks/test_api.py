"""The webhooks API: every operation, its 400s and 404s, and that GET never shows a secret."""

from __future__ import annotations

import json

import pytest

from core.models import AuditEntry
from customers import timeline
from tests.factories import CustomerFactory
from webhooks import services
from webhooks.models import Endpoint, Message

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/switchboard"


@pytest.fixture(autouse=True)
def public_hosts(settings):
    """No allow-list: any public host may be registered, internal ones never."""
    settings.WEBHOOK_ALLOWED_HOSTS = []


def create(api, **overrides):
    return api.post("/webhooks", {"url": URL, "events": ["message.*", "order_completed"], **overrides})


def fields(response) -> list[str]:
    return [error["field"] for error in response.json()["errors"]]


def test_create_answers_201_with_the_secret_once(api):
    answer = create(api, description="Warehouse")
    assert answer.status_code == 201
    body = answer.json()
    assert body["secret"].startswith("whsec_") and body["status"] == "enabled"
    assert body["events"] == ["message.*", "order_completed"] and body["description"] == "Warehouse"
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert endpoint.secret == body["secret"]
    assert AuditEntry.objects.filter(action="webhook.create", object_id=str(endpoint.pk)).exists()

    for path in ("/webhooks", f"/webhooks/{endpoint.pk}"):
        shown = api.get(path)
        assert shown.status_code == 200
        assert "secret" not in json.dumps(shown.json()).replace("previous_secret_expires_at", "")
        assert body["secret"] not in shown.content.decode()


@pytest.mark.parametrize("overrides, field", [
    ({"url": "http://10.0.0.1/hook"}, "url"),
    ({"url": "http://localhost:8000/hook"}, "url"),
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "https://user:pw@example.com/x"}, "url"),
    ({"events": []}, "events"),
    ({"events": ["message."]}, "events[0]"),
    ({"events": ["ok", "bad name"]}, "events[1]"),
    ({"events": "message.*"}, "events"),
    ({"url": None}, "url"),
    ({"description": "x" * 501}, "description"),
    ({"colour": "red"}, "colour"),
])
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api, overrides, field):
    answer = create(api, **overrides)
    assert answer.status_code == 400, answer.content
    assert field in fields(answer)
    assert not Endpoint.objects.exists() and not AuditEntry.objects.filter(action__startswith="webhook.").exists()


def test_an_internal_url_is_refused_naming_the_problem(api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    answer = create(api, url="http://127.0.0.1:9000/hook")
    assert answer.status_code == 400
    assert "internal address" in answer.json()["errors"][0]["message"]
    settings.WEBHOOK_ALLOWED_HOSTS = [".example.com"]
    answer = create(api, url="https://evil.test/hook")
    assert "not an allowed webhook host" in answer.json()["errors"][0]["message"]
    assert create(api).status_code == 201


def test_the_older_journey_setting_still_allows_a_host(api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    settings.JOURNEY_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    assert create(api, url="http://127.0.0.1:9000/hook").status_code == 201


def test_list_detail_and_delete(api, django_assert_max_num_queries):
    first = create(api).json()["id"]
    second = create(api, url="https://other.example.com/x").json()["id"]
    with django_assert_max_num_queries(3):  # the key, its last use, the endpoints
        listed = api.get("/webhooks")
    assert [e["id"] for e in listed.json()] == [first, second]
    assert api.get(f"/webhooks/{first}").json()["url"] == URL
    assert api.delete(f"/webhooks/{first}").status_code == 204
    assert api.get(f"/webhooks/{first}").status_code == 404
    assert api.delete(f"/webhooks/{first}").status_code == 404
    assert AuditEntry.objects.filter(action="webhook.delete", object_id=str(first)).exists()


@pytest.mark.parametrize("method, path", [
    ("get", "/webhooks/999999"),
    ("delete", "/webhooks/999999"),
    ("post", "/webhooks/999999/rotate-secret"),
    ("post", "/webhooks/999999/enable"),
    ("get", "/webhooks/999999/deliveries"),
    ("post", "/webhooks/999999/deliveries/1/replay"),
])
def test_unknown_ids_are_a_json_404(api, method, path):
    answer = getattr(api, method)(path)
    assert answer.status_code == 404 and "999999" in answer.json()["message"]


def test_rotate_answers_the_new_secret_and_keeps_the_old_one_for_the_grace_period(api, settings):
    settings.WEBHOOK_SECRET_GRACE_SECONDS = 3600
    created = create(api).json()
    answer = api.post(f"/webhooks/{created['id']}/rotate-secret")
    assert answer.status_code == 200
    endpoint = Endpoint.objects.get(pk=created["id"])
    assert endpoint.secret == answer.json()["secret"] != created["secret"]
    assert endpoint.previous_secret == created["secret"]
    assert answer.json()["previous_secret_expires_at"] is not None
    assert answer.json()["secret"] not in api.get(f"/webhooks/{endpoint.pk}").content.decode()
    assert AuditEntry.objects.filter(action="webhook.rotate_secret", object_id=str(endpoint.pk)).exists()


def test_deliveries_are_keyset_paginated_newest_first(api, django_capture_on_commit_callbacks):
    endpoint = services.endpoint_create(url=URL, events=["order_completed"], actor="test")
    ada = CustomerFactory()
    for number in range(5):
        with django_capture_on_commit_callbacks(execute=True):
            timeline.add(customer=ada, name="order_completed", properties={"n": number})
    ids = list(Message.objects.filter(endpoint=endpoint).order_by("-id").values_list("id", flat=True))
    assert len(ids) == 5

    first = api.get(f"/webhooks/{endpoint.pk}/deliveries", limit=2).json()
    assert [d["id"] for d in first["deliveries"]] == ids[:2]
    assert first["deliveries"][0]["status"] == "pending" and first["deliveries"][0]["webhook_id"].startswith("msg_")
    second = api.get(f"/webhooks/{endpoint.pk}/deliveries", limit=2, cursor=first["next_cursor"]).json()
    assert [d["id"] for d in second["deliveries"]] == ids[2:4]
    last = api.get(f"/webhooks/{endpoint.pk}/deliveries", limit=2, cursor=second["next_cursor"]).json()
    assert [d["id"] for d in last["deliveries"]] == ids[4:] and last["next_cursor"] is None
    bad = api.get(f"/webhooks/{endpoint.pk}/deliveries", cursor="abc")
    assert bad.status_code == 400 and "cursor" in fields(bad)


def test_replay_of_another_endpoints_delivery_is_a_404(api, django_capture_on_commit_callbacks):
    one = services.endpoint_create(url=URL, events=["*"], actor="test")
    other = services.endpoint_create(url="https://other.example.com/x", events=["message.*"], actor="test")
    with django_capture_on_commit_callbacks(execute=True):
        timeline.add(customer=CustomerFactory(), name="order_completed")
    message = Message.objects.get(endpoint=one)
    assert api.post(f"/webhooks/{other.pk}/deliveries/{message.pk}/replay").status_code == 404
    assert api.post(f"/webhooks/{one.pk}/deliveries/{message.pk}/replay").status_code == 202


def test_enabling_an_enabled_endpoint_changes_nothing(api):
    created = create(api).json()
    answer = api.post(f"/webhooks/{created['id']}/enable")
    assert answer.status_code == 200 and answer.json()["status"] == "enabled"
    assert not AuditEntry.objects.filter(action="webhook.enable").exists()


def test_without_a_key_nothing_is_answered(client):
    assert client.get("/api/v1/webhooks").status_code == 401
    assert client.post("/api/v1/webhooks", "{}", content_type="application/json").status_code == 401
