import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from customers.models import ApiKey, Consent, ConsentState, Customer, Event, Subscription
from customers.services.api_keys import api_key_revoke
from tests.factories import CustomerFactory, EventFactory

pytestmark = pytest.mark.django_db


def counts():
    return (Customer.objects.count(), Event.objects.count(), Subscription.objects.count(), Consent.objects.count())


# --- Authentication -------------------------------------------------------------------------


def test_requests_without_a_key_are_refused_with_a_hint(client):
    response = client.post("/api/v1/events", "{}", content_type="application/json")
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["message"]


def test_a_wrong_or_revoked_key_is_refused(client, api_key):
    wrong = client.get("/api/v1/customers/1", headers={"Authorization": "Bearer sb_nope"})
    assert wrong.status_code == 401
    api_key_revoke(key=ApiKey.objects.get(), actor="test")
    revoked = client.get("/api/v1/customers/1", headers={"Authorization": f"Bearer {api_key}"})
    assert revoked.status_code == 401


def test_create_api_key_prints_only_the_key_and_stores_only_its_hash(capsys, client):
    call_command("create_api_key", "crm-sync")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("sb_") and "\n" not in raw
    stored = ApiKey.objects.get(name="crm-sync")
    assert stored.key_hash != raw and raw not in stored.key_hash
    response = client.get("/api/v1/customers/999", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 404  # authenticated, customer missing
    stored.refresh_from_db()
    assert stored.last_used_at is not None


def test_docs_and_openapi_are_served(client):
    assert client.get("/api/docs").status_code == 200
    spec = client.get("/api/openapi.json").json()
    assert "/api/v1/events" in spec["paths"]
    assert "/api/v1/customers/{customer_id}/timeline" in spec["paths"]


# --- Customers --------------------------------------------------------------------------------


def test_upsert_creates_then_updates_matched_by_external_id(api, topics):
    created = api.post(
        "/customers",
        {
            "external_id": "crm-1",
            "email": "Grace.Hopper@Example.COM",
            "phone": "+44 20 7946 0958",
            "first_name": "Grace",
            "timezone": "Europe/London",
            "attributes": {"plan": "pro", "seats": 3},
            "subscriptions": [{"topic": "coupons", "channel": "sms", "subscribed": True}],
        },
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["created"] is True
    assert body["email"] == "grace.hopper@example.com"
    assert body["phone"] == "+442079460958"

    updated = api.post("/customers", {"external_id": "crm-1", "last_name": "Hopper", "attributes": {"seats": None, "team": "navy"}})
    assert updated.status_code == 200
    assert updated.json()["id"] == body["id"] and updated.json()["created"] is False
    customer = Customer.objects.get(pk=body["id"])
    assert customer.first_name == "Grace" and customer.last_name == "Hopper"
    assert customer.attributes == {"plan": "pro", "team": "navy"}

    names = list(customer.events.order_by("id").values_list("name", flat=True))
    assert names == ["customer.created", "subscription.changed", "customer.updated"]
    change = customer.events.get(name="customer.updated").properties["changes"]
    assert change["last_name"] == ["", "Hopper"]
    assert change["attributes.seats"] == [3, None]


def test_upsert_matches_by_email_and_adopts_the_external_id(api):
    existing = CustomerFactory(external_id=None, email="lin@example.com")
    response = api.post("/customers", {"external_id": "crm-lin", "email": "LIN@example.com", "first_name": "Lin"})
    assert response.status_code == 200
    existing.refresh_from_db()
    assert existing.external_id == "crm-lin" and existing.first_name == "Lin"
    assert Customer.objects.count() == 1


def test_an_email_owned_by_another_customer_is_a_clear_error(api):
    CustomerFactory(external_id="crm-a", email="shared@example.com")
    before = counts()
    response = api.post("/customers", {"external_id": "crm-b", "email": "shared@example.com"})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "email" and "crm-a" in error["message"]
    assert counts() == before


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"email": "x@example.com", "phone": "12"}, "phone", "not a"),
        ({"email": "x@example.com", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"email": "not-an-email"}, "email", "not an email"),
        ({"first_name": "Nobody"}, "body", "external_id or email"),
        ({"email": "x@example.com", "frist_name": "Typo"}, "frist_name", "unknown field"),
        ({"email": "x@example.com", "attributes": {"bad key": 1}}, "attributes", "attribute name"),
        ({"email": "x@example.com", "subscriptions": [{"topic": "coupons", "channel": "fax", "subscribed": True}]},
         "subscriptions[0].channel", "email"),
    ],
)
def test_invalid_profiles_are_refused_naming_the_field(api, topics, body, field, words):
    before = counts()
    response = api.post("/customers", body)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors
    assert counts() == before


