"""The Segment-compatible source API, asked with plain requests: keys, validation, gzip,
CORS, clock skew, and anonymous visitors merging into known customers."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from customers.models import ApiKey, Customer, Device, Event
from customers.services import api_keys
from segments import services as segment_services
from segments.models import SegmentMembership

pytestmark = pytest.mark.django_db


@pytest.fixture
def write_key(db) -> str:
    _, raw = api_keys.api_key_create(name="web", scope=ApiKey.Scope.SOURCE)
    return raw


def basic(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send(client, path: str, body, *, key: str | None = None, headers: dict | None = None,
         content_type: str = "application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"/v1/{path}", data, content_type=content_type,
                       headers={**(basic(key) if key else {}), **(headers or {})})


def timeline(customer) -> list[Event]:
    return list(Event.objects.filter(customer=customer).order_by("occurred_at", "id"))


def names(customer) -> list[str]:
    return [event.name for event in timeline(customer)]


# --- Keys ----------------------------------------------------------------------------------


def test_without_a_key_or_with_a_wrong_one_the_answer_is_401_and_nothing_is_written(client, write_key):
    body = {"userId": "u1", "event": "Signed Up"}
    before = Event.objects.count()
    for headers in ({}, basic("sbw_wrong"), {"Authorization": "Basic !!!"}, {"Authorization": f"Bearer {write_key}"}):
        response = client.post("/v1/track", json.dumps(body), content_type="application/json", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["message"].startswith("Missing or invalid API key")
    assert Event.objects.count() == before
    assert not Customer.objects.filter(external_id="u1").exists()


def test_a_revoked_write_key_is_refused(client, write_key):
    api_keys.api_key_revoke(key=ApiKey.objects.get(scope=ApiKey.Scope.SOURCE), actor="test")
    assert send(client, "track", {"userId": "u1", "event": "x"}, key=write_key).status_code == 401


def test_scopes_are_separate_a_json_api_key_is_no_write_key_and_a_write_key_opens_no_api(client, api_key, write_key):
    # A full API key on /v1/: refused, the scopes do not overlap.
    assert send(client, "track", {"userId": "u1", "event": "x"}, key=api_key).status_code == 401
    # A write key (shipped inside web pages) on the JSON API: refused, as Bearer and as Basic.
    response = client.get("/api/v1/customers/1", headers={"Authorization": f"Bearer {write_key}"})
    assert response.status_code == 401
    response = client.post("/api/v1/events", json.dumps({"events": []}), content_type="application/json",
                           headers={"Authorization": f"Bearer {write_key}"})
    assert response.status_code == 401
    # The API key still works where it belongs.
    assert client.get("/api/v1/customers/999999", headers={"Authorization": f"Bearer {api_key}"}).status_code == 404


def test_write_keys_are_made_with_the_management_command(capsys):
    call_command("create_api_key", "website", "--scope", "source")
    raw = capsys.readouterr().out.strip()
    key = ApiKey.objects.get(name="website")
    assert key.scope == ApiKey.Scope.SOURCE and key.key_hash == ApiKey.hash(raw) and raw.startswith("sbw_")


def test_write_keys_are_made_in_django_admin_with_a_scope(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    response = client.post("/admin/customers/apikey/add/", {"name": "app", "scope": "source"}, follow=True)
    assert response.status_code == 200
    key = ApiKey.objects.get(name="app")
    assert key.scope == ApiKey.Scope.SOURCE
    raw = next(str(m) for m in response.context["messages"]).rsplit(" ", 1)[-1]
    assert send(client, "track", {"userId": "u1", "event": "Opened"}, key=raw).status_code == 200


# --- Messages --------------------------------------------------------------------------------


def test_each_call_maps_onto_the_timeline_and_the_profile(client, write_key):
    context = {"page": {"url": "https://shop.example/"}, "campaign": {"source": "newsletter", "medium": "email"}}
    for path, body in [
        ("identify", {"userId": "u1", "traits": {"email": "Ada@Example.com", "phone": "+33 6 12 34 56 78",
                                                 "name": "Ada Lovelace", "plan": "pro", "timezone": "Europe/Paris",
                                                 "locale": "fr-FR"}}),
        ("track", {"userId": "u1", "event": "Order Completed", "properties": {"total": 42}, "context": context,
                   "messageId": "m-1"}),
        ("page", {"userId": "u1", "name": "Home", "category": "Shop", "properties": {"path": "/"}}),
        ("screen", {"userId": "u1", "name": "Cart"}),
        ("group", {"userId": "u1", "groupId": "acme", "traits": {"name": "Acme", "employees": 40}}),
    ]:
        response = send(client, path, body, key=write_key)
        assert response.status_code == 200, response.content
        assert response.json() == {"success": True}
        assert response["Access-Control-Allow-Origin"] == "*"
    ada = Customer.objects.get(external_id="u1")
    assert (ada.email, ada.phone, ada.first_name, ada.last_name, ada.timezone, ada.locale) == (
        "ada@example.com", "+33612345678", "Ada", "Lovelace", "Europe/Paris", "fr-FR")
    assert ada.attributes == {"plan": "pro", "group_id": "acme", "group": {"name": "Acme", "employees": 40}}
    events = {event.name: event for event in timeline(ada)}
    order = events["Order Completed"]
    assert order.properties == {"total": 42, "context": context}
    assert order.idempotency_key == "m-1" and order.source.startswith("source:")
    assert events["page_viewed"].properties == {"path": "/", "name": "Home", "category": "Shop"}
    assert events["screen_viewed"].properties == {"name": "Cart"}


def test_a_batch_is_stored_and_a_retry_writes_nothing_twice(client, write_key):
    batch = {"batch": [
        {"type": "identify", "userId": "u2", "traits": {"firstName": "Bob"}, "messageId": "a"},
        {"type": "track", "userId": "u2", "event": "Signed Up", "messageId": "b"},
        {"type": "identify", "userId": "u2", "traits": {"last_name": "Smith"}, "messageId": "c"},
    ], "context": {"library": {"name": "test"}}}
    assert send(client, "batch", batch, key=write_key).status_code == 200
    assert send(client, "batch", batch, key=write_key).status_code == 200
    bob = Customer.objects.get(external_id="u2")
    assert (bob.first_name, bob.last_name) == ("Bob", "Smith")
    assert names(bob).count("Signed Up") == 1
    assert names(bob).count("customer.updated") == 0  # created with both names; the retry changed nothing
    (signed_up,) = [event for event in timeline(bob) if event.name == "Signed Up"]
    assert signed_up.properties["context"] == {"library": {"name": "test"}}


def test_an_invalid_message_refuses_the_whole_batch_naming_index_and_field(client, write_key):
    batch = {"batch": [
        {"type": "track", "userId": "u3", "event": "Fine"},
        {"type": "identify", "userId": "u3", "traits": {"phone": "12"}},
        {"type": "track", "anonymousId": "x", "event": "Late", "timestamp": "0001-01-01T00:00:00+14:00"},
        {"type": "track"},
        {"type": "bogus", "userId": "u3"},
    ]}
    before = (Event.objects.count(), Customer.objects.count())
    response = send(client, "batch", batch, key=write_key)
    assert response.status_code == 400
    errors = {(error.get("index"), error["field"]) for error in response.json()["errors"]}
    assert {(1, "traits.phone"), (2, "timestamp"), (3, "userId"), (4, "type")} <= errors
    assert (Event.objects.count(), Customer.objects.count()) == before


@pytest.mark.parametrize("body, field", [
    ({"userId": "u", "event": "customer.merged"}, "event"),
    ({"userId": "u", "event": ""}, "event"),
    ({"userId": "u", "event": "x", "timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
    ({"userId": "u", "event": "x", "timestamp": "2024-01-01T00:00:00Z", "sentAt": "0001-01-01T00:00:00Z"}, "timestamp"),
    ({"userId": "u", "event": "x", "timestamp": "yesterday"}, "timestamp"),
    ({"userId": "u", "event": "x", "properties": {"total": float("nan")}}, "properties.total"),
    ({"userId": "u\u0000", "event": "x"}, "userId"),
    ({"userId": {"id": 1}, "event": "x"}, "userId"),
    ({"userId": "u", "event": "x", "properties": [1]}, "properties"),
])
def test_bad_single_messages_are_a_400_naming_the_field(client, write_key, body, field):
    before = Event.objects.count()
    response = send(client, "track", body, key=write_key)
    assert response.status_code == 400, response.content
    assert field in [error["field"] for error in response.json()["errors"]]
    assert Event.objects.count() == before


@pytest.mark.parametrize("traits, field", [
    ({"email": "not-an-email"}, "traits.email"),
    ({"timezone": "Mars/Olympus"}, "traits.timezone"),
    ({"locale": "english please"}, "traits.locale"),
    ({"favourite colour": "blue"}, "traits.favourite colour"),
])
def test_bad_traits_are_a_400(client, write_key, traits, field):
    response = send(client, "identify", {"userId": "u", "traits": traits}, key=write_key)
    assert response.status_code == 400
    assert field in [error["field"] for error in response.json()["errors"]]
    assert not Customer.objects.filter(external_id="u").exists()


def test_bad_json_is_a_400(client, write_key):
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = send(client, "batch", body, key=write_key)
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == "body"


def test_a_body_over_the_limit_is_refused_plain_or_gzipped(client, write_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = {"batch": [{"type": "track", "userId": "u", "event": "x", "properties": {"pad": "x" * 20_000}}]}
    response = send(client, "batch", json.dumps(big), key=write_key)
    assert response.status_code == 413 and "too large" in response.json()["message"]
    # A "zip bomb": 1 MB of zeros is a tiny gzip body, far past the limit once unzipped.
    bomb = gzip.compress(b"0" * 1_000_000)
    assert len(bomb) < 10_000
    response = send(client, "batch", bomb, key=write_key, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert not Event.objects.exists()


def test_gzip_bodies_are_accepted_and_broken_gzip_is_a_400(client, write_key):
    body = gzip.compress(json.dumps({"batch": [{"type": "track", "userId": "u", "event": "Zipped"}]}).encode())
    assert send(client, "batch", body, key=write_key, headers={"Content-Encoding": "gzip"}).status_code == 200
    assert sorted(names(Customer.objects.get(external_id="u"))) == ["Zipped", "customer.created"]
    response = send(client, "batch", b"\x1f\x8bnot gzip", key=write_key, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    response = send(client, "batch", body[:-8], key=write_key, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400


def test_a_batch_over_the_item_limit_is_refused(client, write_key):
    batch = {"batch": [{"type": "track", "userId": "u", "event": "x"}] * 1001}
    response = send(client, "batch", batch, key=write_key)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "batch"


def test_cors_preflight_is_answered(client):
    response = client.options("/v1/t", headers={"Origin": "https://shop.example",
                                                "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert response["Access-Control-Allow-Headers"] == "content-type"


def test_analytics_js_posts_text_plain_with_the_write_key_in_the_body(client, write_key):
    body = {"writeKey": write_key, "type": "track", "event": "Clicked", "anonymousId": "anon-text"}
    response = client.post("/v1/t", json.dumps(body), content_type="text/plain", headers={"Origin": "https://a.example"})
    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == "*"
    visitor = Customer.objects.get(anonymous_id="anon-text")
    assert "Clicked" in names(visitor)
    # A batch to the short path, as analytics.js's batching dispatcher sends it.
    body = {"writeKey": write_key, "batch": [{"type": "page", "anonymousId": "anon-text"}], "sentAt": None}
    assert client.post("/v1/b", json.dumps(body), content_type="text/plain").status_code == 200
    assert "page_viewed" in names(visitor)
    # A wrong key in the body is refused like a wrong header.
    body["writeKey"] = "sbw_nope"
    assert client.post("/v1/b", json.dumps(body), content_type="text/plain").status_code == 401


def test_analytics_js_settings_for_a_valid_key(client, write_key):
    response = client.get(f"/v1/projects/{write_key}/settings")
    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == "*"
    segmentio = response.json()["integrations"]["Segment.io"]
    assert segmentio["apiKey"] == write_key and segmentio["apiHost"] == "testserver/v1"
    assert client.get("/v1/projects/sbw_nope/settings").status_code == 401


def test_clock_skew_is_corrected_like_segment_does(client, write_key):
    now = timezone.now()
    # The sender's clock runs two hours fast: its timestamp and sentAt are both two hours ahead.
    skewed = now + timedelta(hours=2)
    body = {"userId": "u", "event": "Skewed", "timestamp": (skewed - timedelta(minutes=5)).isoformat(),
            "sentAt": skewed.isoformat()}
    assert send(client, "track", body, key=write_key).status_code == 200
    event = Event.objects.get(name="Skewed")
    assert abs(event.occurred_at - (now - timedelta(minutes=5))) < timedelta(seconds=30)
    # Without a timestamp: when it was received.
    assert send(client, "track", {"userId": "u", "event": "Now"}, key=write_key).status_code == 200
    assert abs(Event.objects.get(name="Now").occurred_at - timezone.now()) < timedelta(seconds=30)


# --- Anonymous visitors ------------------------------------------------------------------------


def test_anonymous_history_merges_into_the_known_customer_once(client, write_key, customer):
    for i in range(3):
        send(client, "track", {"anonymousId": "3f2a9c1e-visitor", "event": "Product Viewed",
                               "properties": {"sku": f"S{i}"}, "messageId": f"v{i}"}, key=write_key)
    send(client, "identify", {"anonymousId": "3f2a9c1e-visitor", "traits": {"city": "Paris", "first_name": "Ann"}},
         key=write_key)
    visitor = Customer.objects.get(anonymous_id="3f2a9c1e-visitor")
    assert visitor.is_anonymous and visitor.first_name == "Ann"
    Device.objects.create(customer=visitor, kind="webpush", token="visitor-device-token")

    identify = {"userId": "crm-ada", "anonymousId": "3f2a9c1e-visitor", "traits": {"plan": "pro"}, "messageId": "id-1"}
    assert send(client, "identify", identify, key=write_key).status_code == 200
    assert send(client, "identify", identify, key=write_key).status_code == 200  # re-sent: nothing changes

    customer.refresh_from_db()
    visitor.refresh_from_db()
    assert visitor.merged_into_id == customer.pk and visitor.attributes == {}
    assert names(customer).count("Product Viewed") == 3
    assert names(customer).count("customer.merged") == 1
    assert names(visitor) == ["customer.created"]
    # Known values win; what the customer lacked is taken over.
    assert customer.first_name == "Ada" and customer.attributes == {"city": "Paris", "plan": "pro"}
    assert Device.objects.get(token="visitor-device-token").customer_id == customer.pk
    merged = Event.objects.get(customer=customer, name="customer.merged")
    assert merged.properties["anonymous_id"] == "3f2a9c1e-visitor" and merged.properties["events_moved"] == 4

    # Later events with the same anonymous id land on the known customer.
    send(client, "page", {"anonymousId": "3f2a9c1e-visitor", "name": "Later"}, key=write_key)
    assert "page_viewed" in names(customer) and "page_viewed" not in names(visitor)
    # An alias of the same pair changes nothing either.
    send(client, "alias", {"previousId": "3f2a9c1e-visitor", "userId": "crm-ada"}, key=write_key)
    assert names(customer).count("customer.merged") == 1


def test_an_alias_merges_and_an_unknown_anonymous_id_is_linked_for_later(client, write_key):
    send(client, "track", {"anonymousId": "anon-a", "event": "Viewed"}, key=write_key)
    assert send(client, "alias", {"previousId": "anon-a", "userId": "new-user"}, key=write_key).status_code == 200
    user = Customer.objects.get(external_id="new-user")
    assert "Viewed" in names(user) and "customer.merged" in names(user)
    # An identify linking an anonymous id never seen: nothing to move, but later events follow.
    send(client, "identify", {"anonymousId": "anon-b", "userId": "new-user"}, key=write_key)
    assert names(user).count("customer.merged") == 1
    send(client, "track", {"anonymousId": "anon-b", "event": "Came Back"}, key=write_key)
    assert "Came Back" in names(user)


def test_merged_visitors_are_hidden_from_the_customer_list(client, write_key, support):
    send(client, "track", {"anonymousId": "hidden-visitor", "event": "Viewed"}, key=write_key)
    assert Customer.objects.get(anonymous_id="hidden-visitor").display_name == "Anonymous visitor hidden-v…"
    client.force_login(support)
    assert "Anonymous visitor" in client.get("/customers/").content.decode()
    send(client, "identify", {"anonymousId": "hidden-visitor", "userId": "known"}, key=write_key)
    page = client.get("/customers/").content.decode()
    assert "Anonymous visitor" not in page and "known" in page


@pytest.mark.django_db(transaction=True)
def test_segments_see_the_merged_history(client, write_key):
    send(client, "track", {"anonymousId": "seg-visitor", "event": "Trial Started"}, key=write_key)
    segment = segment_services.segment_create(name="Trials", rules={"event": "Trial Started"}, actor="test")
    visitor = Customer.objects.get(anonymous_id="seg-visitor")
    assert set(SegmentMembership.objects.filter(segment=segment).values_list("customer_id", flat=True)) == {visitor.pk}

    send(client, "identify", {"anonymousId": "seg-visitor", "userId": "trialist"}, key=write_key)
    known = Customer.objects.get(external_id="trialist")
    assert set(SegmentMembership.objects.filter(segment=segment).values_list("customer_id", flat=True)) == {known.pk}


def test_every_path_the_sdks_use_is_served_and_others_are_a_json_404(client, write_key):
    for path in ("identify", "track", "page", "screen", "group", "alias", "i", "t", "p", "s", "g", "a"):
        response = send(client, path, {"userId": "u", "previousId": "p", "event": "x", "groupId": "g"}, key=write_key)
        assert response.status_code == 200, (path, response.content)
    for path in ("batch", "b", "import"):
        assert send(client, path, {"batch": [{"type": "track", "userId": "u", "event": "x"}]},
                    key=write_key).status_code == 200
    response = send(client, "nothing", {}, key=write_key)
    assert response.status_code == 404 and response.json()["message"].startswith("No source API endpoint")


@pytest.mark.django_db(transaction=True)
def test_concurrent_identifies_of_one_visitor_merge_it_once(live_server, write_key):
    import threading

    import httpx

    for round_ in range(3):
        anonymous_id = f"race-visitor-{round_}"
        with httpx.Client(base_url=live_server.url, headers=basic(write_key), timeout=60) as client:
            batch = [{"type": "track", "anonymousId": anonymous_id, "event": "Viewed", "messageId": f"{round_}-{i}"}
                     for i in range(5)]
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
        identify = {"userId": f"racer-{round_}", "anonymousId": anonymous_id, "traits": {"plan": "pro"}}
        start = threading.Barrier(4)
        statuses: list[int] = []

        def post():
            with httpx.Client(base_url=live_server.url, headers=basic(write_key), timeout=60) as client:
                start.wait()
                statuses.append(client.post("/v1/identify", json=identify).status_code)

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 4
        known = Customer.objects.get(external_id=f"racer-{round_}")
        assert names(known).count("customer.merged") == 1
        assert names(known).count("Viewed") == 5
        assert Customer.objects.get(anonymous_id=anonymous_id).merged_into_id == known.pk


def test_a_merge_moves_the_subscriptions_the_customer_has_not_chosen(client, write_key, customer, topics):
    from customers.models import Subscription

    send(client, "track", {"anonymousId": "subscriber", "event": "Viewed"}, key=write_key)
    visitor = Customer.objects.get(anonymous_id="subscriber")
    Subscription.objects.create(customer=visitor, topic=topics["newsletter"], channel="email", subscribed=True)
    Subscription.objects.create(customer=visitor, topic=topics["coupons"], channel="sms", subscribed=True)
    Subscription.objects.create(customer=customer, topic=topics["coupons"], channel="sms", subscribed=False)
    send(client, "identify", {"anonymousId": "subscriber", "userId": "crm-ada"}, key=write_key)
    mine = {(s.topic.key, s.channel): s.subscribed for s in Subscription.objects.filter(customer=customer)}
    assert mine == {("newsletter", "email"): True, ("coupons", "sms"): False}
    assert not Subscription.objects.filter(customer=visitor).exists()
