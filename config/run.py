"""``make run``: database, migrations, demo data, web server and workers in one command.

Starts the embedded PostgreSQL when ``DATABASE_URL`` is unset, migrates, loads the demo
data once (the settings create this installation's secret key in ``.data/secret_key`` on
first use), then runs ``uvicorn config.asgi:application`` and ``manage.py qcluster`` until
Ctrl-C, and stops everything it started (the embedded PostgreSQL included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from config import localdb

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")


def manage(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, "manage.py", *args], env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    # The demo plays opens, clicks and conversions for what the sandbox providers "send".
    env.setdefault("SANDBOX_SIMULATE", "1")
    # Mail the platform itself sends (password resets, fresh preference-centre links) is
    # printed here unless a mail server is configured: DEBUG's default mailer (settings).
    server = None
    if not env.get("DATABASE_URL"):
        print("Starting the embedded PostgreSQL in .data/pg …", flush=True)
        server = localdb.start()
        env["DATABASE_URL"] = localdb.url(server)
    manage("migrate", "--noinput", env=env)
    manage("seed_demo", "--if-empty", env=env)
    manage("seed_segments", "--if-empty", env=env)
    manage("seed_campaigns", "--if-empty", env=env)
    manage("seed_journeys", "--if-empty", env=env)

    children = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", HOST, "--port", PORT,
             "--log-level", "warning"],
            env=env,
        ),
        subprocess.Popen([sys.executable, "manage.py", "qcluster"], env=env),
    ]
    print(f"\nSwitchboard is running at http://{'localhost' if HOST == '127.0.0.1' else HOST}:{PORT}/"
          f"  (API docs at /api/docs) — Ctrl-C stops it.\n", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.3)
    finally:
        print("\nStopping …", flush=True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            server.cleanup()
            print("Embedded PostgreSQL stopped.", flush=True)
    failed = [child.returncode for child in children if child.returncode not in (0, -2, -15, None)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
