"""Importing customers in headless Chromium: upload, preview and mapping, progress, result,
and the rejected rows downloaded; at desktop width and at 390 px."""

import csv

import pytest
from playwright.sync_api import expect

from customers.models import Customer, Subscription
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.segments.test_computation import run_background_tasks
from tests.test_browser_segments import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CSV = (
    "Customer ID,E-mail,Mobile,First name,Plan,Newsletter,Email opt-in\n"
    "crm-1,ada@example.com,+44 20 7946 0958,Ada,pro,yes,granted\n"
    "crm-2,grace@example,,Grace,team,no,granted\n"
    "crm-3,alan@example.com,0207,Alan,free,yes,revoked\n"
    "crm-4,barbara@example.com,,Barbara,pro,yes,granted\n"
).encode()


def upload(page, live_server, content=CSV, name="crm-export.csv"):
    page.goto(f"{live_server.url}/customers/imports/new/")
    page.get_by_label("CSV file").set_input_files(files=[{"name": name, "mimeType": "text/csv", "buffer": content}])
    page.get_by_role("button", name="Upload and preview").click()


def test_a_marketer_imports_a_csv_and_downloads_the_rejected_rows(live_server, page, shots, marketer, topics):
    barbara = CustomerFactory(external_id="crm-4", email="barbara@example.com", first_name="Barbara")
    SubscriptionFactory(customer=barbara, topic=topics["newsletter"], channel="email", subscribed=False,
                        source="preference-centre")
    sign_in(page, live_server, marketer)
    page.goto(f"{live_server.url}/customers/")
    page.get_by_role("link", name="Import customers").click()
    expect(page.get_by_text("No imports yet.")).to_be_visible()
    page.get_by_role("link", name="Import a CSV").first.click()

    # A broken file is refused on the form, naming the line.
    upload(page, live_server, content=b"a,b\n1,2\n3,4,5\n", name="broken.csv")
    expect(page.get_by_text("line 3 has more values than the header's 2 columns")).to_be_visible()

    upload(page, live_server)
    expect(page.get_by_role("heading", name="Preview")).to_be_visible()
    expect(page.locator("#preview")).to_contain_text("grace@example")
    # The mapping is guessed from the header.
    expect(page.get_by_label("Customer ID")).to_have_value("field:external_id")
    expect(page.get_by_label("E-mail")).to_have_value("field:email")
    expect(page.get_by_label("Mobile")).to_have_value("field:phone")
    expect(page.get_by_label("Newsletter", exact=True)).to_have_value("subscription:newsletter:email")
    expect(page.get_by_label("Email opt-in")).to_have_value("consent:email")
    # The consent column asks for its proof once; an attribute column for its key.
    expect(page.locator("#col-6-source")).to_be_visible()
    expect(page.locator("#col-4-key")).to_have_value("plan")
    page.get_by_label("First name").select_option("attribute:text")
    expect(page.locator("#col-3-key")).to_be_visible()
    page.get_by_label("First name").select_option("field:first_name")
    expect(page.locator("#col-3-key")).to_be_hidden()
    page.locator("#col-6-source").fill("")
    page.screenshot(path=shots / "imports-mapping.png", full_page=True)
    page.get_by_role("button", name="Start the import").click()
    expect(page.get_by_text("say where the consent was given")).to_be_visible()
    page.locator("#col-6-source").fill("crm-signup-form")
    page.locator("#col-6-wording").fill("Send me news and offers by email")
    page.get_by_role("button", name="Start the import").click()

    progress = page.locator("#import-progress")
    expect(progress.get_by_text("Waiting for a background worker to start it.")).to_be_visible()
    expect(progress.get_by_role("progressbar")).to_be_visible()
    page.screenshot(path=shots / "imports-progress.png", full_page=True)

    # A worker runs it; the page notices and shows the result.
    run_background_tasks()
    result = page.locator("#result")
    expect(result).to_be_visible()
    expect(result.locator(".stat").nth(0)).to_contain_text("1")  # created: Ada
    expect(result.locator(".stat").nth(1)).to_contain_text("1")  # updated: Barbara
    expect(result.locator(".stat").nth(3)).to_contain_text("2")  # rejected: Grace's email, Alan's phone
    report = page.locator("#report")
    expect(report).to_contain_text("E-mail: 'grace@example' is not an email address")
    expect(report).to_contain_text("Mobile: '0207' is not an E.164 phone number")
    expect(report).to_contain_text("kept unsubscribed")
    page.screenshot(path=shots / "imports-result.png", full_page=True)
    assert Customer.objects.get(external_id="crm-1").phone == "+442079460958"
    assert Subscription.objects.get(customer=barbara).subscribed is False

    with page.expect_download() as download:
        page.get_by_role("link", name="Download rejected rows and warnings (CSV)").click()
    lines = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert lines[0] == "line,outcome,reason,Customer ID,E-mail,Mobile,First name,Plan,Newsletter,Email opt-in"
    assert lines[1] == "3,rejected,E-mail: 'grace@example' is not an email address,crm-2,grace@example,,Grace,team,no,granted"
    line, outcome, reason, *values = next(csv.reader([lines[2]]))
    assert (line, outcome, values[2]) == ("4", "rejected", "0207")
    assert reason.startswith("Mobile: '0207' is not an E.164 phone number")
    assert lines[3].startswith("5,warning,newsletter by email: kept unsubscribed: unsubscribed on ")

    page.get_by_role("link", name="Imports").click()
    expect(page.locator("#imports")).to_contain_text("crm-export.csv")
    expect(page.locator("#imports")).to_contain_text("Done")
    page.screenshot(path=shots / "imports-list.png", full_page=True)


def test_the_import_pages_fit_a_phone(live_server, page, shots, marketer, topics):
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, live_server, marketer)
    upload(page, live_server)
    expect(page.get_by_role("heading", name="Mapping", exact=True)).to_be_visible()
    page.screenshot(path=shots / "imports-mapping-390.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_role("button", name="Start the import").click()
    run_background_tasks()
    expect(page.locator("#result")).to_be_visible()
    page.screenshot(path=shots / "imports-result-390.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
