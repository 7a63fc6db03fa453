"""The campaigns and messages API, through the real HTTP stack: what an engineer calling it sees."""

import copy
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from core.models import AuditEntry
from campaigns import dispatch
from campaigns.models import Campaign, Content, Delivery, SandboxMessage, Variant
from segments.services import static_members_change
from tests.conftest import WAIT_SECONDS
from tests.factories import CustomerFactory, SubscriptionFactory

CONTENT = {
    "email": {"subject": "Hello {{ first_name|default:'there' }}",
              "html": "<p>Hi {{ first_name }}</p><a href='https://shop.example.com/sale'>Sale</a>"},
    "sms": {"body": "Hi {{ first_name }}, sale today"},
    "whatsapp": {"template": "sale_v1", "variables": {"1": "{{ first_name }}"}},
    "voice": {"text": "Hello {{ first_name }}"},
    "push": {"title": "Sale", "body": "Hi {{ first_name }}", "link": "app://sale"},
}


@pytest.fixture(autouse=True)
def daytime_everywhere(settings):
    """Quiet hours would otherwise defer marketing sends when the suite runs at night."""
    settings.QUIET_HOURS = (time(0, 0), time.max)


def body(audience, **changes):
    data = {
        "name": "Winter sale",
        "topic": "newsletter",
        "segment_ids": [audience["segment"].pk],
        "channels": ["email", "sms"],
        "strategy": "all",
        "content": {"email": copy.deepcopy(CONTENT["email"]), "sms": copy.deepcopy(CONTENT["sms"])},
    }
    data.update(changes)
    return data


@pytest.fixture
def crowd(audience):
    """Twenty more newsletter readers by email, so a staged split of the audience is never all or nothing."""
    extra = [CustomerFactory(timezone="UTC") for _ in range(20)]
    for customer in extra:
        SubscriptionFactory(customer=customer, topic=audience["topic"], channel="email")
    static_members_change(segment=audience["segment"], add=True, ids=[c.pk for c in extra], actor="test")
    return audience


def two_variants():
    return [
        {"key": "A", "weight": 1, "content": {"email": CONTENT["email"], "sms": CONTENT["sms"]}},
        {"key": "B", "name": "Shorter", "weight": 1,
         "content": {"email": {**CONTENT["email"], "subject": "Sale!"}, "sms": {"body": "Sale today"}}},
    ]


def create(api, data):
    response = api.post("/campaigns", data)
    assert response.status_code == 201, response.content
    return response.json()


def fields(response) -> set[str]:
    return {error["field"] for error in response.json()["errors"]}


def written():
    return (Campaign.objects.count(), Variant.objects.count(), Content.objects.count(), Delivery.objects.count(),
            AuditEntry.objects.filter(action__startswith="campaign.").count())


# --- The whole path ---------------------------------------------------------------------------


def test_create_launch_dispatch_then_read_counts_per_channel_and_suppressions_by_reason(api, audience):
    created = create(api, body(audience, goal={"event": "order_completed", "within_hours": 48}))
    assert created["status"] == "draft"
    assert created["topic"] == "newsletter" and created["channels"] == ["email", "sms"]
    assert created["strategy"] == "all"
    assert created["variants"] == [{"key": "A", "name": "", "weight": 1}]
    assert created["segment_ids"] == [audience["segment"].pk]
    assert created["goal"] == {"event": "order_completed", "within_hours": 48}
    assert created["schedule"] == {"kind": "now", "at": None, "local": None}
    assert created["totals"]["sent"] == 0 and created["staged"] is None
    campaign_id = created["id"]
    assert Content.objects.get(variant__campaign_id=campaign_id, channel="sms").body == CONTENT["sms"]
    assert AuditEntry.objects.filter(action="campaign.created", object_id=str(campaign_id), actor="api:tests").exists()

    launched = api.post(f"/campaigns/{campaign_id}/launch")
    assert launched.status_code == 200, launched.content
    assert launched.json()["status"] == "sending"
    assert launched.json()["audience_size"] == 6
    assert launched.json()["totals"]["planned"] == 5

    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 5
    assert SandboxMessage.objects.filter(to="ada@example.com").get().rendered["subject"] == "Hello Ada"

    detail = api.get(f"/campaigns/{campaign_id}")
    assert detail.status_code == 200
    summary = detail.json()
    assert summary["totals"]["sent"] == 5
    assert summary["by_channel"]["email"]["sent"] == 3  # ada, bob, fay
    assert summary["by_channel"]["sms"]["sent"] == 2  # ada, cyd
    assert summary["by_channel"]["email"]["suppressed"] == 3  # cyd and dee not subscribed, eve bounced
    assert summary["by_variant"]["A"]["sent"] == 5
    assert summary["suppressed_by_reason"] == {"not_subscribed": 5, "bounced": 1, "no_address": 1}
    assert summary["totals"]["suppressed"] == 7

    listed = api.get("/campaigns").json()
    assert listed["campaigns"][0]["id"] == campaign_id
    assert listed["campaigns"][0]["status"] == "sending" and listed["campaigns"][0]["audience_size"] == 6


