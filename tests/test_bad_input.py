"""Input no endpoint may answer 500 to: each bad value gets a 400 naming the field (or a
JSON 404 for paths that name nothing), an inline error on the pages, and writes nothing.

The tables post each bad input to the real endpoints; ``snapshot`` counts every table a
request could write to, before and after.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, Delivery
from core.models import AuditEntry
from customers.models import Consent, ConsentState, Customer, Event, Subscription
from segments.models import Segment, SegmentMembership
from segments.services import segment_create
from tests.factories import CustomerFactory, EventFactory

pytestmark = pytest.mark.django_db

NUL = "\u0000"


def snapshot() -> dict:
    models = (Customer, Event, Consent, ConsentState, Subscription, Segment, SegmentMembership, Campaign, Delivery,
              AuditEntry)
    return {model.__name__: model.objects.count() for model in models} | {
        "profiles": list(Customer.objects.order_by("pk").values_list("first_name", "attributes", "external_id")),
    }


@pytest.fixture
def static_segment(db):
    return segment_create(name="VIPs", static=True, actor="test")


@pytest.fixture
def draft(db, topics, static_segment):
    from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
    from customers.models import ChannelKind

    data = CampaignInput(
        name="Winter sale", topic="newsletter", channels=[ChannelKind.SMS], segment_ids=[static_segment.pk],
        variants=[VariantInput(key="A", content={"sms": {"body": "Hi"}})],
    )
    return campaign_create(data=data, actor="test")


def _campaign(**overrides) -> dict:
    return {"name": "Spring", "topic": "newsletter", "segment_ids": [], "channels": ["sms"],
            "content": {"sms": {"body": "Hi"}}, **overrides}


def _event(**overrides) -> dict:
    return {"events": [{"customer": {"external_id": "crm-new"}, "name": "order_completed", **overrides}]}


# (name, method, path, body as raw JSON text, expected status, field named in the errors)
# Bodies are raw text so that NaN, Infinity and \u0000 reach the server exactly as a client sends them.
API_CASES = [
    # NUL characters, anywhere a text is accepted
    ("nul in a first name", "post", "/customers",
     '{"external_id": "crm-1", "first_name": "Ada\\u0000"}', 400, "first_name"),
    ("nul in an external id", "post", "/customers", '{"external_id": "crm\\u00001"}', 400, "external_id"),
    ("nul in an attribute value", "post", "/customers",
     '{"external_id": "crm-1", "attributes": {"plan": "pro\\u0000"}}', 400, "attributes.plan"),
    ("nul in a nested attribute value", "post", "/customers",
     '{"external_id": "crm-1", "attributes": {"tags": [{"name": "x\\u0000"}]}}', 400, "attributes.tags[0].name"),
    ("nul in a batch item", "post", "/customers/batch",
     '{"customers": [{"external_id": "crm-1"}, {"external_id": "crm-2", "last_name": "\\u0000"}]}', 400,
     "last_name"),
    ("nul in an event property", "post", "/events",
     json.dumps(_event(properties={"note": "a" + NUL})), 400, "properties.note"),
    ("nul in an event property name", "post", "/events",
     json.dumps(_event(properties={"no" + NUL + "te": "a"})), 400, "properties"),
    ("nul in an idempotency key", "post", "/events", json.dumps(_event(idempotency_key="k" + NUL)), 400,
     "idempotency_key"),
    ("nul in a customer reference", "post", "/events",
     json.dumps({"events": [{"customer": {"external_id": "x" + NUL}, "name": "order_completed"}]}), 400,
     "customer.external_id"),
    ("nul in the batch source", "post", "/events",
     json.dumps({"source": "w" + NUL, **_event()}), 400, "source"),
    ("nul in a consent source", "post", "/customers/{customer}/consent",
     json.dumps({"channel": "email", "granted": True, "source": "form" + NUL}), 400, "source"),
    ("nul in a subscription reason", "post", "/customers/{customer}/subscriptions",
     json.dumps({"topic": "newsletter", "channel": "email", "subscribed": True, "reason": NUL}), 400, "reason"),
    ("nul in a static member list", "post", "/segments/{segment}/members",
     json.dumps({"external_ids": ["crm-ada" + NUL]}), 400, "external_ids[0]"),
    ("nul in a segment name", "post", "/segments", json.dumps({"name": "VIP" + NUL, "static": True}), 400, "name"),
    ("nul in a rule value", "post", "/segments/preview",
     json.dumps({"rules": {"attr": "first_name", "op": "eq", "value": NUL}}), 400, "rules.value"),
    ("nul in a campaign topic", "post", "/campaigns", json.dumps(_campaign(topic="news" + NUL)), 400, "topic"),
    ("nul in campaign content", "post", "/campaigns",
     json.dumps(_campaign(content={"sms": {"body": "Hi" + NUL}})), 400, "content.sms.body"),
    ("nul in a message topic", "post", "/messages",
     json.dumps({"customer": {"id": 1}, "topic": "a" + NUL, "channel": "sms", "content": {"body": "x"}}), 400,
     "topic"),
    ("nul in a timeline cursor", "get", "/customers/{customer}/timeline?cursor=%00", None, 400, "cursor"),
    ("nul in a campaign list cursor", "get", "/campaigns?cursor=%00", None, 400, "cursor"),
    # NaN and Infinity (Python's json reads them; PostgreSQL's jsonb cannot store them)
    ("NaN attribute", "post", "/customers", '{"external_id": "crm-1", "attributes": {"score": NaN}}', 400,
     "attributes.score"),
    ("Infinity attribute", "post", "/customers",
     '{"external_id": "crm-1", "attributes": {"score": [1, -Infinity]}}', 400, "attributes.score[1]"),
    ("overflowing number attribute", "post", "/customers",
     '{"external_id": "crm-1", "attributes": {"score": 1e999}}', 400, "attributes.score"),
    ("NaN event property", "post", "/events",
     '{"events": [{"customer": {"external_id": "crm-1"}, "name": "order_completed", "properties": {"total": NaN}}]}',
     400, "properties.total"),
    ("NaN rule value", "post", "/segments/preview",
     '{"rules": {"attr": "attributes.score", "op": "gt", "value": NaN}}', 400, "rules.value"),
    # Timestamps outside the sane window
    ("consent far in the future", "post", "/customers/{customer}/consent",
     json.dumps({"channel": "email", "granted": False, "source": "t", "occurred_at": "9999-12-31T23:59:59-14:00"}),
     400, "occurred_at"),
    ("consent in year 1", "post", "/customers/{customer}/consent",
     json.dumps({"channel": "email", "granted": False, "source": "t", "occurred_at": "0001-01-01T00:00:00+14:00"}),
     400, "occurred_at"),
    ("consent tomorrow", "post", "/customers/{customer}/consent",
     json.dumps({"channel": "email", "granted": True, "source": "t",
                 "occurred_at": (timezone.now() + timedelta(hours=2)).isoformat()}), 400, "occurred_at"),
    ("consent before 1970", "post", "/customers/{customer}/consent",
     json.dumps({"channel": "email", "granted": True, "source": "t", "occurred_at": "1969-12-31T23:59:59+00:00"}),
     400, "occurred_at"),
    ("event in year 1", "post", "/events", json.dumps(_event(occurred_at="0001-01-01T00:00:00+14:00")), 400,
     "occurred_at"),
    ("event before 1970", "post", "/events", json.dumps(_event(occurred_at="1900-01-01T00:00:00Z")), 400,
     "occurred_at"),
    ("event far in the future", "post", "/events", json.dumps(_event(occurred_at="9999-12-31T23:59:59-14:00")), 400,
     "occurred_at"),
    ("schedule past year 9999", "post", "/campaigns",
     json.dumps(_campaign(schedule={"at": "9999-12-31T23:59:59-14:00"})), 400, "schedule.at"),
    ("schedule beyond the horizon", "post", "/campaigns",
     json.dumps(_campaign(schedule={"at": "2300-01-01T00:00:00Z"})), 400, "schedule.at"),
    ("schedule in year 1", "post", "/campaigns",
     json.dumps(_campaign(schedule={"at": "0001-01-01T00:00:00+14:00"})), 400, "schedule.at"),
    ("local schedule past year 9999", "post", "/campaigns",
     json.dumps(_campaign(schedule={"local": "9999-12-31T23:59"})), 400, "schedule.local"),
    # Day windows that overflow a date
    ("huge within_days on an attribute", "post", "/segments/preview",
     json.dumps({"rules": {"attr": "last_seen_at", "op": "within_days", "value": 740_000}}), 400, "rules.value"),
    ("huge before_days on an attribute", "post", "/segments",
     json.dumps({"name": "Old", "rules": {"attr": "created_at", "op": "before_days", "value": 1e300}}), 400,
     "rules.value"),
    ("huge within_days on an event", "post", "/segments/preview",
     json.dumps({"rules": {"event": "order_completed", "within_days": 740_000}}), 400, "rules.within_days"),
    ("huge within_days in an event condition", "post", "/segments/preview",
     json.dumps({"rules": {"event": "order_completed",
                           "where": [{"prop": "paid_at", "op": "within_days", "value": 10**9}]}}), 400,
     "rules.where[0].value"),
    ("impossible date in a rule", "post", "/segments/preview",
     json.dumps({"rules": {"attr": "created_at", "op": "gt", "value": "2024-13-45"}}), 400, "rules.value"),
    # Rule keys must match completely: a trailing newline is not part of a name
    ("attribute rule key with a newline", "post", "/segments/preview",
     json.dumps({"rules": {"attr": "attributes.plan\n", "op": "eq", "value": "pro"}}), 400, "rules.attr"),
    ("event property key with a newline", "post", "/segments/preview",
     json.dumps({"rules": {"event": "order_completed", "where": [{"prop": "total\n", "op": "gt", "value": 1}]}}),
     400, "rules.where[0].prop"),

    # Ids out of the database's range
    ("huge customer id in an event", "post", "/events",
     json.dumps({"events": [{"customer": {"id": 10**20}, "name": "order_completed"}]}), 400, "customer.id"),
]


@pytest.mark.parametrize(
    "method, path, body, status, field", [case[1:] for case in API_CASES], ids=[case[0] for case in API_CASES]
)
def test_bad_api_input_is_a_400_naming_the_field_and_writes_nothing(
    api, client, topics, customer, static_segment, method, path, body, status, field
):
    path = path.format(customer=customer.pk, segment=static_segment.pk)
    before = snapshot()
    if method == "get":
        response = client.get(f"/api/v1{path}", headers=api.headers)
    else:
        response = api.post(path, raw=body)
    assert response.status_code == status, response.content
    data = response.json()
    assert data["message"]
    fields = [error["field"] for error in data["errors"]]
    assert field in fields, data
    assert snapshot() == before


NOT_FOUND = [
    ("get", "/api/v1/customers/abc"),
    ("get", "/api/v1/customers/1.5/timeline"),
    ("post", "/api/v1/customers/abc/consent"),
    ("post", "/api/v1/campaigns/x/launch"),
    ("get", "/api/v1/segments/x"),
    ("get", "/api/v1/segments/1/why/me"),
    ("get", "/api/v1/messages/%00"),
    ("get", "/api/v1/nothing-here"),
    ("get", "/api/nothing"),
]


@pytest.mark.parametrize("method, path", NOT_FOUND)
def test_api_paths_that_name_nothing_answer_a_json_404(api, client, settings, method, path):
    settings.DEBUG = True  # Django's own 404 page would list every URL pattern
    before = snapshot()
    response = getattr(client, method)(path, headers=api.headers)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    data = response.json()
    assert set(data) == {"message", "errors"} and data["errors"] == []
    assert "api/v1/customers/<int" not in data["message"]
    assert snapshot() == before


def test_a_json_404_does_not_need_a_key(client):
    response = client.get("/api/v1/customers/abc")
    assert response.status_code == 404
    assert response.json()["errors"] == []


# --- Timestamps: the stored window -----------------------------------------------------------


def test_accepted_timestamps_at_the_edges_of_the_window(api, customer):
    day_ago = timezone.now() - timedelta(days=1)
    consent = api.post(f"/customers/{customer.pk}/consent",
                       {"channel": "email", "granted": True, "source": "t", "occurred_at": day_ago.isoformat()})
    assert consent.status_code == 201
    event = api.post("/events", _event(occurred_at=(timezone.now() + timedelta(hours=23)).isoformat()))
    assert event.status_code == 200 and event.json()["accepted"] == 1
    old = api.post("/events", _event(occurred_at="1970-01-01T00:00:00Z", idempotency_key="old"))
    assert old.status_code == 200 and old.json()["accepted"] == 1


def test_an_offset_python_reads_but_postgresql_does_not_is_stored_as_the_same_moment(api, customer):
    # +17:39 is a valid ISO offset to Python; PostgreSQL stores offsets up to ±15:59 only.
    moment = (timezone.now() - timedelta(days=2)).replace(microsecond=0)
    far_east = moment.astimezone(timezone.get_fixed_timezone(17 * 60 + 39)).isoformat()
    consent = api.post(f"/customers/{customer.pk}/consent",
                       {"channel": "email", "granted": True, "source": "t", "occurred_at": far_east})
    assert consent.status_code == 201
    event = api.post("/events", _event(occurred_at=far_east, idempotency_key="far-east"))
    assert event.status_code == 200 and event.json()["accepted"] == 1
    assert Consent.objects.get(customer=customer).occurred_at == moment
    assert Event.objects.get(name="order_completed").occurred_at == moment


@pytest.mark.parametrize("moment", ["10000-01-01 00:00:00+00", "0001-01-01 00:00:00+00", "1969-12-31 23:00:00+00"])
def test_the_database_refuses_timeline_and_consent_rows_outside_the_window(customer, moment):
    from django.db import IntegrityError, transaction

    for sql in (
        "INSERT INTO customers_event (customer_id, name, category, channel, properties, occurred_at, received_at, "
        "source, actor) VALUES (%s, 'x', 'event', '', '{}', %s::timestamptz, now(), 'api', '')",
        "INSERT INTO customers_consent (customer_id, channel, granted, occurred_at, source, legal_basis, user_agent, "
        "wording, form_url, recorded_by) VALUES (%s, 'email', true, %s::timestamptz, 't', 'consent', '', '', '', '')",
    ):
        with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [customer.pk, moment])


def test_pages_stay_readable_after_a_bad_timestamp_is_refused(api, client, admin_user, customer):
    """The reproduction: the refused consent leaves every page about the customer working."""
    refused = api.post(f"/customers/{customer.pk}/consent", {
        "channel": "email", "granted": False, "source": "t", "occurred_at": "9999-12-31T23:59:59-14:00",
    })
    assert refused.status_code == 400
    assert api.post(f"/customers/{customer.pk}/consent", {"channel": "email", "granted": True, "source": "t"}).status_code == 201
    assert api.get(f"/customers/{customer.pk}").json()["consent"][0]["granted"] is True
    assert api.get(f"/customers/{customer.pk}/timeline").status_code == 200
    client.force_login(admin_user)
    for url in (reverse("customers:detail", args=[customer.pk]), "/admin/customers/event/",
                "/admin/customers/consent/", "/admin/customers/consentstate/"):
        assert client.get(url).status_code == 200, url


# --- Pages -----------------------------------------------------------------------------------


def test_searching_customers_for_a_nul_finds_nobody(client, support, customer):
    client.force_login(support)
    response = client.get(reverse("customers:list"), {"q": NUL})
    assert response.status_code == 200
    assert reverse("customers:detail", args=[customer.pk]) not in response.content.decode()


def test_a_nul_in_a_static_member_list_is_an_inline_error(client, marketer, customer, static_segment):
    client.force_login(marketer)
    before = snapshot()
    response = client.post(reverse("segments:members_add", args=[static_segment.pk]), {"pasted": "crm-ada" + NUL})
    assert response.status_code in (200, 422)
    assert "null characters" in response.content.decode().lower()
    assert snapshot() == before


def test_a_nul_in_the_campaign_topic_is_an_inline_error(client, marketer, topics, static_segment):
    client.force_login(marketer)
    before = snapshot()
    response = client.post(reverse("campaigns:new"), {
        "name": "Spring", "topic": "news" + NUL, "segment_ids": [static_segment.pk], "channels": ["sms"],
        "strategy": "all", "variant_count": "1", "A-weight": "1", "A-sms-body": "Hi", "schedule": "now",
        "test_percent": "20", "test_metric": "click", "test_hours": "4",
    })
    assert response.status_code == 422
    assert "Choose a topic" in response.content.decode() or "valid choice" in response.content.decode()
    assert snapshot() == before


def test_a_nul_in_campaign_content_is_an_inline_error(client, marketer, topics, static_segment):
    client.force_login(marketer)
    before = snapshot()
    response = client.post(reverse("campaigns:new"), {
        "name": "Spring", "topic": "newsletter", "segment_ids": [static_segment.pk], "channels": ["sms"],
        "strategy": "all", "variant_count": "1", "A-weight": "1", "A-sms-body": "Hi" + NUL, "schedule": "now",
        "test_percent": "20", "test_metric": "click", "test_hours": "4",
    })
    assert response.status_code == 422
    assert "null characters" in response.content.decode().lower()
    assert snapshot() == before


def test_a_far_schedule_in_the_compose_form_is_an_inline_error(client, marketer, topics, static_segment):
    client.force_login(marketer)
    before = snapshot()
    response = client.post(reverse("campaigns:new"), {
        "name": "Spring", "topic": "newsletter", "segment_ids": [static_segment.pk], "channels": ["sms"],
        "strategy": "all", "variant_count": "1", "A-weight": "1", "A-sms-body": "Hi", "schedule": "at",
        "send_at": "9999-12-31T23:59", "test_percent": "20", "test_metric": "click", "test_hours": "4",
    })
    assert response.status_code == 422
    assert snapshot() == before


@pytest.mark.parametrize("rules", [
    {"attr": "last_seen_at", "op": "within_days", "value": 740_000},
    {"event": "order_completed", "within_days": 740_000},
    '{"attr": "attributes.score", "op": "gt", "value": NaN}',
    {"attr": "first_name", "op": "eq", "value": "a" + NUL},
])
def test_the_builder_preview_shows_bad_rules_as_errors(client, marketer, rules):
    client.force_login(marketer)
    text = rules if isinstance(rules, str) else json.dumps(rules)
    response = client.post(reverse("segments:preview"), {"rules": text}, headers={"HX-Request": "true"})
    assert response.status_code in (200, 422)
    assert 'id="preview-errors"' in response.content.decode()


def test_saving_a_segment_with_a_huge_window_is_an_inline_error(client, marketer):
    client.force_login(marketer)
    before = snapshot()
    rules = json.dumps({"event": "order_completed", "within_days": 740_000})
    response = client.post(reverse("segments:new"), {"name": "Old", "kind": "dynamic", "rules": rules})
    assert response.status_code in (200, 422)
    assert snapshot() == before


# --- ESP webhooks ----------------------------------------------------------------------------

# What each ESP's webhook needs to be configured; with these, every tracking URL is served.
ESP_SETTINGS = {
    "WEBHOOK_SECRET": "user:pass",
    "MAILGUN_WEBHOOK_SIGNING_KEY": "key", "MAILERSEND_SIGNING_SECRET": "secret", "MANDRILL_WEBHOOK_KEY": "key",
    "POSTAL_WEBHOOK_KEY": "key", "UNISENDER_GO_API_KEY": "key",
    "MAILTRAP_API_TOKEN": "token", "SPARKPOST_API_KEY": "key",
}
# Amazon SES needs boto3, which is not installed here: its webhook is not served.
NOT_SERVED = {"amazon_ses"}


def _tracking_urls() -> dict[str, str]:
    from anymail import urls

    return {pattern.name.split("_tracking")[0].split("_combined")[0]: f"/webhooks/anymail/{pattern.pattern}"
            for pattern in urls.urlpatterns if "tracking" in pattern.name or "combined" in pattern.name}


GARBAGE = [
    ("not json", "text/plain", b"\x00\xff garbage {"),
    ("json scalar", "application/json", b"42"),
    ("json list of scalars", "application/json", b"[1, 2, 3]"),
    ("json object", "application/json", b'{"event": {"weird": true}, "signature": 5, "data": 1}'),
    ("json list of objects", "application/json", b'[{"event": 5, "timestamp": "x", "msys": 1}]'),
    ("form", "application/x-www-form-urlencoded", b"mandrill_events=%7Bnot-json&x=1"),
]


@pytest.mark.parametrize("kind, content_type, body", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_malformed_esp_webhooks_answer_400_for_every_esp(client, settings, kind, content_type, body):
    import base64

    settings.ANYMAIL = ESP_SETTINGS
    auth = "Basic " + base64.b64encode(b"user:pass").decode()
    before = snapshot()
    client.raise_request_exception = False
    answers = {}
    for esp, url in _tracking_urls().items():
        response = client.post(url, body, content_type=content_type, headers={"Authorization": auth})
        answers[esp] = response.status_code
    assert len(answers) >= 14
    # Some ESPs read a well-formed but meaningless body as zero events (200); what no ESP
    # can read is a 400, and nothing is a 500.
    expected = {400} if kind in ("not json", "json scalar") else {200, 400}
    assert {esp: status for esp, status in answers.items()
            if status not in ({404} if esp in NOT_SERVED else expected)} == {}
    assert snapshot() == before


def test_the_webhook_of_an_esp_that_is_not_configured_is_not_found(client, settings):
    settings.ANYMAIL = {"WEBHOOK_SECRET": "user:pass"}
    client.raise_request_exception = False
    response = client.post("/webhooks/anymail/mailgun/tracking/", b"{}", content_type="application/json")
    assert response.status_code == 404


# --- The Segment-compatible source API (/v1/) ---------------------------------------------------

# (name, path, body as raw JSON text, field named in the errors, index of the message when batched)
SOURCE_CASES = [
    ("nul in a userId", "track", '{"userId": "u\\u0000", "event": "x"}', "userId", None),
    ("nul in a trait", "identify", '{"userId": "u", "traits": {"plan": "p\\u0000"}}', "traits.plan", None),
    ("nul in a property name", "track", json.dumps({"userId": "u", "event": "x", "properties": {"a" + NUL: 1}}),
     "properties", None),
    ("NaN property", "track", '{"userId": "u", "event": "x", "properties": {"total": NaN}}', "properties.total", None),
    ("Infinity in a batch", "batch", '{"batch": [{"type": "track", "userId": "u", "event": "x", '
     '"properties": {"n": [1, Infinity]}}]}', "properties.n[1]", 0),
    ("timestamp in year 1", "track", '{"userId": "u", "event": "x", "timestamp": "0001-01-01T00:00:00+14:00"}',
     "timestamp", None),
    ("timestamp past year 9999", "page", '{"userId": "u", "timestamp": "9999-12-31T23:59:59-14:00"}',
     "timestamp", None),
    ("sentAt that overflows the correction", "batch", '{"batch": [{"type": "track", "userId": "u", "event": "x", '
     '"timestamp": "9999-12-31T00:00:00Z", "sentAt": "0001-01-01T00:00:00Z"}]}', "timestamp", 0),
    ("invalid phone trait", "identify", '{"userId": "u", "traits": {"phone": "+1"}}', "traits.phone", None),
    ("invalid email trait in a batch", "batch",
     '{"batch": [{"type": "identify", "userId": "u", "traits": {"email": "nope"}}]}', "traits.email", 0),
    ("a batch context that is not an object", "batch", '{"batch": [{"type": "track", "userId": "u", "event": "x"}], "context": []}',
     "context", None),
    ("a batch that is not a list", "batch", '{"batch": {"type": "track"}}', "batch", None),
    ("an event name reserved for the platform", "track", '{"userId": "u", "event": "segment.entered"}', "event", None),
]


@pytest.mark.parametrize("path, body, field, index", [case[1:] for case in SOURCE_CASES],
                         ids=[case[0] for case in SOURCE_CASES])
def test_bad_source_api_input_is_a_400_naming_the_field_and_writes_nothing(client, path, body, field, index):
    from customers.models import ApiKey
    from customers.services import api_keys

    _, key = api_keys.api_key_create(name="web", scope=ApiKey.Scope.SOURCE)
    before = snapshot()
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    response = client.post(f"/v1/{path}", body, content_type="text/plain", headers={"Authorization": auth})
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert (index, field) in [(error.get("index"), error["field"]) for error in errors], errors
    assert snapshot() == before
