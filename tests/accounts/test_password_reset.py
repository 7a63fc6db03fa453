"""Password reset: the email goes through the configured mailer, its link works, and requests are limited."""

import re

import pytest
from axes.models import AccessAttempt

from customers.models import EmailRequest
from tests.conftest import PASSWORD
from tests.fakes.smtp import FakeSMTPServer

SITE = "https://switchboard.example.com"
HOME = "198.51.100.20"
NEUTRAL = "If an account has that address, we have sent it a link"


@pytest.fixture
def smtp(settings):
    """The configured mailer is an SMTP relay: a real one on loopback."""
    settings.SITE_URL = SITE
    with FakeSMTPServer() as server:
        settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                        "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5}}}
        yield server


def ask_for_reset(client, email, *, ip=HOME):
    response = client.post("/accounts/password_reset/", {"email": email}, REMOTE_ADDR=ip, follow=True)
    assert response.status_code == 200
    assert NEUTRAL in response.content.decode()
    return response


def sign_in(client, password):
    return client.post("/accounts/login/", {"username": "marketer", "password": password}, REMOTE_ADDR=HOME)


def test_a_reset_email_arrives_through_the_mailer_and_its_link_sets_a_new_password(client, marketer, smtp):
    ask_for_reset(client, "Marketer@Example.com")

    (mail,) = smtp.to("marketer@example.com")
    assert mail.message["Subject"] == "Reset your Switchboard password"
    link = re.search(rf"{re.escape(SITE)}(/accounts/reset/\S+/)", mail.text).group(1)

    form = client.get(link, follow=True)
    assert "Choose a new password" in form.content.decode()
    done = client.post(form.redirect_chain[-1][0], {"new_password1": "a brand new passphrase",
                                                    "new_password2": "a brand new passphrase"}, follow=True)
    assert "Password changed" in done.content.decode()

    assert sign_in(client, PASSWORD).status_code == 200  # the old password is refused
    assert sign_in(client, "a brand new passphrase")["Location"] == "/"
    # The link works once.
    assert "This link no longer works" in client.get(link, follow=True).content.decode()


def test_the_fourth_request_for_an_address_within_the_hour_sends_nothing(client, marketer, smtp):
    for n in range(4):
        # From different clients, so only the per-address limit applies.
        ask_for_reset(client, "marketer@example.com", ip=f"198.51.100.{n + 1}")

    assert len(smtp.to("marketer@example.com")) == 3


def test_one_client_gets_ten_requests_an_hour(client, marketer, smtp):
    for n in range(10):
        ask_for_reset(client, f"someone-{n}@example.net")

    ask_for_reset(client, "marketer@example.com")
    assert smtp.to("marketer@example.com") == []

    ask_for_reset(client, "marketer@example.com", ip="192.0.2.50")
    assert len(smtp.to("marketer@example.com")) == 1


def test_the_limits_last_one_window(client, marketer, smtp):
    from datetime import timedelta

    for _ in range(3):
        ask_for_reset(client, "marketer@example.com")
    # An hour goes by.
    for request in EmailRequest.objects.all():
        EmailRequest.objects.filter(pk=request.pk).update(
            requested_at=request.requested_at - timedelta(minutes=61))

    ask_for_reset(client, "marketer@example.com")
    assert len(smtp.to("marketer@example.com")) == 4


def test_an_unknown_address_gets_the_same_answer_as_a_known_one(client, marketer, smtp):
    known = ask_for_reset(client, "marketer@example.com")
    unknown = ask_for_reset(client, "nobody@example.com")

    def page(response):  # the CSRF token and the CSP nonce are new on every response
        return re.sub(r'"X-CSRFToken": "\w+"|nonce="[\w-]+"', "", response.content.decode())

    assert known.redirect_chain == unknown.redirect_chain
    assert page(known) == page(unknown)
    assert smtp.to("nobody@example.com") == []


def test_a_malformed_address_is_refused_on_the_form_and_counts_nothing(client, marketer, smtp):
    response = client.post("/accounts/password_reset/", {"email": "not an address"}, REMOTE_ADDR=HOME)

    assert response.status_code == 422
    assert "Enter a valid email address." in response.content.decode()
    assert EmailRequest.objects.count() == 0
    assert smtp.messages == []


def test_a_new_password_ends_a_sign_in_lockout(client, marketer, smtp):
    for _ in range(5):
        sign_in(client, "wrong")
    assert sign_in(client, PASSWORD).status_code == 429

    ask_for_reset(client, "marketer@example.com")
    link = re.search(rf"{re.escape(SITE)}(/accounts/reset/\S+/)", smtp.to("marketer@example.com")[0].text).group(1)
    form = client.get(link, follow=True)
    client.post(form.redirect_chain[-1][0], {"new_password1": "a brand new passphrase",
                                             "new_password2": "a brand new passphrase"})

    assert not AccessAttempt.objects.filter(username="marketer").exists()
    assert sign_in(client, "a brand new passphrase")["Location"] == "/"


def test_the_login_page_links_to_the_reset(client):
    assert 'href="/accounts/password_reset/"' in client.get("/accounts/login/").content.decode()
