import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from customers.services import preferences, profiles
from core.models import AuditEntry
from customers.models import Event, EventCategory, Subscription
from tests.conftest import PASSWORD
from tests.factories import CustomerFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def event_ids(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'id="event-(\d+)"', html)]


def is_full_page(response) -> bool:
    return b"<html" in response.content


def seed_timeline(customer, *, count: int, start=None, **fields) -> list[Event]:
    """``count`` events, one minute apart, newest at ``start``."""
    start = start or timezone.now()
    return Event.objects.bulk_create(
        Event(
            customer=customer, name=fields.get("name", "order_completed"),
            category=fields.get("category", EventCategory.EVENT), channel=fields.get("channel", ""),
            properties={"total": index}, occurred_at=start - timedelta(minutes=index), source="api",
        )
        for index in range(count)
    )


# --- Access (who may use each page: tests/test_access.py) ------------------------------------


def test_an_unknown_customer_is_a_404(client, support):
    client.force_login(support)
    missing = client.get(reverse("customers:detail", args=[999999]))
    assert missing.status_code == 404 and b"Nothing here" in missing.content
    assert client.post(reverse("customers:note_add", args=[999999]), {"text": "x"}).status_code == 404


def test_sign_in_page_then_sign_in_and_out(client, support):
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b"Sign in" in page.content and b"app.css" in page.content

    wrong = client.post(reverse("login"), {"username": "support", "password": "nope"})
    assert wrong.status_code == 200 and b"alert-error" in wrong.content

    signed_in = client.post(reverse("login"), {"username": "support", "password": PASSWORD})
    assert signed_in.status_code == 302 and signed_in.url == reverse("home")
    home = client.get(reverse("home"))
    assert b"Sign out" in home.content and b"support" in home.content

    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("home")).status_code == 302


@pytest.mark.parametrize("role", ["support", "marketer", "admin_user"])
def test_every_role_sees_the_list_and_the_customer_page(client, role, customer, request):
    client.force_login(request.getfixturevalue(role))
    listing = client.get(reverse("customers:list"))
    assert listing.status_code == 200
    assert reverse("customers:detail", args=[customer.pk]).encode() in listing.content
    detail = client.get(reverse("customers:detail", args=[customer.pk]))
    assert detail.status_code == 200
    assert b"Ada Lovelace" in detail.content


def test_navigation_shows_customers_and_admin_only_to_staff(client, support, admin_user):
    client.force_login(support)
    page = client.get(reverse("home")).content.decode()
    assert 'href="/customers/"' in page and 'href="/admin/"' not in page
    client.force_login(admin_user)
    page = client.get(reverse("home")).content.decode()
    assert 'href="/customers/"' in page and 'href="/admin/"' in page


# --- Home ------------------------------------------------------------------------------------


def test_home_counts_customers_and_events_ingested(client, support, customer, topics, django_assert_num_queries):
    from customers.services.ingestion import EventInput, events_ingest

    CustomerFactory.create_batch(2)
    events_ingest(items=[
        EventInput(customer_id=customer.pk, external_id=None, email=None, name="page_viewed", properties={},
                   occurred_at=None, idempotency_key=f"view-{i}")
        for i in range(4)
    ], source="api")
    client.force_login(support)
    client.get(reverse("home"))
    with django_assert_num_queries(9):
        page = client.get(reverse("home")).content.decode()
    assert re.search(r'data-stat="customers">3<', page)
    assert re.search(r'id="overview-ingest-total"[^>]*>4 in the last hour<', page)
    assert 'ws-connect="/ws/dashboards/overview/"' in page


# --- Customer list ---------------------------------------------------------------------------


@pytest.fixture
def people(db):
    return {
        "ada": CustomerFactory(
            email="ada@example.com", phone="+442071838750", first_name="Ada", last_name="Lovelace",
            external_id="crm-ada", lifecycle_stage="expert",
        ),
        "grace": CustomerFactory(
            email="grace@navy.example", phone="+12025550199", first_name="Grace", last_name="Hopper",
            external_id="crm-grace", lifecycle_stage="lead",
        ),
        "alan": CustomerFactory(
            email="", phone="+447700900123", first_name="Alan", last_name="Turing",
            external_id="crm-alan", lifecycle_stage="lead",
        ),
    }


def listed(response) -> set[str]:
    return set(re.findall(r'<tr data-href="/customers/(\d+)/"', response.content.decode()))


