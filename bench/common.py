"""Helpers shared by the benchmarks: a database of their own, the real server, the result line.

A benchmark takes the PostgreSQL server from ``DATABASE_URL`` (``make bench`` provides a
throwaway embedded one) and works in a database it creates and drops itself, so it never
touches real data. It ends with exactly one JSON line (:func:`report`), which
``bench/run_all.py`` collects.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# On the 2-core machine the server shares with PostgreSQL and the load generator, event
# ingestion ran at 3.6k events/s with 1 worker, 4.6k with 2 and 4.3k with 3: Django runs a
# sync view on one thread per worker, and more workers than cores only add switching.
# BENCH_WORKERS overrides it.
DEFAULT_WORKERS = 2


def log(message: str = "") -> None:
    print(message, flush=True)


def server_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit(
            "DATABASE_URL is not set. Run benchmarks with 'make bench', or point DATABASE_URL at a "
            "PostgreSQL server where you may create databases, e.g. postgresql://postgres@127.0.0.1:5432/postgres"
        )
    return url


@contextlib.contextmanager
def bench_database(name: str) -> Iterator[str]:
    """Create an empty database ``name`` on the server of ``DATABASE_URL``; drop it afterwards.

    Yields its connection string. An existing database of that name (left by a killed
    run) is dropped first, so the name must be the benchmark's own.
    """
    if not name.startswith("switchboard_bench"):
        raise ValueError("benchmark databases are named switchboard_bench…, so no real one is ever dropped")
    base = server_url()
    maintenance = make_conninfo(base, dbname="postgres")
    identifier = sql.Identifier(name)
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    try:
        yield make_conninfo(base, dbname=name)
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))


_SECRET_KEY = secrets.token_urlsafe(40)


def django_env(database_url: str) -> dict[str, str]:
    """Environment for Django processes: production settings (DEBUG off) on ``database_url``."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "0",
        "SECRET_KEY": _SECRET_KEY,
        # 4xx responses are logged as warnings; a benchmark sends some on purpose.
        "LOG_LEVEL": "ERROR",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        # whitenoise warns that collectstatic has not run; benchmarks serve no static files.
        "PYTHONWARNINGS": "ignore:No directory at",
    }


def migrate(database_url: str) -> None:
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=django_env(database_url), check=True
    )
    log(f"migrated in {time.perf_counter() - started:.1f} s")


def setup_django(database_url: str) -> None:
    """Configure Django in this process, on ``database_url``, to call services directly."""
    os.environ.update(django_env(database_url))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def create_api_key(name: str = "bench") -> str:
    """A new API key through the service (call :func:`setup_django` first); returns the raw key."""
    from customers.services.api_keys import api_key_create

    _, raw = api_key_create(name=name)
    return raw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_workers() -> int:
    """How many uvicorn workers :func:`run_server` starts by default (one when profiling)."""
    if os.environ.get("BENCH_PROFILE"):
        return 1
    return int(os.environ.get("BENCH_WORKERS", DEFAULT_WORKERS))


@contextlib.contextmanager
def run_server(database_url: str, *, workers: int | None = None, timeout: float = 60,
               app: str = "config.asgi:application", env: dict | None = None) -> Iterator[str]:
    """Run ``uvicorn <app>`` (Switchboard's ASGI application unless told otherwise) on a free
    loopback port; yield its base URL. ``env`` adds to the processes' environment.

    With ``BENCH_PROFILE=path`` the server runs one worker under cProfile and writes its
    profile to ``path`` when stopped (read it with ``python -m pstats path``).
    """
    profile = os.environ.get("BENCH_PROFILE")
    workers = 1 if profile else (workers or server_workers())
    port = free_port()
    command = [
        "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--lifespan", "off",
    ]
    if profile:
        command = [PYTHON, "-m", "cProfile", "-o", profile, *command]
    else:
        command = [PYTHON, *command, "--workers", str(workers)]
    # Its own session, so the workers it forks are stopped with it.
    process = subprocess.Popen(command, cwd=ROOT, env={**django_env(database_url), **(env or {})},
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, base, timeout)
        log(f"server: uvicorn {app}, {workers} worker{'s' if workers > 1 else ''}, {base}")
        yield base
    finally:
        _stop(process)


def _wait_until_up(process: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            httpx.get(f"{base}/admin/login/", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    # SIGINT: uvicorn shuts down gracefully, and cProfile (if any) writes its file.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(name: str, figures: dict, ratio: float, target: str, met: bool) -> None:
    """Print the benchmark's one result line; run_all.py reads the last line of each benchmark."""
    line = {"benchmark": name, "figures": figures, "ratio": round(ratio, 3), "target": target, "met": bool(met)}
    print(json.dumps(line), flush=True)


class CpuMeter:
    """CPU seconds of each party over a window: the server (uvicorn and its workers), task
    workers (qcluster), PostgreSQL, Redis, and the ``extra`` parties (name → processes).

    ``stop`` returns the cores each kept busy on average (2.0 is both cores of the reference
    machine, all the time), with "other" for everything else on the machine; the seconds
    themselves are left in ``seconds``.
    """

    def __init__(self, conninfo: str, extra: dict | None = None):
        import psutil

        self._psutil = psutil
        with psycopg.connect(conninfo) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            self.postmaster = psutil.Process(backend).parent()
        me = psutil.Process()
        servers = [p for p in me.children() if "uvicorn" in " ".join(p.cmdline())]
        workers = [p for p in me.children() if "qcluster" in " ".join(p.cmdline())]
        redis = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]
        self.parties = {
            # uvicorn's supervisor and its workers (spawned, so their command lines do not say uvicorn).
            "server": lambda: servers + [c for s in servers for c in s.children(recursive=True)],
            "task workers": lambda: workers + [c for w in workers for c in w.children(recursive=True)],
            "postgres": lambda: [self.postmaster] + self.postmaster.children(),
            "redis": lambda: redis,
            **(extra or {}),
        }
        self.seconds: dict[str, float] = {}

    def _sample(self) -> dict:
        totals = {}
        for name, processes in self.parties.items():
            seconds = 0.0
            for process in processes():
                try:
                    times = process.cpu_times()
                    seconds += times.user + times.system
                except self._psutil.Error:
                    pass
            totals[name] = seconds
        # Backends that exited (one per request when connections are not reused) are counted
        # in the postmaster's reaped-children times.
        times = self.postmaster.cpu_times()
        totals["postgres"] += times.children_user + times.children_system
        machine = self._psutil.cpu_times()
        totals["machine busy"] = machine.user + machine.system + machine.nice + getattr(machine, "irq", 0) \
            + getattr(machine, "softirq", 0)
        return totals

    def start(self) -> None:
        self.began, self.before = time.monotonic(), self._sample()

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.began
        after = self._sample()
        self.seconds = {name: after[name] - self.before[name] for name in after}
        cores = {name: round(seconds / elapsed, 2) for name, seconds in self.seconds.items()}
        # Anything else on the machine: other people's work, the kernel.
        cores["other"] = round(cores["machine busy"] - sum(v for k, v in cores.items() if k != "machine busy"), 2)
        return cores


def checkpoint(conn) -> None:
    """Start each timed run with no dirty pages left by the setup (needs superuser; skipped otherwise)."""
    try:
        conn.execute("CHECKPOINT")
        conn.commit()
    except psycopg.Error:
        conn.rollback()