def test_unknown_topic_lists_the_known_ones(api, topics):
    response = api.post(
        "/customers",
        {"email": "x@example.com", "subscriptions": [{"topic": "gossip", "channel": "email", "subscribed": True}]},
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "subscriptions[0].topic"
    assert "gossip" in error["message"] and "newsletter" in error["message"]
    assert Customer.objects.count() == 0


def test_batch_upsert_is_all_or_nothing_with_an_error_per_index(api):
    good = [{"external_id": f"crm-{n}", "email": f"c{n}@example.com"} for n in range(5)]
    bad = [*good, {"external_id": "crm-x", "phone": "nonsense"}, {"external_id": "crm-0"}]
    response = api.post("/customers/batch", {"customers": bad})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {(5, "phone")}
    assert Customer.objects.count() == 0

    duplicate = api.post("/customers/batch", {"customers": [*good, {"external_id": "crm-0"}]})
    assert duplicate.status_code == 400
    assert duplicate.json()["errors"][0]["index"] == 5
    assert Customer.objects.count() == 0

    ok = api.post("/customers/batch", {"customers": good})
    assert ok.status_code == 200
    assert [c["external_id"] for c in ok.json()["customers"]] == [f"crm-{n}" for n in range(5)]
    assert Customer.objects.count() == 5


def test_batch_over_1000_is_refused(api):
    response = api.post("/customers/batch", {"customers": [{"email": f"c{n}@example.com"} for n in range(1001)]})
    assert response.status_code == 400
    assert "1000" in response.json()["errors"][0]["message"]


def test_customer_detail_has_preferences_consent_and_devices(api, topics, customer):
    api.post(f"/customers/{customer.pk}/subscriptions", {"topic": "newsletter", "channel": "email", "subscribed": True})
    api.post(f"/customers/{customer.pk}/consent", {"channel": "sms", "granted": False, "source": "ivr"})
    api.post(f"/customers/{customer.pk}/devices", {"kind": "fcm", "token": "fcm-token-123456", "platform": "android"})
    body = api.get(f"/customers/{customer.pk}").json()
    assert body["subscriptions"] == [
        {"topic": "newsletter", "channel": "email", "subscribed": True, "source": "api",
         "updated_at": body["subscriptions"][0]["updated_at"]}
    ]
    assert [(c["channel"], c["granted"], c["source"]) for c in body["consent"]] == [("sms", False, "ivr")]
    assert [d["kind"] for d in body["devices"]] == ["fcm"]


def test_missing_customer_is_a_json_404(api):
    response = api.get("/customers/424242")
    assert response.status_code == 404
    assert "424242" in response.json()["message"]


# --- Subscriptions and consent ------------------------------------------------------------------


def test_subscription_change_lands_on_the_timeline_once(api, topics, customer):
    body = {"topic": "coupons", "channel": "sms", "subscribed": False, "source": "contact_centre", "reason": "asked by phone"}
    first = api.post(f"/customers/{customer.pk}/subscriptions", body)
    again = api.post(f"/customers/{customer.pk}/subscriptions", body)
    assert first.json()["changed"] is True and again.json()["changed"] is False
    [event] = customer.events.filter(name="subscription.changed")
    assert event.properties == {
        "topic": "coupons", "channel": "sms", "subscribed": False, "previous": None,
        "source": "contact_centre", "reason": "asked by phone",
    }
    assert event.actor == "api:tests"


def test_consent_ledger_keeps_every_entry_and_state_follows_the_latest(api, customer):
    api.post(f"/customers/{customer.pk}/consent", {
        "channel": "email", "granted": True, "source": "signup_form",
        "proof": {"ip_address": "203.0.113.7", "user_agent": "Firefox", "wording": "Send me news", "form_url": "https://shop.example/signup"},
    })
    response = api.post(f"/customers/{customer.pk}/consent", {"channel": "email", "granted": False, "source": "email_reply"})
    assert response.status_code == 201
    ledger = list(Consent.objects.filter(customer=customer).order_by("id"))
    assert [entry.granted for entry in ledger] == [True, False]
    assert ledger[0].ip_address == "203.0.113.7" and ledger[0].wording == "Send me news"
    assert ConsentState.objects.get(customer=customer, channel="email").granted is False
    assert list(customer.events.filter(category="preference").order_by("id").values_list("name", flat=True)) == [
        "consent.granted", "consent.revoked",
    ]


def test_consent_with_a_bad_ip_writes_nothing(api, customer):
    before = counts()
    response = api.post(f"/customers/{customer.pk}/consent", {
        "channel": "email", "granted": True, "source": "web", "proof": {"ip_address": "999.1.1.1"},
    })
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "proof.ip_address"
    assert counts() == before


# --- Events -------------------------------------------------------------------------------------


def event(n, **customer):
    return {
        "customer": customer or {"external_id": f"crm-{n % 3}"},
        "name": "order_completed",
        "properties": {"total": n, "currency": "EUR"},
        "occurred_at": (timezone.now() - timedelta(minutes=n)).isoformat(),
        "idempotency_key": f"order-{n}",
    }


def test_events_create_unknown_customers_and_update_last_seen(api):
    response = api.post("/events", {"events": [event(n) for n in range(6)] + [event(9, email="New@Example.com")]})
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 7, "duplicates": 0, "customers_created": 4}
    assert set(Customer.objects.values_list("external_id", flat=True)) == {"crm-0", "crm-1", "crm-2", None}
    newcomer = Customer.objects.get(email="new@example.com")
    assert list(newcomer.events.order_by("id").values_list("name", flat=True)) == ["customer.created", "order_completed"]
    crm0 = Customer.objects.get(external_id="crm-0")
    newest = crm0.events.filter(name="order_completed").order_by("-occurred_at").first()
    assert crm0.last_seen_at == newest.occurred_at