@pytest.mark.parametrize(
    "term, who",
    [
        ("ada@example", "ada"),
        ("GRACE@", "grace"),
        ("1838750", "ada"),  # the last digits of a number
        ("2025550199", "grace"),
        # A number typed the ways people type it: national, international, with 00, spaced.
        ("020 7183 8750", "ada"),
        ("+44 20 7183 8750", "ada"),
        ("0044 20 7183 8750", "ada"),
        ("(202) 555-0199", "grace"),
        ("1-202-555-0199", "grace"),
        ("07700 900123", "alan"),
        ("Lovelace", "ada"),
        ("Ada Lovelace", "ada"),
        ("turing", "alan"),
        ("crm-grace", "grace"),
    ],
)
def test_search_finds_by_email_phone_name_and_external_id(client, support, people, term, who):
    client.force_login(support)
    response = client.get(reverse("customers:list"), {"q": term})
    assert listed(response) == {str(people[who].pk)}


def test_phone_search_reads_an_index_not_the_whole_table(people):
    from django.db import connection

    from customers.models import Customer

    with connection.cursor() as cursor:
        # The table is tiny here, so the planner is told to avoid a full read whenever it can.
        cursor.execute("SET LOCAL enable_seqscan = off")
    plan = Customer.objects.search("020 7183 8750").order_by().explain()
    assert "customer_phone_suffix_idx" in plan
    assert "Seq Scan" not in plan


def test_search_without_match_shows_an_empty_state(client, support, people):
    client.force_login(support)
    response = client.get(reverse("customers:list"), {"q": "nobody-here"})
    assert listed(response) == set()
    assert b"No customer matches" in response.content


def test_filters_by_lifecycle_stage_and_reachable_channel(client, support, people):
    client.force_login(support)
    leads = client.get(reverse("customers:list"), {"stage": "lead"})
    assert listed(leads) == {str(people["grace"].pk), str(people["alan"].pk)}
    assert b'<option value="lead" selected>' in leads.content

    by_email = client.get(reverse("customers:list"), {"reachable": "email"})
    assert listed(by_email) == {str(people["ada"].pk), str(people["grace"].pk)}

    preferences.consent_record(customer=people["grace"], channel="sms", granted=False, source="test", actor="t")
    by_sms = client.get(reverse("customers:list"), {"reachable": "sms", "stage": "lead"})
    assert listed(by_sms) == {str(people["alan"].pk)}


def test_the_list_is_paginated_fifty_a_page_in_a_fixed_number_of_queries(client, support, django_assert_num_queries):
    CustomerFactory.create_batch(120, lifecycle_stage="customer")
    client.force_login(support)
    # session, user, roles, lifecycle stages, count, page
    with django_assert_num_queries(6):
        first = client.get(reverse("customers:list"))
    assert len(listed(first)) == 50
    assert b"120 customers" in first.content
    third = client.get(reverse("customers:list"), {"page": 3})
    assert len(listed(third)) == 20
    assert listed(first).isdisjoint(listed(third))


def test_htmx_search_returns_only_the_results_partial(client, support, people):
    client.force_login(support)
    full = client.get(reverse("customers:list"), {"q": "ada"})
    assert is_full_page(full) and b'id="q"' in full.content
    partial = client.get(reverse("customers:list"), {"q": "ada"}, headers=HTMX)
    assert not is_full_page(partial)
    assert b'id="q"' not in partial.content
    assert partial.content.decode().lstrip().startswith('<section id="results"')
    assert listed(partial) == {str(people["ada"].pk)}
    assert "HX-Request" in partial["Vary"]
    # Pagination links inside the partial keep the search.
    CustomerFactory.create_batch(60, last_name="Adams")
    page = client.get(reverse("customers:list"), {"q": "Adams"}, headers=HTMX).content.decode()
    assert "q=Adams&amp;page=2" in page


def test_a_history_restore_gets_the_whole_page(client, support):
    client.force_login(support)
    response = client.get(reverse("customers:list"), headers={**HTMX, "HX-History-Restore-Request": "true"})
    assert is_full_page(response)


# --- Customer page ---------------------------------------------------------------------------


@pytest.fixture
def profile(customer, topics):
    customer.attributes = {"plan": "pro", "seats": 12, "tags": ["vip", "beta"]}
    customer.phone = "+442071838750"
    customer.save()
    SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel="email", subscribed=True)
    SubscriptionFactory(customer=customer, topic=topics["coupons"], channel="sms", subscribed=False)
    preferences.consent_record(
        customer=customer, channel="email", granted=True, source="signup-form", actor="", legal_basis="consent",
        ip_address="203.0.113.7", wording="Send me the newsletter", form_url="https://shop.example/signup",
    )
    preferences.consent_record(customer=customer, channel="sms", granted=False, source="sms-stop", actor="")
    profiles.device_register(customer=customer, kind="fcm", token="fcm-token-123", platform="android",
                             source="api", actor="")
    profiles.note_add(customer=customer, text="Called about a refund", actor="support")
    return customer


