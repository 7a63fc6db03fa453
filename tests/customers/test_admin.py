import io
import json
import re
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from customers.services import api_keys, preferences, profiles
from customers.imports.models import CustomerImport, ImportIssue
from customers.imports.services import import_run, import_start, import_upload
from customers.limits import email_request_allow
from core.models import AuditEntry
from customers.models import (
    ApiKey,
    ChannelStatus,
    Consent,
    ConsentState,
    Customer,
    Device,
    EmailRequest,
    Event,
    Subscription,
    Topic,
)
from customers.roles import ADMIN
from tests.factories import CustomerFactory

EDITABLE = (Customer, Topic, Subscription, ChannelStatus, ApiKey)
# Recorded anew, never edited: a device token as the device reported it, a consent entry.
ADD_ONLY = (Device, Consent)
# An import and its report are what happened to a file: read, never edited.
READ_ONLY = (Event, ConsentState, AuditEntry, EmailRequest, CustomerImport, ImportIssue)


@pytest.fixture(params=["superuser", "admin-role"])
def admin_user(request, db):
    """pytest-django's admin_client signs in as this: a superuser, and a staff member with the Admin role."""
    # Signed in with force_login: no password, so no deliberately slow hashing per test.
    if request.param == "superuser":
        return User.objects.create(username="root", is_staff=True, is_superuser=True)
    user = User.objects.create(username="admin", is_staff=True)
    user.groups.add(Group.objects.get(name=ADMIN))
    return user


def add_records(customer: Customer, topics: dict) -> None:
    """One row in every customers table, written the way the product writes them."""
    preferences.subscription_set(
        customer=customer, topic=topics["coupons"], channel="sms", subscribed=True, source="test", actor="test"
    )
    preferences.consent_record(
        customer=customer, channel="sms", granted=True, source="signup_form", actor="test",
        ip_address="192.0.2.10", wording="Text me offers",
    )
    profiles.device_register(
        customer=customer, kind="fcm", token=f"token-of-{customer.pk}", platform="ios", source="test", actor="test"
    )
    api_keys.api_key_create(name=f"key for {customer.pk}")
    preferences.channel_status_set(
        customer_ids={customer.pk}, channel="email", status="bounced", reason="550 no such mailbox", source="test"
    )
    email_request_allow(purpose="password-reset", email=customer.email or "someone@example.com",
                        ip_address="192.0.2.10", per_address=3, window=timedelta(hours=1))
    # An import with one row rejected, so its report has an entry.
    csv = f"id,email\nimp-{customer.pk},imported-{customer.pk}@example.com\nbad-{customer.pk},not-an-email\n"
    customer_import = import_upload(file=io.BytesIO(csv.encode()), filename="crm.csv", actor="test")
    import_start(customer_import=customer_import, mapping_spec={"id": {"to": "external_id"}, "email": {"to": "email"}},
                 match_on="external_id", update_existing=True, actor="test")
    import_run(import_id=customer_import.pk)


@pytest.fixture
def records(customer, topics):
    add_records(customer, topics)


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_every_customers_and_core_model_is_in_admin():
    # The ingestion counter is a dashboard aggregate, not a record anyone reviews.
    models = (
        set(apps.get_app_config("customers").get_models()) | set(apps.get_app_config("core").get_models())
    ) - {apps.get_model("customers", "IngestCounter")}
    assert models == set(EDITABLE + ADD_ONLY + READ_ONLY)
    assert all(admin.site.is_registered(model) for model in models)


@pytest.mark.parametrize("model", EDITABLE + ADD_ONLY + READ_ONLY, ids=lambda m: m.__name__)
def test_changelist_and_change_page_render(admin_client, records, model):
    obj = model.objects.order_by("-pk").first()
    change_url = admin_url(model, "change", obj.pk)

    changelist = admin_client.get(admin_url(model, "changelist"))
    assert changelist.status_code == 200
    assert change_url in changelist.text

    change = admin_client.get(change_url)
    assert change.status_code == 200
    # History is viewable but offers nothing to save.
    assert ('name="_save"' in change.text) is (model in EDITABLE)


@pytest.mark.parametrize("model", EDITABLE + ADD_ONLY + READ_ONLY, ids=lambda m: m.__name__)
def test_changelist_queries_do_not_grow_with_rows(admin_client, records, topics, model):
    url = admin_url(model, "changelist")
    admin_client.get(url)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for _ in range(5):
        add_records(CustomerFactory(), topics)
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(url)
    assert response.status_code == 200
    assert len(many) == len(few), [q["sql"] for q in many]