def test_variants_with_weights_and_a_local_schedule_are_stored(api, audience):
    created = create(api, body(audience, content=None, variants=two_variants(),
                               schedule={"local": "2030-12-01T09:00"}, throttle_per_minute=100))
    assert [v["key"] for v in created["variants"]] == ["A", "B"]
    assert created["variants"][1]["name"] == "Shorter"
    assert created["schedule"] == {"kind": "local", "at": None, "local": "2030-12-01T09:00"}
    assert created["throttle_per_minute"] == 100
    assert set(created["by_variant"]) == {"A", "B"}
    assert Content.objects.get(variant__key="B", channel="sms").body == {"body": "Sale today"}


def test_a_campaign_scheduled_for_later_waits(api, audience):
    at = (timezone.now() + timedelta(days=2)).replace(microsecond=0).astimezone(ZoneInfo("Europe/Paris")).isoformat()
    created = create(api, body(audience, schedule={"at": at}))
    assert datetime.fromisoformat(created["schedule"]["at"]) == datetime.fromisoformat(at)
    launched = api.post(f"/campaigns/{created['id']}/launch").json()
    assert launched["status"] == "scheduled"
    assert Delivery.objects.count() == 0


# --- Bad input: 400 naming the field, nothing written ------------------------------------------


def _without_sms(data):
    del data["content"]["sms"]
    return data