def cell(html: str, topic: str, channel: str) -> str:
    match = re.search(rf'<td class="center" data-topic="{topic}" data-channel="{channel}">(.*?)</summary>', html, re.S)
    assert match, (topic, channel)
    return match.group(1)


def test_the_customer_page_shows_profile_preferences_consent_devices_and_timeline(client, support, profile):
    client.force_login(support)
    page = client.get(reverse("customers:detail", args=[profile.pk])).content.decode()
    # profile and attributes
    assert "ada@example.com" in page and "+442071838750" in page and "crm-ada" in page
    assert "<th scope=\"row\">plan</th><td class=\"break\">pro</td>" in page
    assert '["vip", "beta"]' in page.replace("&quot;", '"')
    # preference matrix: subscribed, unsubscribed, never chosen; transactional marked
    assert "Subscribed" in cell(page, "newsletter", "email")
    assert "Unsubscribed" in cell(page, "coupons", "sms")
    assert "Not chosen" in cell(page, "product-updates", "push")
    assert re.search(r"Alerts\s*<span class=\"badge badge-transactional\"", page)
    # consent: current state and the ledger with its proof
    assert re.search(r'data-channel="email">.*?Granted', page, re.S)
    assert re.search(r'data-channel="sms">.*?Revoked', page, re.S)
    assert "203.0.113.7" in page and "Send me the newsletter" in page and "signup-form" in page
    # devices
    assert "Firebase Cloud Messaging" in page and "android" in page
    # timeline, newest first: the note was written last
    assert page.index("Called about a refund") < page.index("Consent revoked for SMS")
    assert "Push device registered" in page or "Device registered" in page


def test_the_customer_page_runs_a_fixed_number_of_queries(client, support, profile, django_assert_num_queries):
    seed_timeline(profile, count=80)
    client.force_login(support)
    # session, user, roles, customer + 3 prefetches, topics, reachability, ledger, anonymous ids, timeline
    with django_assert_num_queries(12):
        response = client.get(reverse("customers:detail", args=[profile.pk]))
    assert len(event_ids(response.content.decode())) == 50


def test_timeline_entries_show_changes_compactly(client, support, customer):
    profiles.customers_upsert(
        items=[profiles.CustomerInput(external_id="crm-ada", email="ada.l@example.com", lifecycle_stage="expert")],
        source="crm", actor="",
    )
    client.force_login(support)
    page = client.get(reverse("customers:detail", args=[customer.pk])).content.decode()
    assert "Profile updated" in page
    assert "<dt>email</dt><dd>ada@example.com → ada.l@example.com</dd>" in page
    assert "<dt>lifecycle_stage</dt><dd>customer → expert</dd>" in page


# --- Timeline: filters and scrolling -------------------------------------------------------


def test_scrolling_loads_the_next_page_through_the_cursor(client, support, customer, django_assert_num_queries):
    events = seed_timeline(customer, count=70)
    newest_first = [event.pk for event in events]
    client.force_login(support)
    page = client.get(reverse("customers:detail", args=[customer.pk])).content.decode()
    assert event_ids(page) == newest_first[:50]
    sentinel = re.search(r'<li class="timeline-more" hx-get="([^"]+)"\s+hx-trigger="revealed" hx-swap="outerHTML">', page)
    assert sentinel, "the last row asks for more when revealed"

    next_url = sentinel.group(1).replace("&amp;", "&")
    # session, user, roles, customer, topic names, events
    with django_assert_num_queries(6):
        more = client.get(next_url, headers=HTMX)
    assert more.status_code == 200 and not is_full_page(more)
    assert event_ids(more.content.decode()) == newest_first[50:]
    assert b"timeline-more" not in more.content and b"Beginning of the timeline" in more.content

    # Without JavaScript the same link opens the page at the older entries.
    older = client.get(next_url, follow=True)
    assert is_full_page(older) and event_ids(older.content.decode()) == newest_first[50:]
    assert b"Back to the newest" in older.content