@pytest.mark.parametrize("model", READ_ONLY, ids=lambda m: m.__name__)
def test_history_cannot_be_added_changed_or_deleted(admin_client, records, model):
    count = model.objects.count()
    obj = model.objects.first()

    assert admin_client.get(admin_url(model, "add")).status_code == 403
    assert admin_client.post(admin_url(model, "add"), {}).status_code == 403
    assert admin_client.post(admin_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(admin_url(model, "change", obj.pk), {}).status_code == 403
    assert model.objects.count() == count


@pytest.mark.parametrize("model", ADD_ONLY, ids=lambda m: m.__name__)
def test_recorded_entries_cannot_be_changed(admin_client, records, model):
    obj = model.objects.first()
    before = list(model.objects.values())

    assert admin_client.get(admin_url(model, "add")).status_code == 200
    assert admin_client.post(admin_url(model, "change", obj.pk), {}).status_code == 403
    assert list(model.objects.values()) == before


def test_consent_recorded_in_admin_is_on_the_ledger_and_the_timeline(admin_client, customer):
    response = admin_client.post(admin_url(Consent, "add"), {
        "customer": customer.pk, "channel": "sms", "granted": "", "legal_basis": "consent",
        "occurred_at_0": "2026-11-30", "occurred_at_1": "09:30:00", "wording": "Asked on the phone to stop texts",
        "_save": "Save",
    })

    assert response.status_code == 302
    entry = Consent.objects.get(customer=customer)
    assert (entry.granted, entry.source, entry.recorded_by) == (False, "admin", "admin:" + response.wsgi_request.user.get_username())
    assert ConsentState.objects.get(customer=customer, channel="sms").granted is False
    revoked = Event.objects.get(customer=customer, name="consent.revoked")
    assert revoked.properties["wording"] == "Asked on the phone to stop texts"


def test_consent_time_far_in_the_future_is_refused_inline(admin_client, customer):
    response = admin_client.post(admin_url(Consent, "add"), {
        "customer": customer.pk, "channel": "sms", "granted": "on", "legal_basis": "consent",
        "occurred_at_0": "2099-01-01", "occurred_at_1": "00:00:00", "_save": "Save",
    })

    assert response.status_code == 200
    assert "consent time" in response.text
    assert not Consent.objects.exists()


def test_device_removed_in_admin_is_on_the_timeline(admin_client, records, customer):
    device = Device.objects.get(customer=customer)

    response = admin_client.post(admin_url(Device, "delete", device.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not Device.objects.filter(pk=device.pk).exists()
    removed = Event.objects.get(customer=customer, name="device.removed")
    assert removed.properties["device_id"] == device.pk
    assert removed.actor.startswith("admin:")
    assert AuditEntry.objects.filter(action="device.deleted", object_id=str(device.pk)).exists()


def test_event_add_is_refused(admin_client, customer):
    response = admin_client.post(
        admin_url(Event, "add"), {"customer": customer.pk, "name": "order_completed", "properties": "{}"}
    )
    assert response.status_code == 403
    assert not Event.objects.filter(name="order_completed").exists()


def test_support_users_are_kept_out_of_admin(client, support):
    client.force_login(support)
    response = client.get(reverse("admin:customers_customer_changelist"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_api_key_add_shows_the_raw_key_once_and_stores_only_its_hash(admin_client):
    response = admin_client.get(admin_url(ApiKey, "add"))
    assert list(response.context["adminform"].form.fields) == ["name", "scope"]

    response = admin_client.post(admin_url(ApiKey, "add"), {"name": "crm-sync", "scope": "api", "_save": "Save"},
                                 follow=True)

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "Copy this key now" in str(m)]
    assert len(shown) == 1
    assert shown[0].startswith("Copy this key now, it will not be shown again: sb_")
    raw = re.search(r"(sb_[A-Za-z0-9_\-]+)", shown[0]).group(1)
    key = ApiKey.objects.get(name="crm-sync")
    assert key.key_hash == ApiKey.hash(raw)
    assert key.prefix == raw[:10]
    assert raw not in json.dumps(list(ApiKey.objects.values()), default=str)
    assert AuditEntry.objects.filter(action="api_key.created", object_id=str(key.pk)).exists()

    # The key is not shown again, on the list or on its page.
    assert raw not in admin_client.get(admin_url(ApiKey, "changelist")).text
    assert raw not in admin_client.get(admin_url(ApiKey, "change", key.pk)).text


def test_revoke_selected_keys(admin_client):
    active, raw = api_keys.api_key_create(name="web-tracking")
    kept, _ = api_keys.api_key_create(name="crm-sync")

    response = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "revoke_selected", "_selected_action": [active.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert any("Revoked 1 key" in str(m) for m in response.context["messages"])
    assert not ApiKey.objects.active().filter(key_hash=ApiKey.hash(raw)).exists()
    assert ApiKey.objects.active().filter(pk=kept.pk).exists()
    assert AuditEntry.objects.filter(action="api_key.revoked", object_id=str(active.pk)).exists()


def test_customer_search_finds_by_email_and_external_id(admin_client, customer):
    other = CustomerFactory(email="grace@example.com", external_id="crm-grace")
    url = admin_url(Customer, "changelist")

    by_email = admin_client.get(url, {"q": "ada@example.com"}).text
    assert admin_url(Customer, "change", customer.pk) in by_email
    assert admin_url(Customer, "change", other.pk) not in by_email

    by_external_id = admin_client.get(url, {"q": "crm-grace"}).text
    assert admin_url(Customer, "change", other.pk) in by_external_id
    assert admin_url(Customer, "change", customer.pk) not in by_external_id


def _change_form_data(response) -> dict:
    """What the browser would post back from an admin change page, unchanged."""
    form = response.context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        data[name] = "" if value is None else value
    for inline in response.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        for name in management.fields:
            data[f"{management.prefix}-{name}"] = management[name].value()
    return data


def test_customer_edit_normalises_and_leaves_a_trace(admin_client, customer):
    url = admin_url(Customer, "change", customer.pk)
    data = _change_form_data(admin_client.get(url))

    refused = admin_client.post(url, {**data, "phone": "555-not-a-number"})
    assert refused.status_code == 200
    assert "not a phone number" in refused.text

    response = admin_client.post(
        url, {**data, "phone": "+44 7400 123456", "timezone": "Europe/London", "attributes": '{"plan": "pro"}'}
    )
    assert response.status_code == 302
    customer.refresh_from_db()
    assert customer.phone == "+447400123456"
    assert customer.timezone == "Europe/London"
    assert customer.attributes == {"plan": "pro"}
    updated = Event.objects.get(customer=customer, name="customer.updated")
    assert updated.properties["changes"]["phone"][1] == "+447400123456"
    assert updated.properties["changes"]["attributes.plan"] == [None, "pro"]
    assert updated.category == "profile"
    assert AuditEntry.objects.filter(action="customer.changed", object_id=str(customer.pk)).exists()


def test_unsubscribing_in_admin_is_on_the_customer_timeline(admin_client, customer, topics):
    preferences.subscription_set(
        customer=customer, topic=topics["newsletter"], channel="email", subscribed=True, source="test", actor="test"
    )
    subscription = Subscription.objects.get(customer=customer)
    url = admin_url(Subscription, "change", subscription.pk)

    response = admin_client.post(url, {"subscribed": "", "reason": "Asked by phone", "_save": "Save"})

    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.subscribed is False
    change = Event.objects.filter(customer=customer, name="subscription.changed").order_by("-id").first()
    assert change.properties["subscribed"] is False
    assert change.properties["reason"] == "Asked by phone"
    assert change.actor.startswith("admin:")


def test_event_list_of_a_big_table_pages_without_counting_every_row(admin_client, customer):
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO customers_event
                (customer_id, name, category, channel, properties, occurred_at, received_at, source, actor)
            SELECT %s, 'page_viewed', 'event', '', '{}', now(), now(), 'web', ''
            FROM generate_series(1, 120000)
            """,
            [customer.pk],
        )
        cursor.execute("ANALYZE customers_event")
    url = admin_url(Event, "changelist")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)

    assert response.status_code == 200
    assert not [q["sql"] for q in queries if "COUNT(*)" in q["sql"] and "customers_event" in q["sql"]]
    # The page count comes from the planner's estimate, close to the real one.
    assert 115_000 <= response.context["cl"].result_count <= 125_000
    # A filtered list is still counted exactly.
    filtered = admin_client.get(url, {"category": "note"})
    assert filtered.context["cl"].result_count == 0
