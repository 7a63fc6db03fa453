"""Imports API: 202 with the id, progress and counts, rejected rows as CSV, 400 naming the
field with nothing stored, 404 for an unknown id."""

import json

import pytest

from core.models import AuditEntry
from customers.imports.models import CustomerImport
from customers.models import Customer
from tests.segments.test_computation import run_background_tasks

pytestmark = pytest.mark.django_db(transaction=True)

CSV = b"id,email,plan\na-1,a1@example.com,pro\na-2,nope,free\na-1,dup@example.com,team\n"
MAPPING = {"id": "external_id", "email": "email", "plan": {"to": "attribute", "key": "plan", "type": "text"}}


def post(client, api_key, *, content=CSV, mapping=MAPPING, **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"file": SimpleUploadedFile("crm.csv", content, content_type="text/csv"),
            "mapping": mapping if isinstance(mapping, str) else json.dumps(mapping), **extra}
    return client.post("/api/v1/imports", data, headers={"Authorization": f"Bearer {api_key}"})


def test_an_import_is_accepted_runs_in_the_background_and_reports(client, api_key, api):
    response = post(client, api_key)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["rows_total"] == 3
    assert api.get(f"/imports/{body['id']}").json()["status"] == "queued"
    run_background_tasks()
    detail = api.get(f"/imports/{body['id']}")
    assert detail.status_code == 200
    data = detail.json()
    assert (data["status"], data["created"], data["updated"], data["unchanged"], data["rejected"]) == ("done", 1, 0, 0, 2)
    assert data["rows_done"] == data["rows_total"] == 3
    assert Customer.objects.get(external_id="a-1").attributes == {"plan": "pro"}
    rejected = api.get(f"/imports/{body['id']}/rejected")
    assert rejected.status_code == 200 and rejected["Content-Type"].startswith("text/csv")
    assert b"".join(rejected.streaming_content).decode().splitlines() == [
        "line,outcome,reason,id,email,plan",
        "3,rejected,email: 'nope' is not an email address,a-2,nope,free",
        "4,rejected,id: duplicate of line 2,a-1,dup@example.com,team",
    ]
    assert AuditEntry.objects.filter(action="import.started", actor="api:tests").exists()


@pytest.mark.parametrize("mapping, field", [
    ("{not json", "mapping"),
    ({"id": "external_id", "email": {"to": "nonsense"}}, "mapping.email"),
    ({"id": "external_id", "nope": "email"}, "mapping.nope"),
    ({"email": "email"}, "match_on"),
])
def test_a_bad_mapping_is_a_400_naming_the_field_and_nothing_is_stored(client, api_key, mapping, field):
    response = post(client, api_key, mapping=mapping)
    assert response.status_code == 400
    assert field in [error["field"] for error in response.json()["errors"]]
    assert not CustomerImport.objects.exists()


def test_a_broken_file_is_a_400_naming_the_line(client, api_key):
    response = post(client, api_key, content=b"id,email\na-1\n", mapping={"id": "external_id", "email": "email"})
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "file", "message": "line 2 has fewer values than the header's 2 columns"}]
    assert not CustomerImport.objects.exists()


def test_an_unknown_match_key_is_a_400(client, api_key):
    response = post(client, api_key, match_on="shoe_size")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "match_on"


def test_unknown_imports_are_404(api):
    assert api.get("/imports/999999").status_code == 404
    assert api.get("/imports/999999/rejected").status_code == 404


def test_the_api_needs_a_key(client):
    assert client.get("/api/v1/imports/1").status_code == 401
