"""Import pages: who may use them, the upload with its errors, the mapping, progress and the
result, and a pinned number of queries on the list."""

import io

import pytest
from django.urls import reverse

from customers.imports import services
from customers.imports.models import CustomerImport
from customers.models import Customer
from tests.segments.test_computation import run_background_tasks

pytestmark = pytest.mark.django_db(transaction=True)

CSV = b"Customer ID,E-mail,Plan,Newsletter,Email opt-in\nc-1,one@example.com,pro,yes,granted\nc-2,bad,free,no,revoked\n"


def csv_upload(content=CSV, name="crm.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content, content_type="text/csv")


@pytest.mark.parametrize("role, status", [("marketer", 200), ("admin_user", 200), ("support", 403), ("outsider", 403)])
def test_marketers_and_admins_import_support_and_outsiders_are_refused(client, request, role, status):
    client.force_login(request.getfixturevalue(role))
    assert client.get(reverse("customers:imports")).status_code == status
    response = client.post(reverse("customers:import_new"), {"file": csv_upload()})
    assert response.status_code == (302 if status == 200 else 403)
    assert CustomerImport.objects.count() == (1 if status == 200 else 0)


def test_the_customer_list_links_to_imports_for_marketers_only(client, marketer, support):
    client.force_login(marketer)
    assert reverse("customers:imports") in client.get(reverse("customers:list")).content.decode()
    client.force_login(support)
    assert reverse("customers:imports") not in client.get(reverse("customers:list")).content.decode()


def test_a_broken_file_is_an_inline_error_naming_the_line(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("customers:import_new"), {"file": csv_upload(b"a,b\n1,2\n3\n")})
    assert response.status_code == 422
    assert "line 3 has fewer values than the header&#x27;s 2 columns" in response.content.decode()
    assert not CustomerImport.objects.exists()


def test_upload_preview_guessed_mapping_start_and_result(client, marketer, topics):
    client.force_login(marketer)
    response = client.post(reverse("customers:import_new"), {"file": csv_upload()})
    customer_import = CustomerImport.objects.get()
    assert response["Location"] == reverse("customers:import_detail", args=[customer_import.pk])
    page = client.get(response["Location"]).content.decode()
    assert "one@example.com" in page  # the preview
    # Guessed from the header: E-mail is the email, Plan an attribute, Newsletter a
    # subscription, the opt-in a consent.
    assert '<option value="field:email" selected>' in page
    assert '<option value="field:external_id" selected>' in page
    assert '<option value="attribute:text" selected>' in page
    assert '<option value="subscription:newsletter:email" selected>' in page
    assert '<option value="consent:email" selected>' in page

    form = {"col-0-to": "field:external_id", "col-1-to": "field:email", "col-2-to": "attribute:text",
            "col-2-key": "plan", "col-3-to": "subscription:newsletter:email", "col-4-to": "consent:email",
            "col-4-source": "", "col-4-legal_basis": "consent", "match_on": "external_id", "update_existing": "on"}
    refused = client.post(reverse("customers:import_start", args=[customer_import.pk]), form)
    assert refused.status_code == 422
    assert "say where the consent was given" in refused.content.decode()

    form["col-4-source"] = "crm signup form"
    started = client.post(reverse("customers:import_start", args=[customer_import.pk]), form)
    assert started.status_code == 302
    progress = client.get(reverse("customers:import_progress", args=[customer_import.pk]), headers={"HX-Request": "true"})
    assert "Waiting for a background worker" in progress.content.decode()
    assert "HX-Refresh" not in progress
    run_background_tasks()
    progress = client.get(reverse("customers:import_progress", args=[customer_import.pk]), headers={"HX-Request": "true"})
    assert progress["HX-Refresh"] == "true"
    page = client.get(reverse("customers:import_detail", args=[customer_import.pk])).content.decode()
    assert "E-mail: &#x27;bad&#x27; is not an email address" in page
    assert Customer.objects.get(external_id="c-1").attributes == {"plan": "pro"}
    report = client.get(reverse("customers:import_report", args=[customer_import.pk]))
    lines = b"".join(report.streaming_content).decode().splitlines()
    assert lines == ["line,outcome,reason,Customer ID,E-mail,Plan,Newsletter,Email opt-in",
                     "3,rejected,E-mail: 'bad' is not an email address,c-2,bad,free,no,revoked"]


def test_a_discarded_upload_drops_its_staged_file(client, marketer):
    client.force_login(marketer)
    client.post(reverse("customers:import_new"), {"file": csv_upload()})
    customer_import = CustomerImport.objects.get()
    assert services.staged_rows(customer_import) == 2
    client.post(reverse("customers:import_discard", args=[customer_import.pk]))
    customer_import.refresh_from_db()
    assert customer_import.status == CustomerImport.Status.DISCARDED
    assert services.staged_rows(customer_import) == 0


def test_the_import_list_takes_the_same_queries_however_many_imports(client, marketer, django_assert_num_queries):
    for n in range(3):
        services.import_upload(file=io.BytesIO(CSV), filename=f"crm-{n}.csv", actor="marketer", user=marketer)
    client.force_login(marketer)
    client.get(reverse("customers:imports"))  # warm the session
    # Session, user, roles, the imports with who uploaded them.
    with django_assert_num_queries(4):
        page = client.get(reverse("customers:imports")).content.decode()
    assert page.count("crm-") == 3
    for n in range(3, 8):
        services.import_upload(file=io.BytesIO(CSV), filename=f"crm-{n}.csv", actor="marketer", user=marketer)
    with django_assert_num_queries(4):
        page = client.get(reverse("customers:imports")).content.decode()
    assert page.count('data-import="') == 8
