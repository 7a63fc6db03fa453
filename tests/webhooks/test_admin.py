"""Django admin for outgoing webhooks: the endpoint list with its notices, registering with
the secret shown once, the actions, and the delivery log with each message's attempts."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEntry
from customers import timeline
from tests.factories import CustomerFactory
from webhooks import services
from webhooks.models import Attempt, Endpoint, Message

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/switchboard"


@pytest.fixture(autouse=True)
def public_hosts(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []


@pytest.fixture
def staff(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save(update_fields=["is_superuser"])
    client.force_login(admin_user)
    return client


@pytest.fixture
def logged(django_capture_on_commit_callbacks):
    """An endpoint with a delivered message (two attempts logged) and a disabled endpoint."""
    endpoint = services.endpoint_create(url=URL, events=["order_completed"], description="Warehouse", actor="test")
    with django_capture_on_commit_callbacks(execute=True):
        timeline.add(customer=CustomerFactory(), name="order_completed")
    message = Message.objects.get(endpoint=endpoint)
    Attempt.objects.create(message=message, endpoint=endpoint, succeeded=False, status_code=500,
                           latency_ms=12, response="upstream down", error="HTTP 500")
    Attempt.objects.create(message=message, endpoint=endpoint, succeeded=True, status_code=200, latency_ms=8,
                           response='{"ok": true}')
    Message.objects.filter(pk=message.pk).update(status=Message.Status.DELIVERED, attempts=2,
                                                 delivered_at=timezone.now(), last_status_code=200)
    down = services.endpoint_create(url="https://down.example.com/x", events=["*"], actor="test")
    Endpoint.objects.filter(pk=down.pk).update(
        status=Endpoint.Status.DISABLED, disabled_at=timezone.now(),
        disabled_reason="Disabled automatically: message msg_1 failed 8 times in a row.")
    return {"endpoint": endpoint, "message": message, "down": down}


def test_the_endpoint_list_shows_status_events_and_failures(staff, logged, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        page = staff.get(reverse("admin:webhooks_endpoint_changelist"))
    html = page.content.decode()
    assert page.status_code == 200
    assert URL in html and "order_completed" in html
    assert "Disabled automatically: message msg_1 failed 8 times" in html
    assert "Failed attempts (24 h)" in html
    assert logged["endpoint"].secret not in html


def test_registering_shows_the_secret_once_and_refuses_internal_urls(staff):
    add = reverse("admin:webhooks_endpoint_add")
    refused = staff.post(add, {"url": "http://10.1.2.3/hook", "description": "", "events": "message.*"})
    assert refused.status_code == 200 and "internal address" in refused.content.decode()
    refused = staff.post(add, {"url": URL, "description": "", "events": "message."})
    assert "name pattern ending in .*" in refused.content.decode()
    assert not Endpoint.objects.exists()

    saved = staff.post(add, {"url": URL, "description": "BI", "events": "message.*,order_completed"}, follow=True)
    endpoint = Endpoint.objects.get()
    assert endpoint.events == ["message.*", "order_completed"]
    assert f"it will not be shown again: {endpoint.secret}" in saved.content.decode()
    assert endpoint.secret not in staff.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk])).content.decode()
    assert AuditEntry.objects.filter(action="webhook.create", actor="admin:admin").exists()


def test_a_disabled_endpoints_page_says_so_and_the_enable_action_resumes_it(staff, logged):
    down = logged["down"]
    page = staff.get(reverse("admin:webhooks_endpoint_change", args=[down.pk]), follow=True)
    assert "This endpoint is disabled (since " in page.content.decode()
    assert "Disabled automatically: message msg_1" in page.content.decode()

    done = staff.post(reverse("admin:webhooks_endpoint_changelist"),
                      {"action": "enable", "_selected_action": [down.pk]}, follow=True)
    assert "Enabled 1 endpoint." in done.content.decode()
    down.refresh_from_db()
    assert down.status == Endpoint.Status.ENABLED and down.disabled_reason == ""

    staff.post(reverse("admin:webhooks_endpoint_changelist"), {"action": "disable", "_selected_action": [down.pk]})
    down.refresh_from_db()
    assert down.status == Endpoint.Status.DISABLED and "Django admin" in down.disabled_reason


def test_rotating_shows_the_new_secret_once(staff, logged):
    endpoint = logged["endpoint"]
    old = endpoint.secret
    done = staff.post(reverse("admin:webhooks_endpoint_changelist"),
                      {"action": "rotate_secret", "_selected_action": [endpoint.pk]}, follow=True)
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old
    assert endpoint.secret in done.content.decode()
    assert endpoint.secret not in staff.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()


def test_the_delivery_log_lists_filters_and_shows_attempts(staff, logged, django_assert_max_num_queries):
    changelist = reverse("admin:webhooks_message_changelist")
    with django_assert_max_num_queries(8):
        page = staff.get(changelist, {"endpoint__id__exact": logged["endpoint"].pk, "status__exact": "delivered"})
    assert page.status_code == 200 and logged["message"].webhook_id in page.content.decode()
    assert logged["message"].webhook_id not in staff.get(changelist, {"status__exact": "pending"}).content.decode()

    detail = staff.get(reverse("admin:webhooks_message_change", args=[logged["message"].pk])).content.decode()
    assert "upstream down" in detail and "HTTP 500" in detail and "{&quot;ok&quot;: true}" in detail


def test_the_replay_action_sends_the_message_again(staff, logged):
    message = logged["message"]
    staff.post(reverse("admin:webhooks_message_changelist"), {"action": "replay", "_selected_action": [message.pk]})
    message.refresh_from_db()
    assert message.status == Message.Status.PENDING
    assert AuditEntry.objects.filter(action="webhook.replay", actor="admin:admin").exists()


def test_deleting_goes_through_the_service(staff, logged):
    endpoint = logged["endpoint"]
    staff.post(reverse("admin:webhooks_endpoint_delete", args=[endpoint.pk]), {"post": "yes"})
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()
    assert AuditEntry.objects.filter(action="webhook.delete", object_id=str(endpoint.pk)).exists()


def test_searching_the_log_by_type_or_customer(staff, logged):
    changelist = reverse("admin:webhooks_message_changelist")
    message = logged["message"]
    assert message.webhook_id in staff.get(changelist, {"q": "order_completed"}).content.decode()
    assert message.webhook_id in staff.get(changelist, {"q": str(message.customer_id)}).content.decode()
    other = staff.get(changelist, {"q": "not a number"})
    assert other.status_code == 200 and message.webhook_id not in other.content.decode()
