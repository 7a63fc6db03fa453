"""The segments UI: list, builder with live preview, segment page, static lists, "why", customer card."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEntry
from customers.models import Customer, Event
from segments import services
from segments.models import Segment, SegmentMembership, SegmentSize
from tests.factories import CustomerFactory, EventFactory, segment_history

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
EXPERTS = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}
RECENT_BUYERS = {
    "all": [
        {"event": "order_completed", "within_days": 30, "count": {"op": "gte", "value": 1}},
        {"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
    ]
}


def is_full_page(response) -> bool:
    return b"<html" in response.content


def text(page) -> str:
    return page if isinstance(page, str) else page.content.decode()


def member_ids(segment) -> set[int]:
    return set(SegmentMembership.objects.filter(segment=segment).values_list("customer_id", flat=True))


def listed_members(page) -> set[int]:
    """Customer ids in the members table of a page, a partial or a response."""
    return {int(pk) for pk in re.findall(r'<tr data-customer="(\d+)"', text(page))}


@pytest.fixture
def people(db):
    """Two experts (one a recent buyer), a lead who bought, and a lead who did nothing."""
    now = timezone.now()
    ada = CustomerFactory(email="ada@example.com", first_name="Ada", last_name="Lovelace", external_id="crm-ada",
                          lifecycle_stage="expert")
    grace = CustomerFactory(email="grace@example.com", first_name="Grace", last_name="Hopper", external_id="crm-grace",
                            lifecycle_stage="expert")
    alan = CustomerFactory(email="alan@example.com", first_name="Alan", last_name="Turing", external_id="crm-alan",
                           lifecycle_stage="lead")
    edsger = CustomerFactory(email="edsger@example.com", first_name="Edsger", last_name="Dijkstra",
                             external_id="crm-edsger", lifecycle_stage="lead")
    EventFactory(customer=ada, name="order_completed", occurred_at=now - timedelta(days=3))
    EventFactory(customer=grace, name="order_completed", occurred_at=now - timedelta(days=90))
    EventFactory(customer=alan, name="order_completed", occurred_at=now - timedelta(days=1))
    return {"ada": ada, "grace": grace, "alan": alan, "edsger": edsger}


@pytest.fixture
def experts(people):
    return services.segment_create(name="Experts", rules=EXPERTS, actor="test")


@pytest.fixture
def vip_list(db):
    return services.segment_create(name="VIP list", static=True, actor="test")


# --- Access -------------------------------------------------------------------------------------


def marketer_views(segment, static, customer):
    return [
        ("get", reverse("segments:list"), {}),
        ("get", reverse("segments:new"), {}),
        ("post", reverse("segments:new"), {"name": "Sneaky", "kind": "dynamic", "rules": json.dumps(EXPERTS)}),
        ("post", reverse("segments:preview"), {"rules": json.dumps(EXPERTS)}),
        ("get", reverse("segments:detail", args=[segment.pk]), {}),
        ("get", reverse("segments:edit", args=[segment.pk]), {}),
        ("post", reverse("segments:edit", args=[segment.pk]), {"name": "Renamed", "rules": json.dumps(EXPERTS)}),
        ("post", reverse("segments:delete", args=[segment.pk]), {}),
        ("post", reverse("segments:recompute", args=[segment.pk]), {}),
        ("get", reverse("segments:members", args=[segment.pk]), {"q": "ada"}),
        ("post", reverse("segments:members_add", args=[static.pk]), {"pasted": customer.email}),
        ("post", reverse("segments:members_remove", args=[static.pk]), {"customer": customer.pk}),
        ("get", reverse("segments:check", args=[segment.pk]), {"customer": customer.email}),
        ("get", reverse("segments:why", args=[segment.pk, customer.pk]), {}),
    ]


def test_a_user_without_a_role_is_refused_everywhere_and_nothing_is_written(client, outsider, experts, vip_list, people):
    client.force_login(outsider)
    ada = people["ada"]
    before = (Segment.objects.count(), SegmentMembership.objects.count(), Event.objects.count(), AuditEntry.objects.count())
    views = marketer_views(experts, vip_list, ada) + [("get", reverse("segments:customer_segments", args=[ada.pk]), {})]
    for method, url, data in views:
        response = getattr(client, method)(url, data, headers=HTMX if "members/" in url else {})
        assert response.status_code == 403, url
        assert "has no Switchboard role" in response.content.decode(), url
    after = (Segment.objects.count(), SegmentMembership.objects.count(), Event.objects.count(), AuditEntry.objects.count())
    assert after == before
    assert Segment.objects.filter(name="Experts").exists()


def test_support_may_not_use_segments_but_sees_a_customers_segments(client, support, experts, vip_list, people):
    client.force_login(support)
    ada = people["ada"]
    for method, url, data in marketer_views(experts, vip_list, ada):
        assert getattr(client, method)(url, data).status_code == 403, url
    assert Segment.objects.filter(pk=experts.pk, name="Experts").exists()
    card = client.get(reverse("segments:customer_segments", args=[ada.pk]), headers=HTMX)
    assert card.status_code == 200 and "Experts" in card.content.decode()


def test_admins_use_segments_too(client, admin_user, experts):
    client.force_login(admin_user)
    assert client.get(reverse("segments:list")).status_code == 200
    assert client.get(reverse("segments:detail", args=[experts.pk])).status_code == 200


def test_the_navigation_offers_segments_to_marketers_only(client, marketer, support):
    client.force_login(marketer)
    assert 'href="/segments/"' in client.get(reverse("home")).content.decode()
    client.force_login(support)
    assert 'href="/segments/"' not in client.get(reverse("home")).content.decode()


def test_an_unknown_segment_is_a_404(client, marketer, people):
    client.force_login(marketer)
    assert client.get(reverse("segments:detail", args=[999999])).status_code == 404
    assert client.post(reverse("segments:recompute", args=[999999])).status_code == 404
    assert client.get(reverse("segments:why", args=[999999, people["ada"].pk])).status_code == 404


# --- List ---------------------------------------------------------------------------------------


def test_the_list_shows_size_trend_and_freshness(client, marketer, experts, vip_list):
    SegmentSize.objects.create(segment=experts, at=timezone.now() - timedelta(days=2), size=5)
    SegmentSize.objects.create(segment=vip_list, at=timezone.now() - timedelta(days=2), size=0)
    Segment.objects.filter(pk=experts.pk).update(last_lag_ms=42)
    client.force_login(marketer)
    page = client.get(reverse("segments:list")).content.decode()
    rows = dict(re.findall(r'<tr data-href="/segments/(\d+)/" data-segment="\d+">(.*?)</tr>', page, re.S))
    experts_row, vip_row = rows[str(experts.pk)], rows[str(vip_list.pk)]
    assert "Experts" in experts_row and ">Rules<" in experts_row
    assert re.search(r'size-cell">2<', experts_row)  # ada and grace
    assert "▼ 3" in experts_row  # 5 a day ago, 2 now
    assert "computed now" in experts_row and "ms" in experts_row and "lag 42 ms" in experts_row
    assert "Static list" in vip_row and "no change" in vip_row
    assert 'href="/segments/new/"' in page and "New segment" in page


def test_the_list_runs_a_fixed_number_of_queries(client, marketer, people, django_assert_num_queries):
    for index in range(6):
        segment = services.segment_create(name=f"Segment {index}", rules=EXPERTS, actor="test")
        SegmentSize.objects.create(segment=segment, at=timezone.now() - timedelta(days=2), size=index)
    client.force_login(marketer)
    # session, user, roles, segments with their size a day ago
    with django_assert_num_queries(4):
        page = client.get(reverse("segments:list")).content.decode()
    assert page.count("<tr data-href=") == 6


def test_an_empty_list_invites_to_build_the_first_segment(client, marketer):
    client.force_login(marketer)
    assert "Build the first segment" in client.get(reverse("segments:list")).content.decode()


# --- Builder: live preview ----------------------------------------------------------------------


def test_the_builder_offers_pickers_from_what_was_seen(client, marketer, people, topics, experts):
    people["ada"].attributes = {"plan": "pro"}
    people["ada"].save()
    client.force_login(marketer)
    page = client.get(reverse("segments:new")).content.decode()
    data = json.loads(re.search(r'<script id="builder-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert "order_completed" in data["events"]
    assert data["attributeKeys"] == ["plan"]
    assert {"key": "coupons", "name": "Coupons"} in data["topics"]
    assert [c["value"] for c in data["channels"]] == ["email", "sms", "whatsapp", "voice", "push"]
    assert {"id": experts.pk, "name": "Experts", "kind": "dynamic"} in data["segments"]
    assert "expert" in data["stages"]
    assert {f["value"]: f["type"] for f in data["fields"]}["last_seen_at"] == "date"
    assert ["within_days", "in the last … days"] in data["operators"]["date"]
    assert "contains" not in dict(data["operators"]["number"])
    assert 'name="rules"' in page and 'hx-post="/segments/preview/"' in page
    # Editing a segment never offers the segment itself.
    edit = client.get(reverse("segments:edit", args=[experts.pk])).content.decode()
    data = json.loads(re.search(r'<script id="builder-data" type="application/json">(.*?)</script>', edit, re.S).group(1))
    assert all(s["id"] != experts.pk for s in data["segments"])


def test_preview_counts_and_samples_valid_rules_and_saves_nothing(client, marketer, people):
    client.force_login(marketer)
    events_before = Event.objects.count()
    response = client.post(reverse("segments:preview"), {"rules": json.dumps(RECENT_BUYERS)}, headers=HTMX)
    assert response.status_code == 200 and not is_full_page(response)
    page = response.content.decode()
    assert 'data-count="1"' in page and "customer matches now" in page
    assert f'href="/customers/{people["ada"].pk}/"' in page and "Ada Lovelace" in page
    assert "Grace" not in page

    wider = client.post(reverse("segments:preview"), {"rules": json.dumps({"event": "order_completed"})}, headers=HTMX)
    assert 'data-count="3"' in wider.content.decode() and "customers match now" in wider.content.decode()
    assert Segment.objects.count() == 0 and SegmentMembership.objects.count() == 0
    assert Event.objects.count() == events_before


def test_preview_shows_each_error_with_its_path(client, marketer, people):
    client.force_login(marketer)
    rules = {"all": [EXPERTS, {"not": {"attr": "created_at", "op": "contains", "value": "x"}}, {"event": ""}]}
    response = client.post(reverse("segments:preview"), {"rules": json.dumps(rules)}, headers=HTMX)
    assert response.status_code == 422
    page = response.content.decode()
    assert "Rules need attention" in page
    errors = json.loads(re.search(r'<script id="preview-errors" type="application/json">(.*?)</script>', page, re.S).group(1))
    paths = {error["path"] for error in errors}
    assert paths == {"rules.all[1].not.op", "rules.all[2].event"}
    assert "<code>rules.all[2].event</code>" in page
    assert Segment.objects.count() == 0


def test_preview_of_broken_json_or_no_condition(client, marketer):
    client.force_login(marketer)
    broken = client.post(reverse("segments:preview"), {"rules": '{"all": ['}, headers=HTMX)
    assert broken.status_code == 422 and "not valid JSON" in broken.content.decode()
    empty = client.post(reverse("segments:preview"), {"rules": '{"all": []}'}, headers=HTMX)
    assert empty.status_code == 200 and "Add a condition" in empty.content.decode()


# --- Builder: saving ----------------------------------------------------------------------------


def test_creating_a_segment_computes_its_members_and_opens_its_page(client, marketer, people):
    client.force_login(marketer)
    response = client.post(reverse("segments:new"), {
        "name": "Recent expert buyers", "description": "Ordered lately", "kind": "dynamic", "rules": json.dumps(RECENT_BUYERS),
    })
    segment = Segment.objects.get(name="Recent expert buyers")
    assert response.status_code == 302 and response.url == reverse("segments:detail", args=[segment.pk])
    assert member_ids(segment) == {people["ada"].pk}
    assert segment.description == "Ordered lately" and segment.created_by == marketer
    assert AuditEntry.objects.filter(action="segment.created", actor="marketer", object_id=str(segment.pk)).exists()
    page = client.get(response.url).content.decode()
    assert "Segment “Recent expert buyers” created: 1 member." in page
    assert listed_members(page) == {people["ada"].pk}


def test_invalid_rules_are_shown_inline_and_nothing_is_written(client, marketer, people):
    client.force_login(marketer)
    rules = {"all": [EXPERTS, {"attr": "lifecycle_stage", "op": "gt", "value": 3}]}
    events_before = Event.objects.count()
    response = client.post(reverse("segments:new"), {"name": "Broken", "kind": "dynamic", "rules": json.dumps(rules)})
    assert response.status_code == 422 and is_full_page(response)
    page = response.content.decode()
    assert "The rules are not valid; nothing was saved." in page
    assert "<code>rules.all[1].value</code>" in page
    assert 'value="Broken"' in page  # what was typed is kept
    assert json.loads(re.search(r'<textarea id="rules-input"[^>]*>(.*?)</textarea>', page, re.S).group(1).replace("&quot;", '"')) == rules
    assert Segment.objects.count() == 0 and Event.objects.count() == events_before


def test_a_duplicate_name_and_bad_rules_are_reported_together(client, marketer, experts):
    client.force_login(marketer)
    response = client.post(reverse("segments:new"), {
        "name": "experts", "kind": "dynamic", "rules": json.dumps({"reachable": "pigeon"}),
    })
    assert response.status_code == 422
    page = response.content.decode()
    assert "A segment named &#x27;experts&#x27; already exists." in page
    assert "<code>rules.reachable</code>" in page
    assert Segment.objects.count() == 1


def test_a_name_is_required_and_broken_json_is_refused(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("segments:new"), {"name": "  ", "kind": "dynamic", "rules": "{nope"})
    assert response.status_code == 422
    page = response.content.decode()
    assert "Give the segment a name." in page and "not valid JSON" in page
    assert Segment.objects.count() == 0


def test_editing_the_rules_recomputes_the_members(client, marketer, experts, people):
    client.force_login(marketer)
    page = client.get(reverse("segments:edit", args=[experts.pk])).content.decode()
    assert 'value="Experts"' in page and "&quot;lifecycle_stage&quot;" in page
    response = client.post(reverse("segments:edit", args=[experts.pk]), {
        "name": "Experts and leads", "description": "", "rules": json.dumps(
            {"attr": "lifecycle_stage", "op": "in", "value": ["expert", "lead"]}
        ),
    })
    assert response.status_code == 302 and response.url == reverse("segments:detail", args=[experts.pk])
    experts.refresh_from_db()
    assert experts.name == "Experts and leads" and experts.member_count == 4
    assert member_ids(experts) == {p.pk for p in people.values()}


def test_renaming_alone_does_not_recompute(client, marketer, experts):
    client.force_login(marketer)
    computed_at = experts.computed_at
    # The editor writes the rules back in their normalised form; that is no change.
    rules = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}
    response = client.post(reverse("segments:edit", args=[experts.pk]), {
        "name": "Our experts", "description": "Stage is expert", "rules": json.dumps(rules, indent=2),
    })
    assert response.status_code == 302
    experts.refresh_from_db()
    assert experts.name == "Our experts" and experts.description == "Stage is expert"
    assert experts.computed_at == computed_at


def test_an_invalid_edit_changes_nothing(client, marketer, experts, vip_list):
    client.force_login(marketer)
    response = client.post(reverse("segments:edit", args=[experts.pk]), {
        "name": "VIP list", "rules": json.dumps({"subscribed": {"topic": "nope", "channel": "email"}}),
    })
    assert response.status_code == 422
    page = response.content.decode()
    assert "already exists" in page and "unknown topic &#x27;nope&#x27;" in page
    selfish = client.post(reverse("segments:edit", args=[experts.pk]), {
        "name": "Experts", "rules": json.dumps({"segment": experts.pk}),
    })
    assert selfish.status_code == 422 and "a segment cannot include itself" in selfish.content.decode()
    experts.refresh_from_db()
    assert experts.name == "Experts" and experts.rules == EXPERTS


def test_a_static_segment_is_created_without_rules(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("segments:new"), {"name": "Launch guests", "kind": "static", "rules": "{whatever"})
    segment = Segment.objects.get(name="Launch guests")
    assert response.status_code == 302 and segment.kind == Segment.Kind.STATIC and segment.rules is None
    page = client.get(response.url).content.decode()
    assert "Add members" in page and "The list is empty." in page


def test_deleting_a_segment_unless_another_uses_it(client, marketer, experts, people):
    uses = services.segment_create(name="Expert buyers", rules={"all": [{"segment": experts.pk}, {"event": "order_completed"}]},
                                   actor="test")
    client.force_login(marketer)
    refused = client.post(reverse("segments:delete", args=[experts.pk]), follow=True)
    assert "Not deleted: other segments use this one: Expert buyers." in refused.content.decode()
    assert Segment.objects.filter(pk=experts.pk).exists()
    client.post(reverse("segments:delete", args=[uses.pk]))
    response = client.post(reverse("segments:delete", args=[experts.pk]))
    assert response.status_code == 302 and response.url == reverse("segments:list")
    assert not Segment.objects.filter(pk__in=[experts.pk, uses.pk]).exists()


# --- Segment page -------------------------------------------------------------------------------


def test_the_segment_page_shows_rules_chart_members_and_changes(client, marketer, people):
    segment = services.segment_create(name="Buyers", rules={
        "all": [{"event": "order_completed", "within_days": 30}, {"any": [EXPERTS, {"not": {"reachable": "sms"}}]}],
    }, actor="test")
    SegmentSize.objects.create(segment=segment, at=timezone.now() - timedelta(days=3), size=7)
    client.force_login(marketer)
    page = client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "order_completed happened at least once in the last 30 days" in page
    assert "lifecycle_stage is &#x27;expert&#x27;" in page and "This is not true" in page and "reachable by sms" in page
    assert 'src="/static/vendor/plotly.min.js"' in page
    figure = json.loads(re.search(r'<script type="application/json" id="size-chart-figure">(.*?)</script>', page, re.S).group(1))
    # Three days ago, the full computation at creation, and the current size closing the line.
    assert figure["data"][0]["y"] == [7, 1, 1]
    assert listed_members(page) == {people["ada"].pk}
    assert 'data-stat="members">1<' in page and "▼ 6" in page
    recent = page.split('id="recent-changes"')[1]
    assert "Ada Lovelace" in recent and "entered" in recent


def test_the_segment_page_runs_a_fixed_number_of_queries(client, marketer, django_assert_num_queries):
    CustomerFactory.create_batch(60, lifecycle_stage="expert")
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="test")
    client.force_login(marketer)
    # session, user, roles, segment, size samples, recent changes and their customers, members
    with django_assert_num_queries(8):
        page = client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert len(listed_members(page)) == 25 and "Show more members" in page


def test_members_are_searchable_and_paginated_with_htmx(client, marketer, people):
    CustomerFactory.create_batch(30, lifecycle_stage="expert")
    segment = services.segment_create(name="Experts", rules=EXPERTS, actor="test")
    client.force_login(marketer)
    url = reverse("segments:members", args=[segment.pk])
    found = client.get(url, {"q": "ada@"}, headers=HTMX)
    assert not is_full_page(found) and listed_members(found) == {people["ada"].pk}
    nobody = client.get(url, {"q": "nobody@"}, headers=HTMX)
    assert "No member matches" in nobody.content.decode()

    first = client.get(url, headers=HTMX)
    cursor = re.search(r"cursor=(\d+)", first.content.decode()).group(1)
    second = client.get(url, {"cursor": cursor}, headers=HTMX)
    assert len(listed_members(first)) == 25 and len(listed_members(second)) == 7
    assert listed_members(first).isdisjoint(listed_members(second))
    assert "<table" not in second.content.decode()  # rows to append, not a new table
    assert client.get(url, {"q": "ada@"}).status_code == 302  # a plain visit goes to the page


def test_recompute_now_catches_up_with_changes_made_behind_the_platforms_back(client, marketer, experts, people):
    Customer.objects.filter(pk=people["alan"].pk).update(lifecycle_stage="expert")
    Customer.objects.filter(pk=people["grace"].pk).update(lifecycle_stage="churned")
    assert member_ids(experts) == {people["ada"].pk, people["grace"].pk}
    client.force_login(marketer)
    response = client.post(reverse("segments:recompute", args=[experts.pk]), follow=True)
    assert member_ids(experts) == {people["ada"].pk, people["alan"].pk}
    page = response.content.decode()
    assert "Recomputed in" in page and "2 members, 1 entered, 1 left." in page
    assert "segment.exited" in [event.name for event in segment_history(people["grace"])]


def test_recompute_of_a_static_list_explains_itself(client, marketer, vip_list):
    client.force_login(marketer)
    page = client.post(reverse("segments:recompute", args=[vip_list.pk]), follow=True).content.decode()
    assert "A static segment is a list" in page


# --- Static lists -------------------------------------------------------------------------------


def test_pasting_emails_and_external_ids_adds_members_and_reports_the_unknown(client, marketer, vip_list, people):
    client.force_login(marketer)
    pasted = "ADA@example.com\ncrm-grace\n\nnobody@example.com\ncrm-missing\n"
    response = client.post(reverse("segments:members_add", args=[vip_list.pk]), {"pasted": pasted}, headers=HTMX)
    assert response.status_code == 200
    page = response.content.decode()
    assert "2 customers added." in page
    assert "2 not found:" in page and "<code>nobody@example.com</code>" in page and "<code>crm-missing</code>" in page
    # The members and the size are swapped in out of band.
    assert 'id="members-results" hx-swap-oob="true"' in page and 'id="segment-stats" aria-label' in page
    recent = page.split('id="recent-changes" hx-swap-oob="true"')[1]
    assert "Ada Lovelace" in recent and "Grace Hopper" in recent and "by marketer" in recent
    assert listed_members(response) == {people["ada"].pk, people["grace"].pk}
    assert member_ids(vip_list) == {people["ada"].pk, people["grace"].pk}
    vip_list.refresh_from_db()
    assert vip_list.member_count == 2

    again = client.post(reverse("segments:members_add", args=[vip_list.pk]), {"pasted": "crm-ada\ncrm-alan"}, headers=HTMX)
    assert "1 customer added." in again.content.decode() and "1 was already in the list." in again.content.decode()


def test_a_csv_upload_reads_the_email_or_external_id_column(client, marketer, vip_list, people):
    client.force_login(marketer)
    csv_file = SimpleUploadedFile(
        "guests.csv", b"name;Email;External ID\nAda;ada@example.com;\nAlan;;crm-alan\nGhost;ghost@example.com;\n",
        content_type="text/csv",
    )
    response = client.post(reverse("segments:members_add", args=[vip_list.pk]), {"file": csv_file}, headers=HTMX)
    page = response.content.decode()
    assert "2 customers added." in page and "<code>ghost@example.com</code>" in page
    assert member_ids(vip_list) == {people["ada"].pk, people["alan"].pk}


def test_a_csv_without_a_header_is_read_from_its_first_column(client, marketer, vip_list, people):
    client.force_login(marketer)
    csv_file = SimpleUploadedFile("ids.csv", b"crm-edsger,vip\r\ngrace@example.com,vip\r\n", content_type="text/csv")
    response = client.post(reverse("segments:members_add", args=[vip_list.pk]), {"file": csv_file})
    assert response.status_code == 200 and is_full_page(response)
    assert "2 customers added." in response.content.decode()
    assert member_ids(vip_list) == {people["edsger"].pk, people["grace"].pk}


def test_an_empty_import_is_refused_and_dynamic_segments_take_no_list(client, marketer, vip_list, experts, people):
    client.force_login(marketer)
    empty = client.post(reverse("segments:members_add", args=[vip_list.pk]), {"pasted": "  \n"}, headers=HTMX)
    assert empty.status_code == 422 and "Paste emails or external ids" in empty.content.decode()
    dynamic = client.post(reverse("segments:members_add", args=[experts.pk]), {"pasted": "crm-alan"}, headers=HTMX)
    assert dynamic.status_code == 422 and "follow its rules" in dynamic.content.decode()
    assert member_ids(vip_list) == set() and people["alan"].pk not in member_ids(experts)


def test_removing_a_member_from_a_static_list(client, marketer, vip_list, people):
    services.static_members_change(segment=vip_list, add=True, actor="test", external_ids=["crm-ada", "crm-alan"])
    client.force_login(marketer)
    page = client.get(reverse("segments:detail", args=[vip_list.pk])).content.decode()
    assert 'aria-label="Remove Ada Lovelace"' in page
    response = client.post(reverse("segments:members_remove", args=[vip_list.pk]), {"customer": people["ada"].pk}, headers=HTMX)
    assert response.status_code == 200
    assert listed_members(response) == {people["alan"].pk}
    assert "Ada Lovelace removed from “VIP list”." in response.content.decode()
    assert 'data-stat="members">1<' in response.content.decode()
    recent = response.content.decode().split('id="recent-changes" hx-swap-oob="true"')[1]
    assert re.search(r"Ada Lovelace</a>\s*<span class=\"subtle small\">left · by marketer", recent)
    assert member_ids(vip_list) == {people["alan"].pk}
    entered, exited = segment_history(people["ada"], vip_list)
    assert (entered.name, exited.name, exited.actor) == ("segment.entered", "segment.exited", "marketer")


# --- Why ----------------------------------------------------------------------------------------


def test_why_shows_each_rule_passed_or_failed_with_the_deciding_value(client, marketer, people):
    segment = services.segment_create(name="Recent expert buyers", rules=RECENT_BUYERS, actor="test")
    client.force_login(marketer)
    member = client.get(reverse("segments:why", args=[segment.pk, people["ada"].pk])).content.decode()
    assert "<html" in member and "In the segment" in member
    assert member.count('class="explain-node is-pass"') == 3 and "is-fail" not in member
    assert "1 matching event in the last 30 days" in member

    outsider = client.get(reverse("segments:why", args=[segment.pk, people["alan"].pk]), headers=HTMX).content.decode()
    assert "<html" not in outsider and "Not in the segment" in outsider
    stage = re.search(r'<li class="explain-node is-fail">\s*<div class="explain-row">.*?lifecycle_stage is.*?</li>', outsider, re.S)
    assert stage and "<code>lead</code>" in stage.group(0)
    assert "1 matching event in the last 30 days" in outsider  # that rule passed for alan


@pytest.mark.parametrize("term", ["grace@example.com", "crm-grace", "GRACE@example.com"])
def test_check_a_customer_by_email_or_external_id(client, marketer, experts, people, term):
    client.force_login(marketer)
    response = client.get(reverse("segments:check", args=[experts.pk]), {"customer": term}, headers=HTMX)
    assert response.status_code == 200
    assert "Grace Hopper" in response.content.decode() and "In the segment" in response.content.decode()


def test_check_a_customer_by_id_and_an_unknown_one(client, marketer, experts, people):
    client.force_login(marketer)
    by_id = client.get(reverse("segments:check", args=[experts.pk]), {"customer": people["edsger"].pk}, headers=HTMX)
    assert "Edsger Dijkstra" in by_id.content.decode() and "Not in the segment" in by_id.content.decode()
    unknown = client.get(reverse("segments:check", args=[experts.pk]), {"customer": "who@example.com"}, headers=HTMX)
    assert unknown.status_code == 422 and "No customer has the id, email or external id" in unknown.content.decode()
    plain = client.get(reverse("segments:check", args=[experts.pk]), {"customer": "crm-ada"})
    assert plain.status_code == 302 and plain.url == reverse("segments:why", args=[experts.pk, people["ada"].pk])


def test_why_for_a_static_list(client, marketer, vip_list, people):
    services.static_members_change(segment=vip_list, add=True, actor="test", ids=[people["ada"].pk])
    client.force_login(marketer)
    page = client.get(reverse("segments:why", args=[vip_list.pk, people["ada"].pk])).content.decode()
    assert "In the segment" in page and "membership is decided by hand" in page


# --- The customer page's Segments card ----------------------------------------------------------


def test_the_customer_page_loads_its_segments_card_from_the_segments_app(client, support, people):
    client.force_login(support)
    page = client.get(reverse("customers:detail", args=[people["ada"].pk])).content.decode()
    assert f'hx-get="/segments/customers/{people["ada"].pk}/"' in page and 'hx-trigger="load"' in page


def test_the_segments_card_lists_segments_with_why_links_for_marketers(client, marketer, experts, vip_list, people):
    services.static_members_change(segment=vip_list, add=True, actor="test", ids=[people["ada"].pk])
    services.static_members_change(segment=vip_list, add=False, actor="test", ids=[people["ada"].pk])
    client.force_login(marketer)
    card = client.get(reverse("segments:customer_segments", args=[people["ada"].pk]), headers=HTMX).content.decode()
    assert "<html" not in card and 'id="customer-segments"' in card
    assert f'href="/segments/{experts.pk}/"' in card
    assert f'href="/segments/{experts.pk}/why/{people["ada"].pk}/"' in card
    history = card.split("History")[1]
    assert history.count("change-in") == 2 and history.count("change-out") == 1
    assert "VIP list" in history and "Left" in history


def test_support_sees_segment_names_without_links(client, support, experts, people):
    client.force_login(support)
    card = client.get(reverse("segments:customer_segments", args=[people["ada"].pk]), headers=HTMX).content.decode()
    assert "Experts" in card and "/segments/" not in card
    empty = client.get(reverse("segments:customer_segments", args=[people["alan"].pk]), headers=HTMX).content.decode()
    assert "Not in any segment." in empty
    plain = client.get(reverse("segments:customer_segments", args=[people["ada"].pk]))
    assert plain.status_code == 302 and plain.url.startswith(reverse("customers:detail", args=[people["ada"].pk]))


# --- plotly.js from the installed package -------------------------------------------------------


def test_plotly_js_is_served_from_the_plotly_package(client):
    found = finders.find("vendor/plotly.min.js")
    assert found and found.endswith("plotly/package_data/plotly.min.js")
    listed = [
        (path, storage.prefix)
        for finder in finders.get_finders()
        for path, storage in finder.list(None)
        if getattr(storage, "prefix", None) == "vendor"
    ]
    assert listed == [("plotly.min.js", "vendor")]
    response = client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert b"plotly" in b"".join(response.streaming_content)[:2000].lower()