def test_a_retried_batch_writes_nothing_twice(api):
    batch = {"events": [event(n) for n in range(10)]}
    assert api.post("/events", batch).json()["accepted"] == 10
    before = counts()
    retry = api.post("/events", batch)
    assert retry.json() == {"accepted": 0, "duplicates": 10, "customers_created": 0}
    assert counts() == before


def test_the_same_key_from_another_source_is_a_different_event(api):
    api.post("/events", {"events": [event(1)]})
    response = api.post("/events", {"source": "ivr", "events": [event(1)]})
    assert response.json()["accepted"] == 1


def test_an_invalid_item_rejects_the_whole_batch_with_index_and_field(api):
    CustomerFactory(external_id="crm-0")
    items = [event(n) for n in range(5)]
    items[1]["name"] = "message.opened"
    items[3]["occurred_at"] = "2026-01-01T10:00:00"
    del items[4]["customer"]
    before = counts()
    response = api.post("/events", {"events": items})
    assert response.status_code == 400
    errors = {(e["index"], e["field"]): e["message"] for e in response.json()["errors"]}
    assert "reserved" in errors[1, "name"]
    assert "timezone" in errors[3, "occurred_at"].lower() or "offset" in errors[3, "occurred_at"].lower()
    assert errors[4, "customer"] == "this field is required"
    assert counts() == before


def test_an_unknown_customer_id_rejects_the_batch(api):
    known = CustomerFactory()
    before = counts()
    response = api.post("/events", {"events": [event(1, id=known.pk), event(2, id=987654)]})
    assert response.status_code == 400
    assert response.json()["errors"] == [{"index": 1, "field": "customer.id", "message": "no customer has id 987654"}]
    assert counts() == before


@pytest.mark.parametrize(
    "raw, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", ""),
        ('{"events": []}', "at least 1"),
        ('{"events": "lots"}', "list"),
        ('{"events": [{"customer": {"id": 1, "email": "a@b.co"}, "name": "x"}]}', "exactly one"),
        ('{"events": [{"customer": {"external_id": "a"}, "name": "x", "occurred_at": "2999-01-01T00:00:00Z"}]}', "future"),
    ],
)
def test_malformed_bodies_get_a_400_never_a_500(api, raw, words):
    response = api.post("/events", raw=raw)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["message"]
    assert words in json.dumps(body)
    assert Event.objects.count() == 0


def test_a_batch_of_1001_events_is_refused(api):
    response = api.post("/events", {"events": [event(n) for n in range(1001)]})
    assert response.status_code == 400
    assert Event.objects.count() == 0


# --- Timeline -----------------------------------------------------------------------------------


def test_timeline_pages_newest_first_without_gaps_or_repeats(api, customer):
    base = timezone.now()
    for n in range(25):
        # Several events share a timestamp: the cursor must still be exact.
        EventFactory(customer=customer, name="page_viewed", occurred_at=base - timedelta(seconds=n // 3))
    seen, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/customers/{customer.pk}/timeline", **params).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    expected = list(customer.events.order_by("-occurred_at", "-id").values_list("id", flat=True))
    assert seen == expected and len(seen) == 25


def test_timeline_filters_by_category_and_channel(api, topics, customer):
    EventFactory(customer=customer, name="order_completed")
    api.post(f"/customers/{customer.pk}/subscriptions", {"topic": "coupons", "channel": "sms", "subscribed": True})
    api.post(f"/customers/{customer.pk}/subscriptions", {"topic": "coupons", "channel": "email", "subscribed": True})
    prefs = api.get(f"/customers/{customer.pk}/timeline", category="preference").json()["events"]
    assert {e["name"] for e in prefs} == {"subscription.changed"} and len(prefs) == 2
    sms = api.get(f"/customers/{customer.pk}/timeline", channel="sms").json()["events"]
    assert [e["channel"] for e in sms] == ["sms"]


@pytest.mark.parametrize("params", [{"cursor": "garbage!"}, {"limit": 0}, {"limit": 1000}, {"category": "gossip"}])
def test_bad_timeline_parameters_are_400(api, customer, params):
    response = api.get(f"/customers/{customer.pk}/timeline", **params)
    assert response.status_code == 400
    assert response.json()["errors"]


def test_timeline_query_count_is_constant(api, customer, django_assert_max_num_queries):
    for n in range(60):
        EventFactory(customer=customer)
    with django_assert_max_num_queries(4):
        response = api.get(f"/customers/{customer.pk}/timeline", limit=50)
    assert len(response.json()["events"]) == 50
