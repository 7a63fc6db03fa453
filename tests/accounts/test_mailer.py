"""The mailer every email goes through, as the environment configures it."""

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.smtp import FakeSMTPServer

SEND_ONE = (
    "import django; django.setup();"
    "from django.core.mail import EmailMultiAlternatives;"
    "EmailMultiAlternatives('Reset your password', 'Choose a new password here: ' + LINK, None, ['ada@example.com'])"
    ".send()"
)
# Longer than an encoded email's 76-character lines.
LINK = "http://localhost:8000/accounts/reset/MQ/d1w95w-0d523433e37b0fdd8283b238b97e8a1a/"


def run_app_process(**env_vars) -> subprocess.CompletedProcess:
    """Send one email from a fresh process configured only by the environment, as the app is."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EMAIL_")}
    # A database URL keeps settings from starting the embedded PostgreSQL; nothing connects to it.
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused"},
               **env_vars)
    return subprocess.run([sys.executable, "-c", f"LINK = {LINK!r}; {SEND_ONE}"], env=env,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)


def test_the_demo_prints_emails_in_its_terminal_instead_of_failing_to_reach_a_mail_server():
    result = run_app_process(DEBUG="1")

    assert result.returncode == 0, result.stderr
    assert "Subject: Reset your password" in result.stdout
    assert "To: ada@example.com" in result.stdout
    assert f"Choose a new password here: {LINK}\n" in result.stdout  # the link whole, ready to open


def test_a_configured_relay_gets_the_email_in_the_demo_too():
    with FakeSMTPServer() as server:
        result = run_app_process(DEBUG="1", EMAIL_HOST=server.host, EMAIL_PORT=str(server.port))

        assert result.returncode == 0, result.stderr
        assert [mail.message["Subject"] for mail in server.to("ada@example.com")] == ["Reset your password"]
    assert "Subject:" not in result.stdout
