"""The public pages a message links to, driven from a message the platform really rendered:
open pixel, click redirect, one-click unsubscribe (RFC 8058) and the preference centre."""

import html
import logging
import re
import threading
import time as time_module
from datetime import time, timedelta
from urllib.parse import urlsplit

import pytest
from django.core.signing import SignatureExpired
from django.db import connection, connections, transaction
from django.db.models import F
from django.test import Client

from campaigns import dispatch, links
from campaigns.services.lifecycle import campaign_launch
from campaigns.services.messages import message_send
from campaigns.models import Campaign, Delivery, SandboxMessage
from campaigns.queries import campaign_summary
from customers.models import Consent, ConsentState, Event, Subscription
from customers.services.preferences import channel_status_set
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS
from tests.factories import DeviceFactory

PIXEL_SRC = re.compile(r'<img src="([^"]+/t/o/[^"]+\.gif)"')
CLICK_HREF = re.compile(r'href="([^"]+/t/c/[^"]+)"')
PREFERENCES_HREF = re.compile(r'href="([^"]+/p/[^"]+)"')
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def path_of(url: str) -> str:
    return urlsplit(html.unescape(url)).path


def found(pattern: re.Pattern, text: str) -> str:
    match = pattern.search(text)
    assert match, f"{pattern.pattern} not in the message"
    return path_of(match.group(1))


def tampered(path: str) -> str:
    """The same link with one character of its payload changed (the signature no longer matches)."""
    prefix, _, token = path.rpartition("/")
    value, sep, signature = token.partition(":")
    return f"{prefix}/{value[:-1]}{'9' if value[-1] != '9' else '8'}{sep}{signature}"


@pytest.fixture(autouse=True)
def any_hour(settings):
    # Quiet hours would hold marketing back at night; these tests are about what happens after sending.
    settings.QUIET_HOURS = (time(0, 0), time.max)


@pytest.fixture
def sent(audience):
    """An email campaign sent to the audience; ada's rendered email and its delivery."""
    campaign = make_campaign(audience, channels=("email",))
    campaign_launch(campaign=campaign, actor="test")
    assert dispatch.dispatch(budget_seconds=WAIT_SECONDS)["sent"] == 3  # ada, bob, fay
    ada = audience["people"]["ada"]
    delivery = Delivery.objects.get(campaign=campaign, customer=ada, channel="email")
    message = SandboxMessage.objects.get(delivery_id=delivery.pk)
    return {"campaign": campaign, "delivery": delivery, "html": message.rendered["html"], "ada": ada, **audience}


def totals(campaign):
    return campaign_summary(Campaign.objects.get(pk=campaign.pk))["totals"]


def subscribed(customer, topic, channel):
    return Subscription.objects.filter(customer=customer, topic=topic, channel=channel).values_list("subscribed", flat=True).first()


# --- Open pixel ---------------------------------------------------------------------------------


def test_the_pixel_answers_a_gif_and_counts_the_open_once(
    sent, client, django_assert_num_queries, django_assert_max_num_queries
):
    pixel = found(PIXEL_SRC, sent["html"])
    assert client.head(pixel).status_code == 200
    assert totals(sent["campaign"]).get("opened", 0) == 0  # a proxy checking the image is not a reader

    with django_assert_max_num_queries(9):
        response = client.get(pixel)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content.startswith(b"GIF89a") and len(response.content) == 43
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies
    delivery = Delivery.objects.get(pk=sent["delivery"].pk)
    assert delivery.status == "opened" and delivery.opened_at is not None
    assert totals(sent["campaign"])["opened"] == 1

    # Mail clients load the image again and again: a repeat costs one primary-key read.
    with django_assert_num_queries(1):
        again = client.get(pixel)
    assert again.content == response.content
    assert totals(sent["campaign"])["opened"] == 1
    assert Event.objects.filter(customer=sent["ada"], name="message.opened").count() == 1


