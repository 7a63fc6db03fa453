import io
import re
from datetime import timedelta
from zoneinfo import available_timezones

import phonenumbers
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from core.models import AuditEntry
from customers.models import (
    ApiKey,
    Consent,
    ConsentState,
    Customer,
    Device,
    Event,
    Subscription,
    Topic,
    category_for,
)
from customers.roles import ADMIN, MARKETER, SUPPORT, user_roles
from customers.validation import normalize_phone

CUSTOMERS = 300


def seed(**options) -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def output(db):
    return seed(customers=CUSTOMERS)


def table_counts() -> dict:
    models = (Customer, Device, Topic, Subscription, Consent, ConsentState, Event, ApiKey, AuditEntry, User)
    return {model.__name__: model.objects.count() for model in models}


def test_counts_and_summary(output):
    assert Customer.objects.count() == CUSTOMERS
    assert {t.key: t.is_transactional for t in Topic.objects.all()} == {
        "newsletter": False, "coupons": False, "product-updates": False, "alerts": True,
    }
    with_email = Customer.objects.exclude(email="").count()
    with_phone = Customer.objects.exclude(phone="").count()
    with_device = Customer.objects.filter(devices__isnull=False).distinct().count()
    assert with_email > 0.85 * CUSTOMERS
    assert 0.6 * CUSTOMERS < with_phone < 0.8 * CUSTOMERS
    assert 0.1 * CUSTOMERS < with_device < 0.3 * CUSTOMERS
    assert Subscription.objects.filter(subscribed=False).exists()
    assert Subscription.objects.filter(subscribed=True).count() > CUSTOMERS
    assert Consent.objects.filter(granted=False).exists()
    assert 8 * CUSTOMERS < Event.objects.count() < 20 * CUSTOMERS
    assert set(Customer.objects.values_list("lifecycle_stage", flat=True)) == {
        "lead", "prospect", "customer", "expert", "churned",
    }
    assert f"{CUSTOMERS:,} customers" in output
    assert f"{Event.objects.count():,} events" in output


def test_customers_have_demo_attributes(output):
    for customer in Customer.objects.all():
        attributes = customer.attributes
        assert attributes["plan"] in {"free", "pro", "team"}
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", attributes["signup_date"])
        assert isinstance(attributes["lifetime_value"], (int, float))
        assert customer.external_id and customer.locale


def test_every_phone_is_valid_e164_across_countries(output):
    phones = list(Customer.objects.exclude(phone="").values_list("phone", flat=True))
    assert phones
    for phone in phones:
        assert normalize_phone(phone) == phone
    regions = {phonenumbers.region_code_for_number(phonenumbers.parse(phone)) for phone in phones}
    assert len(regions) >= 8


def test_timezones_are_iana_and_span_continents(output):
    zones = set(Customer.objects.values_list("timezone", flat=True))
    assert zones <= available_timezones()
    assert {zone.split("/")[0] for zone in zones} >= {"America", "Europe", "Asia", "Africa", "Australia"}


def test_events_carry_categories_channels_and_order_totals(output):
    window_start = timezone.now() - timedelta(days=61)
    for name, category in Event.objects.values_list("name", "category").distinct():
        assert category == category_for(name), name
    names = set(Event.objects.values_list("name", flat=True))
    assert names >= {
        "page_viewed", "app_opened", "product_viewed", "added_to_cart", "order_completed",
        "message.sent", "message.opened", "message.clicked",
    }
    behaviour = Event.objects.filter(category__in=["event", "message"])
    assert not behaviour.filter(occurred_at__lt=window_start).exists()
    for event in Event.objects.filter(name__startswith="message."):
        assert event.channel == event.properties["channel"] != ""
        assert event.properties["campaign_id"]
    for event in Event.objects.filter(name="order_completed"):
        assert event.properties["total"] > 0
        assert re.fullmatch(r"[A-Z]{3}", event.properties["currency"])


def test_last_seen_is_the_latest_event_the_customer_sent(output):
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM customers_customer c
            LEFT JOIN (SELECT customer_id, max(occurred_at) AS at FROM customers_event
                       WHERE category = 'event' GROUP BY customer_id) e ON e.customer_id = c.id
            WHERE c.last_seen_at IS DISTINCT FROM e.at
            """
        )
        assert cursor.fetchone()[0] == 0
    assert Customer.objects.filter(last_seen_at__isnull=False).count() > 0.7 * CUSTOMERS


def test_consent_state_is_the_latest_ledger_entry(output):
    ledger = {}
    for entry in Consent.objects.order_by("occurred_at", "id"):
        ledger[entry.customer_id, entry.channel] = entry
    states = {(s.customer_id, s.channel): s for s in ConsentState.objects.all()}
    assert states.keys() == ledger.keys()
    for key, state in states.items():
        assert state.consent_id == ledger[key].pk
        assert state.granted == ledger[key].granted
        assert state.updated_at == ledger[key].occurred_at
    assert Event.objects.filter(name="consent.revoked").count() == Consent.objects.filter(granted=False).count()


def test_demo_users_log_in_with_the_printed_password_and_hold_their_roles(output, client):
    password = re.search(r"password '([^']+)'", output).group(1)
    for username, role in (("marketer", MARKETER), ("support", SUPPORT), ("admin", ADMIN)):
        assert username in output
        # Through the sign-in form, as the demo's users sign in (it also passes the lockout check).
        response = client.post("/accounts/login/", {"username": username, "password": password})
        assert response.status_code == 302 and "/login/" not in response["Location"], username
        client.post("/accounts/logout/")
        user = User.objects.get(username=username)
        assert role in user_roles(user)
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    assert not User.objects.filter(username__in=["marketer", "support"], is_staff=True).exists()


def test_demo_api_key_is_printed_once_and_matches_its_hash(output):
    raw = re.search(r"(sb_[A-Za-z0-9_\-]+)", output).group(1)
    key = ApiKey.objects.get(name="demo")
    assert key.key_hash == ApiKey.hash(raw)

    again = seed(customers=10)
    assert "sb_" not in again
    assert ApiKey.objects.filter(name="demo").count() == 1


def test_second_run_with_if_empty_changes_nothing(output):
    before = table_counts()
    latest_event = Event.objects.order_by("-id").values_list("id", flat=True).first()

    again = seed(customers=CUSTOMERS, if_empty=True)

    assert table_counts() == before
    assert Event.objects.order_by("-id").values_list("id", flat=True).first() == latest_event
    assert "marketer" in again and "switchboard-demo" in again
    assert "sb_" not in again


def test_same_seed_same_people(db):
    seed(customers=40)
    first = list(Customer.objects.order_by("id"))
    seed(customers=40)
    second = list(Customer.objects.order_by("id"))[40:]

    def shape(c):
        return (c.first_name, c.last_name, c.phone, c.timezone, c.lifecycle_stage,
                c.attributes["plan"], c.attributes["country"])

    assert [shape(c) for c in first] == [shape(c) for c in second]
