"""Security defaults: the secret key, production's HTTPS and headers, the Content-Security-Policy,
and `check --deploy` with the environment the README's production section gives."""

import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from config import secret_key
from tests.factories import CustomerFactory

BASE_DIR = Path(__file__).resolve().parent.parent
PUBLISHED = "insecure-development-key-set-SECRET_KEY-in-production"


def production_env(**extra) -> dict:
    """The environment of the README's production deployment section (Redis named, not needed here)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DEBUG", "SECRET_KEY", "SITE_URL",
                                                                                 "ALLOWED_HOSTS", "SECURE_", "EMAIL_",
                                                                                 "ANYMAIL_", "REDIS_URL"))}
    env.update({
        "DATABASE_URL": os.environ.get("DATABASE_URL") or settings_database_url(),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "switchboard.example.com",
        "SITE_URL": "https://switchboard.example.com",
        "PYTHONWARNINGS": "ignore",
    })
    env.update(extra)
    return env


def settings_database_url() -> str:
    from psycopg.conninfo import make_conninfo

    db = settings.DATABASES["default"]
    return make_conninfo(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
                         port=str(db["PORT"] or ""))


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


# --- The secret key -------------------------------------------------------------------------------


def test_each_installation_generates_its_own_private_key_on_first_run(tmp_path):
    path = tmp_path / ".data" / "secret_key"
    key = secret_key.installation_key(path)
    assert len(key) >= 50 and secret_key.weakness(key) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # readable by its owner only
    assert secret_key.installation_key(path) == key  # read back on later runs
    assert secret_key.installation_key(tmp_path / "other" / "secret_key") != key
    # The running settings (the tests, `make run`) never use a key published in the repository.
    assert settings.SECRET_KEY not in secret_key.PUBLISHED_KEYS and secret_key.weakness(settings.SECRET_KEY) is None


def test_forging_a_link_with_the_published_key_opens_nothing(client, db):
    """What anyone could do with the key that was in the repository: sign a customer id."""
    from django.core import signing

    ada = CustomerFactory(email="ada@example.com", phone="+14155550123")
    for salt in ("switchboard.preferences", "switchboard.preferences.timestamped"):
        for forge in (signing.Signer(key=PUBLISHED, salt=salt).sign,
                      signing.TimestampSigner(key=PUBLISHED, salt=salt).sign):
            response = client.get(f"/p/{forge(str(ada.pk))}")
            assert response.status_code == 404
            assert "ada@example.com" not in response.content.decode() and "+14155550123" not in response.content.decode()


@pytest.mark.parametrize("key, why", [
    ("", "SECRET_KEY must be set"),
    (PUBLISHED, "published in Switchboard's source code"),
    ("django-insecure-" + "x1y2z3" * 10, "marked insecure"),
    ("short-but-random-8fK2", "use at least 50"),
    ("ab" * 40, "fewer than 5 different characters"),
])
def test_production_refuses_to_start_with_a_missing_or_weak_key(key, why):
    result = run(["manage.py", "check"], production_env(SECRET_KEY=key))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and why in result.stderr


# --- Provider webhooks in production ----------------------------------------------------------


def test_production_with_an_esp_and_no_webhook_secret_fails_the_deploy_check_and_warns_at_startup():
    env = production_env(EMAIL_PROVIDER="django", EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
                         ANYMAIL_SETTINGS='{"POSTMARK_SERVER_TOKEN": "token"}')
    started = run(["manage.py", "check"], env)  # any process: web server, workers, commands
    assert started.returncode == 0
    assert "ANYMAIL_WEBHOOK_SECRET is not set" in started.stderr and "refuse every call" in started.stderr
    deploy = run(["manage.py", "check", "--deploy"], env)
    assert deploy.returncode != 0 and "switchboard.E001" in deploy.stderr
    protected = run(["manage.py", "check", "--deploy"], {**env, "ANYMAIL_WEBHOOK_SECRET": "esp:" + secrets.token_hex(16)})
    assert protected.returncode == 0, protected.stderr
    assert "ANYMAIL_WEBHOOK_SECRET" not in protected.stderr


# --- Production: HTTPS, HSTS, headers, check --deploy ---------------------------------------------

PRODUCTION_REQUESTS = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from django.test import Client
client = Client(HTTP_HOST="switchboard.example.com")
plain = client.get("/accounts/login/")
print("plain", plain.status_code, plain.get("Location"))
secure = client.get("/accounts/login/", secure=True)
print("secure", secure.status_code)
for name in ("Strict-Transport-Security", "Content-Security-Policy", "Permissions-Policy", "X-Frame-Options"):
    print(name + ":", secure.get(name))
"""


def test_production_redirects_to_https_and_sends_hsts_csp_and_permissions_policy():
    result = run(["-c", PRODUCTION_REQUESTS], production_env())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "plain 301 https://switchboard.example.com/accounts/login/" in out
    assert "secure 200" in out
    hsts = re.search(r"Strict-Transport-Security: (.*)", out).group(1)
    assert re.match(r"max-age=\d{8}", hsts) and "includeSubDomains" in hsts
    csp = re.search(r"Content-Security-Policy: (.*)", out).group(1)
    assert "script-src 'self' 'nonce-" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "connect-src 'self' wss://switchboard.example.com" in csp
    assert "camera=()" in re.search(r"Permissions-Policy: (.*)", out).group(1)


def test_check_deploy_with_the_documented_production_environment_reports_nothing():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


# --- The Content-Security-Policy on our own pages --------------------------------------------------

SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b([^>]*)>", re.I)
INLINE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\s(style|on[a-z]+)\s*=", re.I)


def assert_nothing_inline_without_the_nonce(response):
    page = response.content.decode()
    policy = response["Content-Security-Policy"]
    # The nonce is made only when a page uses it; without one, nothing inline may be there at all.
    nonce = (re.search(r"'nonce-([^']+)'", policy) or [None, "(no nonce)"])[1]
    for tag, attributes in SCRIPT_OR_STYLE.findall(page):
        if tag.lower() == "script" and ("src=" in attributes or 'type="application/json"' in attributes):
            continue  # files from 'self', and data the browser never runs
        assert f'nonce="{nonce}"' in attributes, f"<{tag}{attributes}> without the nonce on {response.request['PATH_INFO']}"
    assert not INLINE_ATTRIBUTE.search(page), INLINE_ATTRIBUTE.search(page).group(0)


def test_every_page_sends_the_policy_and_nothing_inline_slips_past_it(client, marketer, customer, topics):
    from campaigns import links
    from segments.services import segment_create

    segment = segment_create(name="Everyone", static=True, actor="test")
    anonymous = ["/accounts/login/", links.preferences_url(customer.pk).removeprefix(settings.SITE_URL), "/p/"]
    for path in anonymous:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Permissions-Policy"].startswith("accelerometer=()")
        assert_nothing_inline_without_the_nonce(response)
    client.force_login(marketer)
    for path in ["/", "/customers/", f"/customers/{customer.pk}/", "/segments/", f"/segments/{segment.pk}/",
                 "/segments/new/", "/campaigns/", "/campaigns/new/", "/campaigns/outbox/"]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert_nothing_inline_without_the_nonce(response)