BAD = {
    "unknown field": (lambda a: {**body(a), "nmae": "typo"}, "nmae"),
    "unknown field in content": (
        lambda a: body(a, content={"email": {**CONTENT["email"], "subjcet": "x"}, "sms": CONTENT["sms"]}),
        "content.email.subjcet"),
    "unknown topic": (lambda a: body(a, topic="nope"), "topic"),
    "unknown segment": (lambda a: body(a, segment_ids=[a["segment"].pk, 999999]), "segment_ids"),
    "no segment": (lambda a: body(a, segment_ids=[]), "segment_ids"),
    "audience also excluded": (lambda a: body(a, exclude_segment_ids=[a["segment"].pk]), "exclude_segment_ids"),
    "not a channel": (lambda a: body(a, channels=["email", "fax"]), "channels[1]"),
    "no channel": (lambda a: body(a, channels=[]), "channels"),
    "channel twice": (lambda a: body(a, channels=["email", "sms", "email"]), "channels"),
    "content for a channel not in the list": (
        lambda a: body(a, content={"email": CONTENT["email"], "sms": CONTENT["sms"], "push": CONTENT["push"]}),
        "content.push"),
    "missing content for a channel": (lambda a: _without_sms(body(a)), "content.sms"),
    "no content at all": (lambda a: body(a, content=None), "content"),
    "missing required content field": (
        lambda a: body(a, content={"email": CONTENT["email"], "sms": {}}), "content.sms.body"),
    "blank sms body": (lambda a: body(a, content={"email": CONTENT["email"], "sms": {"body": "  "}}), "content.sms.body"),
    "broken template syntax": (
        lambda a: body(a, content={"email": {**CONTENT["email"], "subject": "{% if %}x"}, "sms": CONTENT["sms"]}),
        "content.email.subject"),
    "forbidden tag": (
        lambda a: body(a, content={"email": {**CONTENT["email"], "html": "{% load static %}<p>x</p>"},
                                   "sms": CONTENT["sms"]}),
        "content.email.html"),
    "whatsapp variables not text": (
        lambda a: body(a, channels=["whatsapp"], content={"whatsapp": {"template": "t", "variables": {"1": 5}}}),
        "content.whatsapp.variables.1"),
    "naive datetime": (lambda a: body(a, schedule={"at": "2030-12-01T09:00:00"}), "schedule.at"),
    "time in the past": (lambda a: body(a, schedule={"at": "2020-12-01T09:00:00+00:00"}), "schedule.at"),
    "local time with an offset": (lambda a: body(a, schedule={"local": "2030-12-01T09:00+01:00"}), "schedule.local"),
    "local time that does not exist": (lambda a: body(a, schedule={"local": "2030-13-01T09:00"}), "schedule.local"),
    "both at and local": (
        lambda a: body(a, schedule={"at": "2030-12-01T09:00:00+00:00", "local": "2030-12-01T09:00"}), "schedule"),
    "both content and variants": (lambda a: body(a, variants=two_variants()), "variants"),
    "weight 0": (
        lambda a: body(a, content=None, variants=[{**two_variants()[0], "weight": 0}, two_variants()[1]]),
        "variants[0].weight"),
    "same variant key twice": (
        lambda a: body(a, content=None, variants=[two_variants()[0], {**two_variants()[1], "key": "A"}]), "variants"),
    "bad template in the second variant": (
        lambda a: body(a, content=None, variants=[
            two_variants()[0], {**two_variants()[1], "content": {"email": CONTENT["email"], "sms": {"body": "{{ x|nofilter }}"}}}]),
        "variants[1].content.sms.body"),
    "single variant list missing a channel": (
        lambda a: body(a, content=None, variants=[{"key": "A", "weight": 1, "content": {"email": CONTENT["email"]}}]),
        "variants[0].content.sms"),
    "empty variant list": (lambda a: body(a, content=None, variants=[]), "variants"),
    "bad strategy": (lambda a: body(a, strategy="loudest"), "strategy"),
    "blank name": (lambda a: body(a, name="   "), "name"),
    "throttle 0": (lambda a: body(a, throttle_per_minute=0), "throttle_per_minute"),
    "staged test of one variant": (lambda a: body(a, test={"percent": 20, "metric": "click"}), "test.percent"),
    "staged test percent out of range": (
        lambda a: body(a, content=None, variants=two_variants(), test={"percent": 95, "metric": "click"}), "test.percent"),
    "conversion test without a goal": (
        lambda a: body(a, content=None, variants=two_variants(), test={"percent": 20, "metric": "conversion"}),
        "test.metric"),
    "channel test with strategy all": (
        lambda a: body(a, content=None, variants=two_variants(), test={"percent": 20, "metric": "click", "channels": True}),
        "test.channels"),
    "goal event that is not a name": (lambda a: body(a, goal={"event": "order completed!"}), "goal.event"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(api, audience, case):
    make, field = BAD[case]
    before = written()
    response = api.post("/campaigns", make(audience))
    assert response.status_code == 400, response.content
    assert response.json()["message"]
    assert field in fields(response), response.json()
    assert all(error["message"] for error in response.json()["errors"])
    assert written() == before


def test_every_bad_field_is_named_at_once(api, audience):
    data = body(audience, topic="nope", segment_ids=[999999],
                content={"email": {**CONTENT["email"], "subject": "{% if %}"}, "sms": CONTENT["sms"]})
    response = api.post("/campaigns", data)
    assert response.status_code == 400
    assert {"topic", "segment_ids", "content.email.subject"} <= fields(response)
    topic = next(error["message"] for error in response.json()["errors"] if error["field"] == "topic")
    assert "newsletter" in topic  # the known topics, to pick from


def test_a_body_that_is_not_json_is_refused(api, audience):
    response = api.post("/campaigns", raw="{name: ")
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]
    assert written() == (0, 0, 0, 0, 0)


# --- Lifecycle --------------------------------------------------------------------------------


def test_transitions_follow_the_lifecycle_and_refuse_the_rest_with_409(api, audience):
    campaign_id = create(api, body(audience))["id"]
    for action in ("pause", "resume"):
        refused = api.post(f"/campaigns/{campaign_id}/{action}")
        assert refused.status_code == 409, (action, refused.content)
        assert fields(refused) == {"status"}
        assert "draft" in refused.json()["errors"][0]["message"]

    assert api.post(f"/campaigns/{campaign_id}/launch").json()["status"] == "sending"
    again = api.post(f"/campaigns/{campaign_id}/launch")
    assert again.status_code == 409 and fields(again) == {"status"}
    assert "sending" in again.json()["errors"][0]["message"]

    assert api.post(f"/campaigns/{campaign_id}/pause").json()["status"] == "paused"
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}  # paused: nothing goes out
    assert api.post(f"/campaigns/{campaign_id}/resume").json()["status"] == "sending"

    no_test = api.post(f"/campaigns/{campaign_id}/send-remainder")
    assert no_test.status_code == 409 and fields(no_test) == {"status"}

    cancelled = api.post(f"/campaigns/{campaign_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["totals"]["cancelled"] == 5
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS) == {}
    assert api.post(f"/campaigns/{campaign_id}/cancel").status_code == 409
    assert api.post(f"/campaigns/{campaign_id}/resume").status_code == 409
    actions = list(AuditEntry.objects.filter(object_type="campaign", object_id=str(campaign_id))
                   .order_by("id").values_list("action", flat=True))
    assert actions == ["campaign.created", "campaign.launched", "campaign.paused", "campaign.resumed",
                       "campaign.cancelled"]


