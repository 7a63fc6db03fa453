"""A real ASGI server (``uvicorn config.asgi:application``) in a subprocess, on the test database.

Django's live_server speaks WSGI only; the dashboards need websockets and the tracking route
sits in front of Django in the ASGI application. Tests that use it need
``django_db(transaction=True)`` so the server sees what they write.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from psycopg.conninfo import make_conninfo

from tests.conftest import WAIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AsgiServer:
    """``uvicorn config.asgi:application`` in a subprocess, on the test database.

    The server gets the test's SECRET_KEY (tracking tokens are signed here and checked there)
    and the PostgreSQL channel layer on the same database, like the zero-setup mode. ``env``
    adds settings; ``workers`` above 1 runs uvicorn's process manager.
    """

    def __init__(self, log_path: Path, *, env: dict | None = None, workers: int = 1):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.workers = workers
        self.process: subprocess.Popen | None = None
        db = connection.settings_dict
        params = {"dbname": db["NAME"], "user": db["USER"], "password": db["PASSWORD"], "host": db["HOST"],
                  "port": db["PORT"], **db["OPTIONS"]}
        self.env = {
            **os.environ,
            "DATABASE_URL": make_conninfo(**{key: value for key, value in params.items() if value not in ("", None)}),
            "DEBUG": "1",
            "SECRET_KEY": settings.SECRET_KEY,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        # No Redis: the channel layer is channels-postgres on the test database. And the
        # server must not inherit the test's permission to run the ORM inside event loops.
        for name in ("REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"):
            self.env.pop(name, None)

    def start(self, timeout: float = 2 * WAIT_SECONDS) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.port), "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/accounts/login/", timeout=WAIT_SECONDS).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"uvicorn did not answer within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGINT: a graceful shutdown, which closes open websockets with 1012 (service restart).
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL to the server and every worker: no shutdown code runs, as in a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log(self, since: int = 0) -> str:
        """What the server logged (after byte offset ``since``), its last 5,000 characters."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")[-5000:]