def test_a_forged_pixel_still_answers_a_gif_and_records_nothing(sent, client):
    pixel = found(PIXEL_SRC, sent["html"])
    for path in (tampered(pixel), "/t/o/nonsense.gif", f"/t/o/{links.sign('abc', links.OPEN_SALT)}.gif",
                 f"/t/o/{links.sign(str(sent['delivery'].pk), links.CLICK_SALT)}.gif"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"] == "image/gif"
    assert Delivery.objects.get(pk=sent["delivery"].pk).opened_at is None
    assert totals(sent["campaign"]).get("opened", 0) == 0


# --- Click redirect -----------------------------------------------------------------------------


def test_a_click_redirects_to_the_original_url_and_records_the_click(sent, client):
    link = found(CLICK_HREF, sent["html"])
    # Whatever the request adds, the destination is the one stored when the message was rendered.
    response = client.get(link, {"url": "https://evil.example/", "next": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/sale"
    delivery = Delivery.objects.get(pk=sent["delivery"].pk)
    assert delivery.status == "clicked" and delivery.clicked_at and delivery.opened_at
    counts = totals(sent["campaign"])
    assert (counts["clicked"], counts["opened"]) == (1, 1)
    client.get(link)
    assert totals(sent["campaign"])["clicked"] == 1


def test_a_tampered_click_link_is_a_404_page_and_records_nothing(sent, client):
    link = found(CLICK_HREF, sent["html"])
    delivery_id = sent["delivery"].pk
    for path in (tampered(link), "/t/c/nonsense", f"/t/c/{links.sign(f'{delivery_id}.999999', links.CLICK_SALT)}",
                 f"/t/c/{links.sign(f'{delivery_id}.1', links.OPEN_SALT)}"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "This link is invalid or has expired" in response.content.decode()
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.clicked_at is None and delivery.status == "sent"
    assert totals(sent["campaign"]).get("clicked", 0) == 0


# --- Unsubscribe --------------------------------------------------------------------------------


def list_unsubscribe(delivery_id: int) -> tuple[str, str]:
    """The List-Unsubscribe headers of the message as the dispatcher renders it for the provider."""
    [message], failures = dispatch.build([delivery_id])
    assert not failures
    url = message.headers["List-Unsubscribe"]
    assert url.startswith("<") and url.endswith(">")
    return path_of(url[1:-1]), message.headers["List-Unsubscribe-Post"]


def test_one_click_unsubscribe_from_the_list_unsubscribe_header(sent):
    ada, newsletter = sent["ada"], sent["topic"]
    path, post_header = list_unsubscribe(sent["delivery"].pk)
    assert post_header == "List-Unsubscribe=One-Click"
    # What a mailbox provider sends (RFC 8058): a bare POST, no cookies, no CSRF token.
    mailbox = Client(enforce_csrf_checks=True)
    response = mailbox.post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert "You are unsubscribed" in response.content.decode()
    assert not response.cookies

    assert subscribed(ada, newsletter, "email") is False
    assert subscribed(ada, newsletter, "sms") is True  # only the topic × channel the message came by
    sub = Subscription.objects.get(customer=ada, topic=newsletter, channel="email")
    assert sub.source == "one-click-unsubscribe"
    change = Event.objects.get(customer=ada, name="subscription.changed")
    assert change.properties["subscribed"] is False and change.properties["topic"] == "newsletter"
    assert change.properties["channel"] == "email" and change.properties["source"] == "one-click-unsubscribe"
    assert Delivery.objects.get(pk=sent["delivery"].pk).status == "unsubscribed"
    assert totals(sent["campaign"])["unsubscribed"] == 1

    # Providers retry: the second POST is harmless.
    again = Client(enforce_csrf_checks=True).post(path, {"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert Event.objects.filter(customer=ada, name="subscription.changed").count() == 1
    assert totals(sent["campaign"])["unsubscribed"] == 1

    # The next campaign on the topic passes her by.
    spring = make_campaign(sent, channels=("email",), name="Spring sale")
    campaign_launch(campaign=spring, actor="test")
    rows = {d.customer_id: (d.status, d.reason) for d in Delivery.objects.filter(campaign=spring)}
    assert rows[ada.pk] == ("suppressed", "not_subscribed")
    assert rows[sent["people"]["bob"].pk] == ("planned", "")


def test_opening_the_unsubscribe_page_does_not_unsubscribe(sent):
    """Link scanners fetch every link in a message; only the POST unsubscribes."""
    ada, newsletter = sent["ada"], sent["topic"]
    path, _ = list_unsubscribe(sent["delivery"].pk)
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(path)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Unsubscribe ada@example.com from Newsletter emails?" in text
    assert re.search(r'href="/p/[^"]+"', text), "the page links the preference centre"
    browser.head(path)
    assert subscribed(ada, newsletter, "email") is True
    assert not Event.objects.filter(customer=ada, name="subscription.changed").exists()
    assert Delivery.objects.get(pk=sent["delivery"].pk).status == "sent"

    # The page's own button: a plain form POST, without a CSRF token.
    done = browser.post(path)
    assert done.status_code == 200 and "You are unsubscribed" in done.content.decode()
    assert subscribed(ada, newsletter, "email") is False
    assert Subscription.objects.get(customer=ada, topic=newsletter, channel="email").source == "unsubscribe-page"
    assert "You are already unsubscribed" in browser.get(path).content.decode()


def test_a_bad_unsubscribe_link_is_a_404_page_and_writes_nothing(sent, client):
    path, _ = list_unsubscribe(sent["delivery"].pk)
    before = (Subscription.objects.count(), Event.objects.count())
    for bad in (tampered(path), "/u/nonsense", "/u/a:b:c", f"/u/{links.sign('99999999', links.UNSUBSCRIBE_SALT)}",
                f"/u/{links.sign(str(sent['delivery'].pk), links.OPEN_SALT)}",
                f"/u/{links.sign('99999999999999999999999', links.UNSUBSCRIBE_SALT)}"):
        for response in (client.get(bad), client.post(bad, {"List-Unsubscribe": "One-Click"})):
            assert response.status_code == 404, bad
            assert "This link is invalid or has expired" in response.content.decode()
    assert (Subscription.objects.count(), Event.objects.count()) == before
    assert subscribed(sent["ada"], sent["topic"], "email") is True


def test_unsubscribing_from_a_transactional_message_explains_instead(sent, topics):
    ada = sent["ada"]
    result = message_send(customer=ada, topic=topics["alerts"], channel="email", actor="test",
                                   content={"subject": "Your password was changed", "html": "<p>It was you?</p>"})
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    message = SandboxMessage.objects.get(delivery_id=result.delivery.pk)
    assert "/u/" not in message.rendered["html"]  # receipts carry no unsubscribe link or header
    path = path_of(links.unsubscribe_url(result.delivery.pk))
    for response in (Client().get(path), Client(enforce_csrf_checks=True).post(path, {"List-Unsubscribe": "One-Click"})):
        text = response.content.decode()
        assert response.status_code == 200
        assert "Alerts messages are not marketing" in text
        assert re.search(r'href="/p/[^"]+"', text)
    assert not Event.objects.filter(customer=ada, name="subscription.changed").exists()
    assert Delivery.objects.get(pk=result.delivery.pk).status == "sent"


# --- Preference centre --------------------------------------------------------------------------


def checked_cells(text: str) -> set[str]:
    return set(re.findall(r'name="sub" value="([^"]+)"[^>]*? checked', text))


def all_cells(text: str) -> set[str]:
    return set(re.findall(r'name="sub" value="([^"]+)"', text))


def test_the_preference_centre_shows_the_matrix_and_saves_changes(sent, topics):
    ada, newsletter = sent["ada"], topics["newsletter"]
    path = found(PREFERENCES_HREF, sent["html"])
    browser = Client(enforce_csrf_checks=True)  # a visitor from an email: no session, no cookies yet
    page = browser.get(path)
    assert page.status_code == 200
    text = page.content.decode()
    assert "ada@example.com" in text and "bob@example.com" not in text
    # Marketing topics × the channels she has an address for; no push without a device, no receipts.
    assert all_cells(text) == {f"{topic}:{channel}" for topic in ("newsletter", "coupons", "product-updates")
                               for channel in ("email", "sms", "whatsapp", "voice")}
    assert checked_cells(text) == {"newsletter:email", "newsletter:sms"}
    assert "Unsubscribe from all marketing" in text
    token = CSRF_INPUT.search(text).group(1)

    # The form is CSRF-protected, and works for an anonymous visitor with the cookie the page set.
    assert Client(enforce_csrf_checks=True).post(path, {"sub": ["coupons:sms"]}).status_code == 403
    saved = browser.post(path, {"csrfmiddlewaretoken": token, "sub": ["newsletter:email", "coupons:sms"]}, follow=True)
    assert saved.status_code == 200
    assert "Your preferences are saved." in saved.content.decode()
    assert checked_cells(saved.content.decode()) == {"newsletter:email", "coupons:sms"}
    assert subscribed(ada, newsletter, "email") is True
    assert subscribed(ada, newsletter, "sms") is False
    assert subscribed(ada, topics["coupons"], "sms") is True
    # Boxes left as they were write nothing: no rows for cells never chosen, no timeline noise.
    assert Subscription.objects.filter(customer=ada).count() == 3
    changes = Event.objects.filter(customer=ada, name="subscription.changed")
    assert {(e.properties["topic"], e.channel, e.properties["subscribed"]) for e in changes} == {
        ("newsletter", "sms", False), ("coupons", "sms", True)}
    assert {(e.source, e.properties["reason"]) for e in changes} == {("preference-centre", "changed in the preference centre")}

    everything = browser.post(path, {"csrfmiddlewaretoken": token, "sub": ["coupons:sms"], "unsubscribe_all": "1"}, follow=True)
    assert "You are unsubscribed from all marketing messages" in everything.content.decode()
    assert checked_cells(everything.content.decode()) == set()
    assert not Subscription.objects.filter(customer=ada, subscribed=True).exists()
    # Preferences only: the consent ledger is the customer's own record and stays untouched.
    assert not Consent.objects.filter(customer=ada).exists() and not ConsentState.objects.filter(customer=ada).exists()

    spring = make_campaign(sent, channels=("email", "sms"), name="Spring sale")
    campaign_launch(campaign=spring, actor="test")
    assert set(Delivery.objects.filter(campaign=spring, customer=ada).values_list("reason", flat=True)) == {"not_subscribed"}


def test_the_preference_centre_columns_follow_the_customers_addresses(sent, client):
    fay = sent["people"]["fay"]  # email only
    path = path_of(links.preferences_url(fay.pk))
    text = client.get(path).content.decode()
    assert {cell.split(":")[1] for cell in all_cells(text)} == {"email"}
    DeviceFactory(customer=fay)
    channel_status_set(customer_ids={fay.pk}, channel="email", status="complained", reason="spam", source="test")
    text = client.get(path).content.decode()
    assert {cell.split(":")[1] for cell in all_cells(text)} == {"email", "push"}
    assert "you reported one of our messages as spam" in text


@pytest.mark.parametrize("method", ["get", "post"])
def test_bad_tokens_never_fail_with_a_server_error(sent, client, method):
    delivery_id, customer_id = sent["delivery"].pk, sent["ada"].pk
    preferences = path_of(links.preferences_url(customer_id))
    bad_tokens = ["nonsense", "a:b", ":", "1:", "%00", "x" * 3000, "12.34:abc", "1.2.3:zz",
                  links.sign("abc", links.PREFERENCES_SALT), links.sign("-1", links.PREFERENCES_SALT),
                  links.sign("99999999", links.PREFERENCES_SALT), links.sign(str(customer_id), links.UNSUBSCRIBE_SALT)]
    before = (Subscription.objects.count(), Event.objects.count())
    for token in bad_tokens:
        for path in (f"/t/c/{token}", f"/u/{token}", f"/p/{token}"):
            response = getattr(client, method)(path)
            # POST to the click redirect is refused (405); everything else is the invalid-link page.
            assert response.status_code == (405 if method == "post" and path.startswith("/t/c/") else 404), path
            if response.status_code == 404:
                assert "This link is invalid or has expired" in response.content.decode()
        assert client.get(f"/t/o/{token}.gif").status_code == 200
    assert tampered(preferences) != preferences
    assert client.get(tampered(preferences)).status_code == 404
    assert (Subscription.objects.count(), Event.objects.count()) == before
    assert Delivery.objects.get(pk=delivery_id).status == "sent"



@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_a_real_browser_from_the_email_to_unsubscribed_and_back(sent, topics, live_server, page, shots):
    """Chromium, with its own cookie and Origin rules, from the links in the message."""
    ada = sent["ada"]
    path, _ = list_unsubscribe(sent["delivery"].pk)
    page.goto(live_server.url + path)
    page.get_by_role("heading", name="Unsubscribe ada@example.com from Newsletter emails?").wait_for()
    page.screenshot(path=shots / "tracking-unsubscribe.png", full_page=True)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_text("We will no longer send Newsletter emails to ada@example.com.").wait_for()
    assert subscribed(ada, topics["newsletter"], "email") is False

    page.get_by_role("link", name="Manage your preferences").click()
    page.get_by_role("heading", name="Your message preferences").wait_for()
    assert not page.get_by_label("Newsletter by Email").is_checked()
    assert page.get_by_label("Newsletter by SMS").is_checked()
    page.get_by_label("Coupons by Email").check()
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_text("Your preferences are saved.").wait_for()
    page.screenshot(path=shots / "tracking-preferences.png", full_page=True)
    assert page.get_by_label("Coupons by Email").is_checked()
    assert subscribed(ada, topics["coupons"], "email") is True


@pytest.mark.django_db(transaction=True)
def test_simultaneous_first_opens_count_once(sent, caplog):
    """Image proxies fetch the pixel in parallel: two first hits racing still make one open."""
    pixel = found(PIXEL_SRC, sent["html"])
    answers = []

    def load():
        try:
            answers.append(Client().get(pixel).status_code)
        finally:
            connections.close_all()

    with transaction.atomic():
        # Hold the delivery row so both requests get past the "already opened?" read and queue up.
        Delivery.objects.select_for_update().get(pk=sent["delivery"].pk)
        threads = [threading.Thread(target=load) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time_module.monotonic() + WAIT_SECONDS
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_stat_clear_snapshot()")  # the view is read once per transaction otherwise
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0] >= 2:
                    break
                assert time_module.monotonic() < deadline, f"the two requests never queued up: {answers}"
                time_module.sleep(0.02)
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert answers == [200, 200]
    hidden = [r.getMessage() for r in caplog.records if r.name == "campaigns.tracking" and r.levelno >= logging.ERROR]
    assert not hidden, f"the pixel hid an error: {hidden}"
    assert totals(sent["campaign"])["opened"] == 1
    assert Event.objects.filter(customer=sent["ada"], name="message.opened").count() == 1


# --- Expiring preference-centre links, and a fresh one by email ----------------------------------


def link_made_days_ago(customer_id: int, days: float) -> str:
    """The preference-centre path a message sent ``days`` ago carried (a genuine, timestamped link)."""
    from django.core import signing

    made = signing.b62_encode(int(time_module.time() - days * 86400))
    token = signing.Signer(salt=links.PREFERENCES_SALT).sign(f"{customer_id}:{made}")
    return f"/p/{token}"


@pytest.fixture
def mailbox(settings):
    """A real SMTP server on loopback as the default mailer; the link task runs at once."""
    from django_q.conf import Conf

    from tests.fakes.smtp import FakeSMTPServer

    settings.SITE_URL = "https://switchboard.example.com"
    settings.DEFAULT_FROM_EMAIL = "Shop <news@shop.example.com>"
    with FakeSMTPServer() as server:
        settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                        "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5}}}
        sync, Conf.SYNC = Conf.SYNC, True
        try:
            yield server
        finally:
            Conf.SYNC = sync


def wait_for_mail(server, address: str, count: int = 1, timeout: float = 5.0) -> list:
    deadline = time_module.monotonic() + timeout
    while len(server.to(address)) < count and time_module.monotonic() < deadline:
        time_module.sleep(0.02)
    return server.to(address)


def test_a_preference_link_from_a_message_expires_and_the_old_unsigned_form_is_refused(sent, client, settings):
    ada = sent["ada"]
    settings.PREFERENCES_LINK_MAX_AGE = timedelta(days=30)
    assert "ada@example.com" in client.get(link_made_days_ago(ada.pk, 29)).content.decode()

    expired = client.get(link_made_days_ago(ada.pk, 31))
    assert expired.status_code == 410
    text = expired.content.decode()
    assert "This link has expired" in text and "ada@example.com" not in text and "Email me a link" in text
    # What a key read from the repository used to forge, and what old messages carry: an
    # untimed signature, which never expired. It opens nothing now.
    for forged in (signing_sign(str(ada.pk), "switchboard.preferences"), links.sign(str(ada.pk), links.PREFERENCES_SALT)):
        refused = client.get(f"/p/{forged}")
        assert refused.status_code == 404 and "ada@example.com" not in refused.content.decode()
        assert "Email me a link" in refused.content.decode()


def signing_sign(value: str, salt: str) -> str:
    from django.core import signing

    return signing.Signer(salt=salt).sign(value)


def test_new_messages_carry_a_timestamped_preference_link(sent, settings):
    path = found(PREFERENCES_HREF, sent["html"])
    token = path.rsplit("/", 1)[1]
    assert links.preferences_unsign(token) == str(sent["ada"].pk)
    settings.PREFERENCES_LINK_MAX_AGE = timedelta(seconds=-1)  # every link made before now is too old
    with pytest.raises(SignatureExpired):
        links.preferences_unsign(token)


def test_an_expired_link_gets_a_fresh_one_by_email_that_opens_the_centre(sent, mailbox, settings):
    ada = sent["ada"]
    settings.PREFERENCES_LINK_MAX_AGE = timedelta(days=30)
    browser = Client(enforce_csrf_checks=True)  # someone opening an old email: no session yet
    page = browser.get(link_made_days_ago(ada.pk, 45))
    token = CSRF_INPUT.search(page.content.decode()).group(1)

    answer = browser.post("/p/", {"csrfmiddlewaretoken": token, "email": "  Ada@Example.com "})
    assert answer.status_code == 200
    assert "If we know this address, we have sent it a link" in answer.content.decode()
    (mail,) = wait_for_mail(mailbox, "ada@example.com")
    assert mail.message["From"] == "Shop <news@shop.example.com>"
    assert "preferences" in mail.message["Subject"]
    fresh = re.search(r"https://switchboard\.example\.com(/p/\S+)", mail.text).group(1)
    centre = Client().get(fresh)
    assert centre.status_code == 200
    assert "Your message preferences" in centre.content.decode() and "ada@example.com" in centre.content.decode()


def test_asking_for_a_link_never_tells_whether_the_address_is_known(sent, mailbox, client):
    known = client.post("/p/", {"email": "ada@example.com"})
    unknown = client.post("/p/", {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200

    def words(response):
        return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())

    assert words(known) == words(unknown)
    assert len(wait_for_mail(mailbox, "ada@example.com")) == 1
    assert mailbox.to("nobody@example.com") == []


def test_links_by_email_are_limited_per_address_and_bad_addresses_are_a_form_error(sent, mailbox, client, settings):
    settings.PREFERENCES_LINK_REQUESTS_PER_HOUR = 2
    for _ in range(4):
        assert client.post("/p/", {"email": "ada@example.com"}).status_code == 200
    assert len(wait_for_mail(mailbox, "ada@example.com", count=2)) == 2
    time_module.sleep(0.2)  # the limit holds: nothing more is on its way
    assert len(mailbox.to("ada@example.com")) == 2

    for bad in ("", "not-an-address", "a" * 300 + "@example.com"):
        refused = client.post("/p/", {"email": bad})
        assert refused.status_code == 400
        assert 'class="field-error"' in refused.content.decode()
        assert "If we know this address" not in refused.content.decode()
    assert len(mailbox.to("ada@example.com")) == 2


def test_an_old_unsubscribe_link_still_works_but_no_longer_opens_the_centre(sent, client, settings):
    """Unsubscribe links never expire (RFC 8058 one-click must keep working); the way on to
    the preference centre from them does, like the centre's own links."""
    delivery = sent["delivery"]
    path, _ = list_unsubscribe(delivery.pk)
    Delivery.objects.filter(pk=delivery.pk).update(sent_at=F("sent_at") - timedelta(days=400),
                                                   created_at=F("created_at") - timedelta(days=400))
    page = client.get(path).content.decode()
    assert "Unsubscribe ada@example.com from Newsletter emails?" in page
    assert 'href="/p/"' in page
    response = Client(enforce_csrf_checks=True).post(path, {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and "You are unsubscribed" in response.content.decode()
    assert subscribed(sent["ada"], sent["topic"], "email") is False