@pytest.mark.parametrize("method,path", [
    ("get", "/campaigns/999999"),
    ("get", "/campaigns/999999/deliveries"),
    ("post", "/campaigns/999999/launch"),
    ("post", "/campaigns/999999/pause"),
    ("post", "/campaigns/999999/resume"),
    ("post", "/campaigns/999999/cancel"),
    ("post", "/campaigns/999999/send-remainder"),
    ("get", "/messages/999999"),
])
def test_unknown_ids_answer_404_in_json(api, db, method, path):
    response = getattr(api, method)(path)
    assert response.status_code == 404
    assert "999999" in response.json()["message"]


def test_staged_send_shows_test_results_and_sends_the_chosen_winner(api, crowd):
    created = create(api, body(crowd, content=None, variants=two_variants(),
                               test={"percent": 50, "metric": "click", "hours": 4}))
    assert created["test"] == {"percent": 50, "metric": "click", "hours": 4, "channels": False}
    campaign_id = created["id"]
    api.post(f"/campaigns/{campaign_id}/launch")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    staged = api.get(f"/campaigns/{campaign_id}").json()["staged"]
    assert staged["metric"] == "click"
    assert [arm["key"] for arm in staged["variants"]] == ["A", "B"]
    tested = sum(arm["sent"] for arm in staged["variants"])
    held = Delivery.objects.filter(campaign_id=campaign_id, status="held").count()
    assert 0 < tested < 25 and held == 25 - tested  # the rest waits for the winner
    assert staged["channels"] == []

    unknown = api.post(f"/campaigns/{campaign_id}/send-remainder", {"variant": "Z"})
    assert unknown.status_code == 400 and fields(unknown) == {"variant"}
    sent = api.post(f"/campaigns/{campaign_id}/send-remainder", {"variant": "B"})
    assert sent.status_code == 200, sent.content
    assert sent.json()["winner"]["variant"] == "B"
    assert not Delivery.objects.filter(campaign_id=campaign_id, status="held").exists()
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    after = api.get(f"/campaigns/{campaign_id}").json()
    assert after["totals"]["sent"] == 25
    assert after["by_variant"]["B"]["sent"] >= held
    twice = api.post(f"/campaigns/{campaign_id}/send-remainder")
    assert twice.status_code == 409 and fields(twice) == {"status"}


