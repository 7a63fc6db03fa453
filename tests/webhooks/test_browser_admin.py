"""Outgoing webhooks in Django admin, in headless Chromium: register an endpoint (the secret
shown once), see a disabled endpoint's notice, read the delivery log."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from customers import timeline
from tests.conftest import PASSWORD
from tests.factories import CustomerFactory
from webhooks.models import Attempt, Endpoint, Message

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_registers_an_endpoint_and_reads_its_delivery_log(live_server, page, shots, admin_user, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    admin_user.is_superuser = True
    admin_user.save(update_fields=["is_superuser"])
    # Django admin's pages name no icon, so Chromium asks for /favicon.ico, which the
    # project does not serve; the answer is not what this test is about.
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204, body=""))
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    # Register: an internal URL is refused on the form, then a public one is saved.
    page.goto(f"{live_server.url}/admin/webhooks/endpoint/add/")
    page.get_by_label("URL").fill("http://192.168.1.10/hook")
    page.get_by_label("Events").fill("message.*, order_completed")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errorlist")).to_contain_text("internal address")
    page.screenshot(path=shots / "webhooks-admin-refused.png", full_page=True)
    page.get_by_label("URL").fill("https://warehouse.example.com/switchboard")
    page.get_by_label("Description").fill("Data warehouse")
    page.get_by_role("button", name="Save", exact=True).click()
    endpoint = Endpoint.objects.get()
    expect(page.locator(".messagelist")).to_contain_text(f"it will not be shown again: {endpoint.secret}")
    page.screenshot(path=shots / "webhooks-admin-created.png", full_page=True)

    # A message with a failed and a successful attempt, and a second endpoint disabled.
    timeline.add(customer=CustomerFactory(external_id="crm-7"), name="order_completed", properties={"total": 42})
    message = Message.objects.get()
    Attempt.objects.create(message=message, endpoint=endpoint, status_code=500, latency_ms=31,
                           response='{"error": "warehouse loading"}', error="HTTP 500")
    Attempt.objects.create(message=message, endpoint=endpoint, succeeded=True, status_code=200, latency_ms=18,
                           response='{"ok": true}')
    Message.objects.filter(pk=message.pk).update(status=Message.Status.DELIVERED, attempts=2, last_status_code=200,
                                                 last_latency_ms=18, delivered_at=timezone.now())
    Endpoint.objects.create(
        url="https://crm.example.com/hooks", events=["*"], secret="whsec_c2VjcmV0", status=Endpoint.Status.DISABLED,
        disabled_at=timezone.now(),
        disabled_reason="Disabled automatically: message msg_3f2a… (message.sent) failed 8 times in a row over "
                        "27.6 h; last error: No answer within 10 s (ReadTimeout).")

    page.goto(f"{live_server.url}/admin/webhooks/endpoint/")
    expect(page.locator("#result_list")).to_contain_text("Disabled automatically")
    page.screenshot(path=shots / "webhooks-admin-endpoints.png", full_page=True)
    page.get_by_role("link", name="https://crm.example.com/hooks").click()
    expect(page.locator(".messagelist")).to_contain_text("This endpoint is disabled")
    page.screenshot(path=shots / "webhooks-admin-disabled.png", full_page=True)

    page.goto(f"{live_server.url}/admin/webhooks/message/?endpoint__id__exact={endpoint.pk}")
    expect(page.locator("#result_list")).to_contain_text(message.webhook_id)
    page.screenshot(path=shots / "webhooks-admin-log.png", full_page=True)
    page.get_by_role("link", name=str(message.pk), exact=True).click()
    expect(page).to_have_url(re.compile(rf"/admin/webhooks/message/{message.pk}/"))
    expect(page.get_by_text("warehouse loading")).to_be_visible()
    page.screenshot(path=shots / "webhooks-admin-message.png", full_page=True)

    # At 390 px wide the list still reads.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/admin/webhooks/endpoint/")
    page.screenshot(path=shots / "webhooks-admin-endpoints-narrow.png", full_page=True)
