"""A webhook receiver on loopback: records every request and answers as scripted.

``with FakeWebhookReceiver() as fake: …`` serves on ``fake.url`` (``http://127.0.0.1:<port>``)
from a thread. Every request is recorded when it arrives (``fake.received``), before the
answer, as a real receiver would have it even if the caller gave up waiting. Answers come
from ``fake.script`` (a list consumed in order: an HTTP status, or ``(status, body)`` or
``(status, body, headers)``, a dict or list body sent as JSON, text and bytes as they are), then ``fake.default`` (200 with a JSON
object). ``delay`` holds every answer back that many seconds (without holding up other
connections).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict  # names lower-cased: HTTP header names are case-insensitive
    body: bytes
    at: float

    @property
    def json(self):
        return json.loads(self.body)

    def signature_valid(self, secret: str) -> bool:
        """What a receiver checks: HMAC-SHA256 of "{timestamp}.{body}" with the shared secret."""
        timestamp = self.headers.get("x-switchboard-timestamp", "")
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"sha256={expected}", self.headers.get("x-switchboard-signature", ""))


class LoopbackServer:
    """Serves a ``BaseHTTPRequestHandler`` class on 127.0.0.1 from a thread; a context manager."""

    def serve(self, handler: type[BaseHTTPRequestHandler], *, name: str, path: str = "") -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)
        self._thread.start()

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class FakeWebhookReceiver(LoopbackServer):
    script: list = field(default_factory=list)
    default: tuple = (200, {"ok": True})
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()

    def answer(self) -> tuple[int, dict, bytes]:
        with self.lock:
            scripted = self.script.pop(0) if self.script else self.default
        if isinstance(scripted, int):
            scripted = (scripted, b"")
        status, body, headers = (*scripted, {})[:3]
        headers = dict(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode()
        return status, headers, body

    def start(self) -> FakeWebhookReceiver:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    fake.received.append(Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body, time.time()))
                if fake.delay:
                    time.sleep(fake.delay)
                status, headers, data = fake.answer()
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the caller stopped waiting

        self.serve(Handler, name="fake-webhook")
        return self

    def keys(self) -> list[str]:
        """The Idempotency-Key of every request received, in order."""
        return [r.headers.get("idempotency-key") for r in self.received]