# --- Reading ----------------------------------------------------------------------------------


def test_deliveries_page_through_every_row_once_newest_first(api, audience):
    campaign_id = create(api, body(audience))["id"]
    api.post(f"/campaigns/{campaign_id}/launch")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/campaigns/{campaign_id}/deliveries", **params)
        assert page.status_code == 200, page.content
        seen += page.json()["deliveries"]
        pages += 1
        cursor = page.json()["next_cursor"]
        if cursor is None or pages > 10:
            break
        assert isinstance(cursor, str)
    ids = [d["id"] for d in seen]
    assert pages == 3 and len(ids) == 12 == len(set(ids))
    assert ids == sorted(ids, reverse=True)
    assert set(ids) == set(Delivery.objects.filter(campaign_id=campaign_id).values_list("id", flat=True))
    ada_sms = next(d for d in seen if d["email"] == "ada@example.com" and d["channel"] == "sms")
    assert ada_sms["status"] == "sent" and ada_sms["variant"] == "A" and ada_sms["sent_at"]
    assert ada_sms["provider_message_id"]
    eve_email = next(d for d in seen if d["email"] == "eve@example.com" and d["channel"] == "email")
    assert (eve_email["status"], eve_email["reason"]) == ("suppressed", "bounced")

    suppressed = api.get(f"/campaigns/{campaign_id}/deliveries", status="suppressed").json()
    assert len(suppressed["deliveries"]) == 7 and suppressed["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["not a cursor", "!!!", "YWJj", "LTE", "MTJ8MTI"])
def test_a_malformed_deliveries_cursor_is_refused(api, audience, cursor):
    campaign_id = create(api, body(audience))["id"]
    response = api.get(f"/campaigns/{campaign_id}/deliveries", cursor=cursor)
    assert response.status_code == 400
    assert fields(response) == {"cursor"}


def test_an_unknown_delivery_status_filter_is_refused(api, audience):
    campaign_id = create(api, body(audience))["id"]
    response = api.get(f"/campaigns/{campaign_id}/deliveries", status="exploded")
    assert response.status_code == 400 and fields(response) == {"status"}


def test_campaign_list_is_newest_first_and_pages_in_few_queries(api, audience, django_assert_num_queries):
    ids = [create(api, body(audience, name=f"Campaign {n}"))["id"] for n in range(5)]
    api.get("/campaigns")  # the key's last use is recorded at most once a minute
    seen, cursor = [], None
    with django_assert_num_queries(2):  # the API key, the page
        first = api.get("/campaigns", limit=3).json()
    seen += [c["id"] for c in first["campaigns"]]
    second = api.get("/campaigns", limit=3, cursor=first["next_cursor"]).json()
    seen += [c["id"] for c in second["campaigns"]]
    assert second["next_cursor"] is None
    assert seen == list(reversed(ids))
    assert first["campaigns"][0] == {
        "id": ids[-1], "name": "Campaign 4", "status": "draft", "topic": "newsletter", "channels": ["email", "sms"],
        "audience_size": 0, "created_at": first["campaigns"][0]["created_at"], "launched_at": None,
    }
    assert api.get("/campaigns", cursor="nonsense").status_code == 400
    assert api.get("/campaigns", status="draft").json()["campaigns"][0]["id"] == ids[-1]
    assert api.get("/campaigns", status="sending").json()["campaigns"] == []


# --- One-off messages -------------------------------------------------------------------------


def test_a_message_goes_through_the_policy(api, audience):
    dee = audience["people"]["dee"]  # subscribed to nothing
    refused = api.post("/messages", {"customer": {"email": "DEE@example.com"}, "topic": "newsletter", "channel": "email",
                                     "content": CONTENT["email"]})
    assert refused.status_code == 202, refused.content
    assert refused.json()["decision"] == "suppress"
    assert refused.json()["reason"] == "not_subscribed"
    assert refused.json()["status"] == "suppressed" and refused.json()["duplicate"] is False

    alert = api.post("/messages", {"customer": {"external_id": dee.external_id}, "topic": "alerts", "channel": "sms",
                                   "content": {"body": "Your code is 1234, {{ first_name }}"}})
    assert alert.status_code == 202, alert.content
    assert (alert.json()["decision"], alert.json()["reason"], alert.json()["status"]) == ("send", "", "planned")

    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 1
    assert SandboxMessage.objects.get(to=dee.phone).rendered["body"] == "Your code is 1234, Dee"
    status = api.get(f"/messages/{alert.json()['delivery_id']}")
    assert status.status_code == 200
    assert status.json()["status"] == "sent" and status.json()["sent_at"]
    assert (status.json()["topic"], status.json()["channel"], status.json()["customer_id"]) == ("alerts", "sms", dee.pk)
    suppressed = api.get(f"/messages/{refused.json()['delivery_id']}").json()
    assert (suppressed["status"], suppressed["reason"], suppressed["sent_at"]) == ("suppressed", "not_subscribed", None)


def test_a_subscribed_customer_gets_marketing_and_quiet_hours_defer_it(api, audience, settings):
    ada = audience["people"]["ada"]
    sent = api.post("/messages", {"customer": {"id": ada.pk}, "topic": "newsletter", "channel": "email",
                                  "content": CONTENT["email"]})
    assert sent.json()["decision"] == "send"
    now = timezone.now().astimezone(ZoneInfo("UTC"))
    start = (now + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    end = (now + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    if start > end:  # the window would wrap midnight; an early-morning window is still ahead
        start, end = time(1, 0), time(2, 0)
    settings.QUIET_HOURS = (start, end)
    later = api.post("/messages", {"customer": {"id": ada.pk}, "topic": "newsletter", "channel": "sms",
                                   "content": CONTENT["sms"]})
    assert later.status_code == 202
    assert later.json()["decision"] == "defer" and later.json()["status"] == "planned"
    until = datetime.fromisoformat(later.json()["until"])
    assert until > now and until.astimezone(ZoneInfo("UTC")).time() == start
    settings.QUIET_HOURS = (time(0, 0), time.max)  # the dispatcher checks again at send time
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 1  # only the first; the deferred one waits


def test_an_idempotency_key_sends_once(api, audience):
    ada = audience["people"]["ada"]
    message = {"customer": {"id": ada.pk}, "topic": "alerts", "channel": "email", "content": CONTENT["email"],
               "idempotency_key": "order-9913-receipt"}
    first = api.post("/messages", message)
    assert first.status_code == 202
    again = api.post("/messages", message)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["delivery_id"] == first.json()["delivery_id"]
    assert again.json()["decision"] == "send"
    assert Delivery.objects.count() == 1
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    assert api.post("/messages", message).json()["status"] == "sent"
    assert SandboxMessage.objects.count() == 1

    other = api.post("/messages", {**message, "customer": {"id": audience["people"]["bob"].pk}})
    assert other.status_code == 409 and fields(other) == {"idempotency_key"}
    assert Delivery.objects.count() == 1


@pytest.mark.parametrize("change,field", [
    ({"customer": {"external_id": "nobody"}}, "customer.external_id"),
    ({"customer": {"email": "nobody@example.com"}}, "customer.email"),
    ({"customer": {"id": 999999}}, "customer.id"),
    ({"customer": {"id": 1, "email": "ada@example.com"}}, "customer"),
    ({"topic": "nope"}, "topic"),
    ({"channel": "fax"}, "channel"),
    ({"content": {}}, "content.body"),
    ({"content": {"body": "{% if %}"}}, "content.body"),
    ({"content": {"body": "x", "title": "y"}}, "content.title"),
    ({"priority": "high"}, "priority"),
    ({"idempotency_key": ""}, "idempotency_key"),
])
def test_a_bad_message_is_refused_naming_the_field(api, audience, change, field):
    message = {"customer": {"email": "ada@example.com"}, "topic": "alerts", "channel": "sms",
               "content": {"body": "Your code is 1234"}, **change}
    response = api.post("/messages", message)
    assert response.status_code == 400, response.content
    assert field in fields(response), response.json()
    assert Delivery.objects.count() == 0


def test_unknown_customer_and_topic_are_named_together(api, audience):
    response = api.post("/messages", {"customer": {"external_id": "nobody"}, "topic": "nope", "channel": "sms",
                                      "content": {"body": "{% load static %}"}})
    assert response.status_code == 400
    assert fields(response) == {"customer.external_id", "topic", "content.body"}
    assert "newsletter" in next(e["message"] for e in response.json()["errors"] if e["field"] == "topic")


# --- Access and documentation -----------------------------------------------------------------


@pytest.mark.parametrize("method,path", [
    ("post", "/api/v1/campaigns"),
    ("get", "/api/v1/campaigns"),
    ("get", "/api/v1/campaigns/1"),
    ("get", "/api/v1/campaigns/1/deliveries"),
    ("post", "/api/v1/campaigns/1/launch"),
    ("post", "/api/v1/campaigns/1/cancel"),
    ("post", "/api/v1/messages"),
    ("get", "/api/v1/messages/1"),
])
def test_every_endpoint_needs_an_api_key(client, audience, method, path):
    campaign = Campaign.objects.count()
    response = getattr(client, method)(path, content_type="application/json") if method == "post" else client.get(path)
    assert response.status_code == 401
    assert "Bearer" in response.json()["message"]
    wrong = getattr(client, method)(path, headers={"Authorization": "Bearer sb_wrong"})
    assert wrong.status_code == 401
    assert Campaign.objects.count() == campaign and Delivery.objects.count() == 0


def test_docs_render_and_describe_the_campaign_endpoints(client, db):
    assert client.get("/api/docs").status_code == 200
    paths = client.get("/api/openapi.json").json()["paths"]
    for path in ("/api/v1/campaigns", "/api/v1/campaigns/{campaign_id}", "/api/v1/campaigns/{campaign_id}/launch",
                 "/api/v1/campaigns/{campaign_id}/pause", "/api/v1/campaigns/{campaign_id}/resume",
                 "/api/v1/campaigns/{campaign_id}/cancel", "/api/v1/campaigns/{campaign_id}/send-remainder",
                 "/api/v1/campaigns/{campaign_id}/deliveries", "/api/v1/messages", "/api/v1/messages/{delivery_id}"):
        assert path in paths, path
    assert "409" in paths["/api/v1/campaigns/{campaign_id}/launch"]["post"]["responses"]


def test_send_remainder_without_a_body_sends_the_suggested_winner(api, crowd):
    campaign_id = create(api, body(crowd, content=None, variants=two_variants(), strategy="preferred",
                                   test={"percent": 50, "metric": "open", "channels": True}))["id"]
    api.post(f"/campaigns/{campaign_id}/launch")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    staged = api.get(f"/campaigns/{campaign_id}").json()["staged"]
    assert [arm["key"] for arm in staged["channels"]] == ["email", "sms"]
    assert staged["suggested_variant"] in {"A", "B"} and staged["suggested_channel"] in {"email", "sms"}
    response = api.post(f"/campaigns/{campaign_id}/send-remainder", raw="")
    assert response.status_code == 200, response.content
    winner = response.json()["winner"]
    assert (winner["variant"], winner["channel"]) == (staged["suggested_variant"], staged["suggested_channel"])
    assert AuditEntry.objects.filter(action="campaign.winner_sent", actor="api:tests").exists()
