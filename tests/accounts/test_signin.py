"""Signing in: repeated failures lock the account out, and every sign-in lands in the audit trail."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command

from core.models import AuditEntry
from tests.conftest import PASSWORD

OFFICE = "203.0.113.7"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"


def sign_in(client, username, password, *, ip=OFFICE, path="/accounts/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=ip, HTTP_USER_AGENT=BROWSER)


def signed_in(response) -> bool:
    return response.status_code == 302 and "/login/" not in response["Location"]


def assert_locked_out(response):
    assert response.status_code == 429
    page = response.content.decode()
    assert "Sign-in paused" in page and "15 minutes" in page
    assert 'class="auth-card"' in page  # the site's own page, not axes' plain text


def test_forty_wrong_passwords_lock_the_account_so_the_right_one_no_longer_signs_in(client, marketer):
    for attempt in range(1, 41):
        response = sign_in(client, "marketer", f"guess-{attempt}")
        if attempt < 5:
            assert response.status_code == 200
            assert "correct username and password" in response.content.decode()
        else:
            assert_locked_out(response)

    assert_locked_out(sign_in(client, "marketer", PASSWORD))
    assert client.get("/").status_code == 302  # still signed out


def test_guesses_from_many_addresses_lock_the_account_too(client, marketer):
    for n in range(5):
        sign_in(client, "marketer", "wrong", ip=f"198.51.100.{n + 1}")

    assert_locked_out(sign_in(client, "marketer", PASSWORD, ip="198.51.100.99"))


def test_a_colleague_behind_the_same_address_still_signs_in(client, marketer, support):
    for _ in range(5):
        sign_in(client, "marketer", "wrong")

    assert signed_in(sign_in(client, "support", PASSWORD))


def test_x_forwarded_for_from_a_client_is_not_taken_as_its_address(client, marketer):
    """Only a trusted proxy (uvicorn's FORWARDED_ALLOW_IPS) may say where a request came from."""
    for n in range(5):
        client.post("/accounts/login/", {"username": "marketer", "password": "wrong"},
                    REMOTE_ADDR=OFFICE, HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}")

    assert {entry.details["ip"] for entry in AuditEntry.objects.filter(action="user.login_failed")} == {OFFICE}
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {OFFICE}


def test_after_the_cool_off_the_right_password_signs_in_again(client, marketer):
    for _ in range(5):
        sign_in(client, "marketer", "wrong")
    assert_locked_out(sign_in(client, "marketer", PASSWORD))

    # Fifteen minutes go by.
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))

    assert signed_in(sign_in(client, "marketer", PASSWORD))


def test_retrying_during_the_lockout_does_not_extend_it(client, marketer):
    for _ in range(5):
        sign_in(client, "marketer", "wrong")
    locked_at = AccessAttempt.objects.get().attempt_time

    for _ in range(3):
        assert_locked_out(sign_in(client, "marketer", "still wrong"))

    assert AccessAttempt.objects.get().attempt_time == locked_at


def test_django_admin_sign_in_is_throttled_too(client, admin_user):
    for attempt in range(1, 6):
        response = sign_in(client, "admin", "wrong", path="/admin/login/?next=/admin/")
    assert_locked_out(response)

    assert_locked_out(sign_in(client, "admin", PASSWORD, path="/admin/login/?next=/admin/"))
    assert client.get("/admin/").status_code == 302


def test_an_admin_unlocks_an_account_in_django_admin(client, marketer, admin_user):
    from django.test import Client

    for _ in range(5):
        sign_in(client, "marketer", "wrong")

    admin = Client()
    admin.force_login(admin_user)
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "marketer" in listing.content.decode()
    attempt = AccessAttempt.objects.get()
    admin.post("/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": [attempt.pk],
                                              "post": "yes"})

    assert signed_in(sign_in(client, "marketer", PASSWORD))


def test_the_axes_reset_command_unlocks_an_account(client, marketer):
    for _ in range(5):
        sign_in(client, "marketer", "wrong")

    call_command("axes_reset_username", "marketer")

    assert signed_in(sign_in(client, "marketer", PASSWORD))


def test_a_success_clears_earlier_typos(client, marketer):
    for _ in range(4):
        sign_in(client, "marketer", "wrong")
    assert signed_in(sign_in(client, "marketer", PASSWORD))
    client.post("/accounts/logout/")

    for _ in range(4):
        sign_in(client, "marketer", "wrong")
    assert signed_in(sign_in(client, "marketer", PASSWORD))


def test_sign_in_sign_out_and_failures_are_in_the_audit_trail_without_the_password(client, marketer):
    sign_in(client, "marketer", "hunter2-wrong")
    sign_in(client, "nobody", "hunter3-wrong")
    assert signed_in(sign_in(client, "marketer", PASSWORD))
    client.post("/accounts/logout/", REMOTE_ADDR=OFFICE, HTTP_USER_AGENT=BROWSER)

    entries = list(AuditEntry.objects.filter(object_type="user").order_by("id"))
    assert [(e.action, e.actor) for e in entries] == [
        ("user.login_failed", "marketer"),
        ("user.login_failed", "nobody"),
        ("user.logged_in", "marketer"),
        ("user.logged_out", "marketer"),
    ]
    for entry in entries:
        assert entry.details["ip"] == OFFICE
        assert entry.details["user_agent"] == BROWSER
    assert entries[2].object_id == entries[3].object_id == str(marketer.pk)
    assert entries[0].details["locked_out"] is False
    recorded = str([(e.actor, e.details) for e in AuditEntry.objects.all()])
    assert "hunter" not in recorded and PASSWORD not in recorded


def test_a_refused_attempt_while_locked_out_is_audited_as_such(client, marketer):
    for _ in range(6):
        sign_in(client, "marketer", "wrong")

    flags = list(AuditEntry.objects.filter(action="user.login_failed").order_by("id")
                 .values_list("details__locked_out", flat=True))
    assert flags == [False, False, False, False, True, True]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_lockout_page_is_shown_under_asgi_too(async_client, marketer):
    """uvicorn runs the middleware chain asynchronously, a separate path in axes."""
    for _ in range(5):
        response = await async_client.post("/accounts/login/", {"username": "marketer", "password": "wrong"})
    assert_locked_out(response)
    assert_locked_out(await async_client.post("/accounts/login/", {"username": "marketer", "password": PASSWORD}))