def test_timeline_filters_by_kind_and_channel(client, support, customer):
    seed_timeline(customer, count=5)
    sms = seed_timeline(customer, count=3, name="message.sent", category=EventCategory.MESSAGE, channel="sms")
    email = seed_timeline(customer, count=2, name="message.opened", category=EventCategory.MESSAGE, channel="email")
    client.force_login(support)
    url = reverse("customers:timeline", args=[customer.pk])

    messages = client.get(url, {"category": "message"}, headers=HTMX)
    assert set(event_ids(messages.content.decode())) == {e.pk for e in sms + email}
    assert messages.content.decode().lstrip().startswith('<section id="timeline"')
    assert messages["HX-Push-Url"] == reverse("customers:detail", args=[customer.pk]) + "?category=message"

    by_sms = client.get(url, {"channel": "sms"}, headers=HTMX)
    assert set(event_ids(by_sms.content.decode())) == {e.pk for e in sms}

    notes = client.get(url, {"category": "note"}, headers=HTMX)
    assert event_ids(notes.content.decode()) == [] and b"Nothing of this kind" in notes.content

    # The same filters on the page itself (a reload after the URL was pushed).
    page = client.get(reverse("customers:detail", args=[customer.pk]), {"category": "message", "channel": "email"})
    assert set(event_ids(page.content.decode())) == {e.pk for e in email}
    assert b'<option value="message" selected>' in page.content


def test_filtered_scrolling_keeps_the_filter(client, support, customer):
    seed_timeline(customer, count=60, name="message.sent", category=EventCategory.MESSAGE, channel="sms")
    others = seed_timeline(customer, count=60, start=timezone.now() - timedelta(seconds=30))
    client.force_login(support)
    first = client.get(reverse("customers:timeline", args=[customer.pk]), {"category": "message"}, headers=HTMX)
    next_url = re.search(r'class="timeline-more" hx-get="([^"]+)"', first.content.decode()).group(1)
    assert "category=message" in next_url
    second = client.get(next_url.replace("&amp;", "&"), headers=HTMX).content.decode()
    assert len(event_ids(second)) == 10
    assert set(event_ids(second)).isdisjoint({e.pk for e in others})


def test_timeline_endpoint_without_htmx_sends_you_to_the_page(client, support, customer):
    client.force_login(support)
    response = client.get(reverse("customers:timeline", args=[customer.pk]), {"category": "note"})
    assert response.status_code == 302
    assert response.url == reverse("customers:detail", args=[customer.pk]) + "?category=note"


def test_a_forged_cursor_is_a_bad_request(client, support, customer):
    client.force_login(support)
    response = client.get(reverse("customers:timeline", args=[customer.pk]), {"cursor": "!!nope"}, headers=HTMX)
    assert response.status_code == 400


# --- Changing a subscription on the customer's behalf ----------------------------------------


def change(client, customer, topic, **data):
    payload = {"topic": topic.pk, "channel": "email", "subscribed": "0", **data}
    return client.post(reverse("customers:subscription_change", args=[customer.pk]), payload, headers=HTMX)


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_subscription_change_needs_a_reason_and_writes_nothing_without_one(client, support, customer, topics, reason):
    SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel="email", subscribed=True)
    client.force_login(support)
    before = (Subscription.objects.count(), Event.objects.count(), AuditEntry.objects.count())

    response = change(client, customer, topics["newsletter"], reason=reason)

    assert response.status_code == 422
    html = response.content.decode()
    assert not is_full_page(response)
    assert "Say why you are changing this" in html
    # The popover with the error stays open on the cell that was being changed.
    assert re.search(r'data-topic="newsletter" data-channel="email">\s*<details class="cell-menu" open>', html)
    assert (Subscription.objects.count(), Event.objects.count(), AuditEntry.objects.count()) == before
    assert Subscription.objects.get(customer=customer, topic=topics["newsletter"], channel="email").subscribed


def test_a_subscription_change_without_htmx_shows_the_error_on_the_page(client, support, customer, topics):
    client.force_login(support)
    response = client.post(
        reverse("customers:subscription_change", args=[customer.pk]),
        {"topic": topics["coupons"].pk, "channel": "sms", "subscribed": "1", "reason": ""},
    )
    assert response.status_code == 422 and is_full_page(response)
    assert b"Say why you are changing this" in response.content
    assert not Subscription.objects.exists()


