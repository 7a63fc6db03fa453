import pytest

from segments.models import Segment
from tests.factories import CustomerFactory, EventFactory

pytestmark = pytest.mark.django_db(transaction=True)

EXPERTS = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}


@pytest.fixture
def people(db):
    return [
        CustomerFactory(external_id="e1", lifecycle_stage="expert"),
        CustomerFactory(external_id="e2", lifecycle_stage="expert"),
        CustomerFactory(external_id="l1", lifecycle_stage="lead"),
    ]


def test_create_read_and_page_members(api, people):
    created = api.post("/segments", {"name": "Experts", "rules": EXPERTS})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["member_count"] == 2 and body["computed_at"] and body["kind"] == "dynamic"

    detail = api.get(f"/segments/{body['id']}").json()
    assert detail["member_count"] == 2

    first = api.get(f"/segments/{body['id']}/members", limit=1).json()
    second = api.get(f"/segments/{body['id']}/members", limit=1, cursor=first["next_cursor"]).json()
    assert {m["external_id"] for m in first["members"] + second["members"]} == {"e1", "e2"}
    assert second["next_cursor"] is None


def test_update_rules_recomputes(api, people):
    segment = api.post("/segments", {"name": "S", "rules": EXPERTS}).json()
    updated = api.put(f"/segments/{segment['id']}", {"rules": {"attr": "lifecycle_stage", "op": "eq", "value": "lead"}})
    assert updated.status_code == 200
    assert updated.json()["member_count"] == 1


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"name": "S", "rules": {"attr": "shoe_size", "op": "eq", "value": 42}}, "rules.attr", "unknown field"),
        ({"name": "S", "rules": {"attr": "lifecycle_stage", "op": "gt", "value": 3}}, "rules.value", "text"),
        ({"name": "S", "rules": {"subscribed": {"topic": "nope", "channel": "sms"}}}, "rules.subscribed.topic", "unknown topic"),
        ({"name": "S", "rules": {"attr": "lifecycle_stage", "op": "eq"}}, "rules.value", "needs a value"),
        ({"name": "S"}, "body", "static: true"),
        ({"name": "S", "static": True, "rules": EXPERTS}, "body", "not both"),
    ],
)
def test_invalid_segments_are_refused_and_nothing_is_saved(api, body, field, words):
    response = api.post("/segments", body)
    assert response.status_code == 400, response.content
    assert any(e["field"] == field and words in e["message"] for e in response.json()["errors"]), response.json()
    assert not Segment.objects.exists()


def test_duplicate_name_is_refused(api, people):
    api.post("/segments", {"name": "Experts", "rules": EXPERTS})
    response = api.post("/segments", {"name": "experts", "rules": EXPERTS})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "name"


def test_preview_counts_without_saving(api, people):
    response = api.post("/segments/preview", {"rules": EXPERTS})
    assert response.status_code == 200
    assert response.json()["count"] == 2
    assert {c["external_id"] for c in response.json()["sample"]} == {"e1", "e2"}
    assert not Segment.objects.exists()
    bad = api.post("/segments/preview", {"rules": {"any": []}})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "rules.any"


def test_static_members_add_remove_and_customer_segments(api, people):
    static = api.post("/segments", {"name": "Imported", "static": True}).json()
    added = api.post(f"/segments/{static['id']}/members", {"external_ids": ["e1", "nobody"], "ids": [people[2].pk]})
    assert added.json() == {"changed": 2, "not_found": ["nobody"], "member_count": 2}
    assert [s["name"] for s in api.get(f"/customers/{people[0].pk}/segments").json()] == ["Imported"]
    removed = api.delete(f"/segments/{static['id']}/members", {"external_ids": ["e1"]})
    assert removed.json()["member_count"] == 1
    dynamic = api.post("/segments", {"name": "Experts", "rules": EXPERTS}).json()
    refused = api.post(f"/segments/{dynamic['id']}/members", {"ids": [people[2].pk]})
    assert refused.status_code == 400 and "rules" in refused.json()["errors"][0]["message"]


def test_why_explains_a_customer(api, people):
    segment = api.post(
        "/segments", {"name": "Buyers", "rules": {"all": [EXPERTS, {"event": "order_completed"}]}}
    ).json()
    EventFactory(customer=people[2], name="order_completed")
    why = api.get(f"/segments/{segment['id']}/why/{people[2].pk}").json()
    assert why["member"] is False and why["passed"] is False
    stage, orders = why["tree"]["children"]
    assert stage["passed"] is False and stage["value"] == "lead"
    assert orders["passed"] is True and orders["value"] == "1"


def test_missing_segment_is_404(api):
    assert api.get("/segments/999").status_code == 404
