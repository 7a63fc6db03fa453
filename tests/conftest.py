import os

import pytest

from customers.services import api_keys
from customers.roles import ADMIN, MARKETER, SUPPORT
from tests.factories import CustomerFactory, TopicFactory, UserFactory

PASSWORD = "correct horse battery staple"

# How long any test waits for something to happen (a page to change, a socket message, a
# server to start) before it fails. Waits end as soon as their condition holds, so this
# only costs time when a test is failing; it is generous so that a loaded machine (CI,
# other jobs on the same cores) slows the suite down without failing it.
WAIT_SECONDS = 30
WAIT_MS = WAIT_SECONDS * 1000


@pytest.fixture(autouse=True)
def sending_allowed_all_day(settings):
    """Quiet hours would defer marketing sends when the suite runs at night; tests about
    quiet hours set them explicitly."""
    from datetime import time

    settings.QUIET_HOURS = (time(0, 0), time.max)


@pytest.fixture
def marketer(db):
    return UserFactory(username="marketer", roles=[MARKETER])


@pytest.fixture
def support(db):
    return UserFactory(username="support", roles=[SUPPORT])


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", roles=[ADMIN], is_staff=True)


@pytest.fixture
def outsider(db):
    """Signed in, but holds no role: refused everywhere."""
    return UserFactory(username="outsider")


@pytest.fixture
def topics(db):
    return {
        "newsletter": TopicFactory(key="newsletter", name="Newsletter"),
        "coupons": TopicFactory(key="coupons", name="Coupons"),
        "product-updates": TopicFactory(key="product-updates", name="Product updates"),
        "alerts": TopicFactory(key="alerts", name="Alerts", is_transactional=True),
    }


@pytest.fixture
def customer(db):
    return CustomerFactory(email="ada@example.com", first_name="Ada", last_name="Lovelace", external_id="crm-ada")


@pytest.fixture
def api_key(db):
    _, raw = api_keys.api_key_create(name="tests")
    return raw


@pytest.fixture
def api(client, api_key):
    """A JSON client for /api/v1 with a valid bearer key."""

    class Api:
        headers = {"Authorization": f"Bearer {api_key}"}

        def get(self, path, **params):
            return client.get(f"/api/v1{path}", params, headers=self.headers)

        def post(self, path, data=None, *, raw=None):
            import json

            body = raw if raw is not None else json.dumps(data)
            return client.post(f"/api/v1{path}", body, content_type="application/json", headers=self.headers)

        def put(self, path, data):
            import json

            return client.put(f"/api/v1{path}", json.dumps(data), content_type="application/json", headers=self.headers)

        def delete(self, path, data=None):
            import json

            return client.delete(
                f"/api/v1{path}", json.dumps(data or {}), content_type="application/json", headers=self.headers
            )

    return Api()


@pytest.fixture(scope="session", autouse=True)
def channel_layer_on_test_database(django_db_setup, django_db_blocker):
    """channels-postgres keeps its own copy of the database settings: point it at the test database."""
    from channels.layers import channel_layers
    from django.conf import settings
    from django.db import connection

    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    if "NAME" in config:
        config["NAME"] = connection.settings_dict["NAME"]
        channel_layers.backends.clear()
    yield
    # A test that served opens started this process's drainer thread; it must not look for
    # queued hits in a database that is about to be dropped.
    from campaigns.engagement import drainer

    drainer.stop()
    # The layer keeps LISTEN connections open; close them so the test database can be dropped.
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# --- Headless Chromium (browser tests) ---------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _is_console_error(message) -> bool:
    # Refused input answers 422 with the form and its errors, by design; the browser logs it.
    if message.type != "error" or "status of 422" in message.text:
        return False
    # Django's live_server speaks WSGI only: live pages cannot open their websocket there.
    # The live-dashboard browser tests run a real ASGI server and check the connection.
    if "/ws/dashboards/" in message.text and "Unexpected response code: 404" in message.text:
        return False
    if message.text == "[object Event]":  # htmx's ws extension reporting that same failed handshake
        return False
    return True


CSP_PREFIX = "CSP violation:"
CSP_REPORTER = f"""
document.addEventListener("securitypolicyviolation", function (event) {{
  console.error("{CSP_PREFIX} " + event.effectiveDirective + " blocked " + (event.blockedURI || "inline")
                + " at " + event.sourceFile + ":" + event.lineNumber + " (" + event.sample + ")");
}});
"""


def new_context(browser):
    """A browser context whose every action and navigation waits up to WAIT_SECONDS."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    # Anything the Content-Security-Policy blocks (in the page or its frames) is a failure.
    context.add_init_script(CSP_REPORTER)
    return context


@pytest.fixture
def page(monkeypatch):
    """A page in the system Chromium (never a downloaded browser); fails the test on any JS error."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser") or os.environ.get("CHROMIUM_PATH")
    if not executable:
        pytest.fail("Chromium is needed for the browser tests: run `make chromium` or set CHROMIUM_PATH.")
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls the
    # test makes between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        # expect() has a limit of its own (5 s by default), separate from the context's.
        expect.set_options(timeout=WAIT_MS)
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        page = new_context(browser).new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if _is_console_error(message) else None)
        yield page
        browser.close()
    violations = [error for error in errors if error.startswith(CSP_PREFIX)]
    assert violations == [], f"The Content-Security-Policy blocked something: {violations}"
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def shots(tmp_path):
    """Where browser tests save screenshots: SCREENSHOT_DIR, or the test's temporary directory."""
    from pathlib import Path

    directory = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