def test_a_subscription_change_with_a_reason_lands_in_the_matrix_and_on_the_timeline(client, support, customer, topics):
    SubscriptionFactory(customer=customer, topic=topics["newsletter"], channel="email", subscribed=True)
    client.force_login(support)

    response = change(client, customer, topics["newsletter"], reason="Asked by phone to stop emails")

    assert response.status_code == 200
    html = response.content.decode()
    sub = Subscription.objects.get(customer=customer, topic=topics["newsletter"], channel="email")
    assert sub.subscribed is False and sub.source == "support"
    event = Event.objects.get(customer=customer, name="subscription.changed")
    assert event.properties["reason"] == "Asked by phone to stop emails"
    assert event.properties["subscribed"] is False and event.actor == "support" and event.channel == "email"
    # The response swaps the matrix, and refreshes the timeline and the notice out of band.
    assert html.lstrip().startswith('<section id="preferences"')
    assert "Unsubscribed" in cell(html, "newsletter", "email")
    assert '<section id="timeline" class="card" hx-swap-oob="true">' in html
    assert "Unsubscribed from Newsletter by Email" in html
    assert "Reason: Asked by phone to stop emails" in html
    assert 'id="flash"' in html and "is now unsubscribed from Newsletter by Email" in html


def test_a_subscription_change_keeps_the_timeline_filter(client, support, customer, topics):
    seed_timeline(customer, count=3)
    client.force_login(support)
    page_url = "http://testserver" + reverse("customers:detail", args=[customer.pk]) + "?category=preference"
    html = client.post(
        reverse("customers:subscription_change", args=[customer.pk]),
        {"topic": topics["coupons"].pk, "channel": "sms", "subscribed": "1", "reason": "Wants coupons"},
        headers={**HTMX, "HX-Current-URL": page_url},
    ).content.decode()
    assert Subscription.objects.get(customer=customer, topic=topics["coupons"], channel="sms").subscribed
    timeline = html[html.index('<section id="timeline"'):]
    assert len(event_ids(timeline)) == 1
    assert '<option value="preference" selected>' in timeline


def test_a_subscription_change_without_htmx_redirects_back_with_a_notice(client, support, customer, topics):
    client.force_login(support)
    response = client.post(
        reverse("customers:subscription_change", args=[customer.pk]),
        {"topic": topics["coupons"].pk, "channel": "sms", "subscribed": "1", "reason": "Opted in at the till"},
        follow=True,
    )
    assert response.redirect_chain == [(reverse("customers:detail", args=[customer.pk]), 302)]
    page = response.content.decode()
    assert "is now subscribed to Coupons by SMS" in page
    assert "Subscribed" in cell(page, "coupons", "sms")
    assert "Reason: Opted in at the till" in page


def test_an_unknown_topic_or_channel_is_refused(client, support, customer, topics):
    client.force_login(support)
    response = change(client, customer, topics["newsletter"], channel="fax", reason="because")
    assert response.status_code == 422
    assert b"Nothing was changed" in response.content
    assert not Subscription.objects.exists()


def test_marketers_can_change_subscriptions_too(client, marketer, customer, topics):
    client.force_login(marketer)
    assert change(client, customer, topics["coupons"], subscribed="1", reason="Signed up in store").status_code == 200
    assert Subscription.objects.get(customer=customer).subscribed is True
    assert Event.objects.get(name="subscription.changed").actor == "marketer"


# --- Notes -----------------------------------------------------------------------------------


def test_an_empty_note_is_refused_inline(client, support, customer):
    client.force_login(support)
    response = client.post(reverse("customers:note_add", args=[customer.pk]), {"text": "  "}, headers=HTMX)
    assert response.status_code == 422
    assert b"Write something before adding the note." in response.content
    assert response.content.decode().lstrip().startswith('<section id="note-card"')
    assert not Event.objects.filter(name="support.note").exists()


def test_a_note_lands_on_the_timeline(client, support, customer):
    client.force_login(support)
    response = client.post(
        reverse("customers:note_add", args=[customer.pk]), {"text": "Refund issued for order 1042"}, headers=HTMX
    )
    assert response.status_code == 200
    note = Event.objects.get(name="support.note")
    assert note.properties == {"text": "Refund issued for order 1042"} and note.actor == "support"
    html = response.content.decode()
    form = html[: html.index('<section id="timeline"')]
    assert "Refund issued" not in form  # the form is cleared for the next note
    assert f'id="event-{note.pk}"' in html and "Refund issued for order 1042" in html


def test_a_note_without_htmx_redirects_back(client, support, customer):
    client.force_login(support)
    response = client.post(reverse("customers:note_add", args=[customer.pk]), {"text": "Left a voicemail"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("customers:detail", args=[customer.pk])
    assert b"Left a voicemail" in response.content and b"Note added to the timeline." in response.content


def test_write_views_refuse_get(client, support, customer):
    client.force_login(support)
    assert client.get(reverse("customers:note_add", args=[customer.pk])).status_code == 405
