"""A Standard Webhooks receiver on loopback, as a customer's data team would run one.

Every request is verified with the official ``standardwebhooks`` package
(``Webhook(secret).verify(body, headers)``) against the secrets the receiver currently
trusts (``fake.secrets``: any one verifying is enough, as during a rotation), and
deduplicated by ``webhook-id``: a message it has already processed is answered 200 and
counted in ``duplicates``, not processed again. Processed messages are in ``processed``
(in the order they arrived), every request in ``requests``.

Answers come from ``fake.script`` (consumed in order), then 200: an HTTP status (a 2xx
processes the message; anything else does not), ``"reset"`` to drop the connection
without an answer, or ``("hang", seconds)`` to wait that long and then answer 503 (the
sender has given up by then). A request whose signature does not verify is answered 401
and recorded in ``rejected``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.fakes.webhook import LoopbackServer


@dataclass
class Request:
    headers: dict
    body: bytes
    at: float
    answer: str = ""

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def json(self):
        return json.loads(self.body)


@dataclass
class StandardWebhooksReceiver(LoopbackServer):
    secrets: list[str] = field(default_factory=list)
    script: list = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    processed: list[Request] = field(default_factory=list)
    rejected: list[Request] = field(default_factory=list)
    duplicates: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()
        self.seen: set[str] = set()

    def verifies(self, request: Request, secret: str) -> bool:
        try:
            Webhook(secret).verify(request.body, request.headers)
        except WebhookVerificationError:
            return False
        return True

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        request = Request({k.lower(): v for k, v in handler.headers.items()}, body, time.time())
        with self.lock:
            self.requests.append(request)
            scripted = self.script.pop(0) if self.script else 200
        if scripted == "reset":
            request.answer = "reset"
            # SO_LINGER 0: the close sends RST, a connection reset as the sender sees it.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        if isinstance(scripted, tuple) and scripted[0] == "hang":
            time.sleep(scripted[1])
            scripted = 503
        with self.lock:
            if not any(self.verifies(request, secret) for secret in self.secrets):
                status = 401
                self.rejected.append(request)
            elif 200 <= scripted < 300:
                status = scripted
                if request.id in self.seen:
                    self.duplicates += 1
                else:
                    self.seen.add(request.id)
                    self.processed.append(request)
            else:
                status = scripted
        request.answer = str(status)
        answer = json.dumps({"status": status}).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # the sender stopped waiting

    def start(self) -> StandardWebhooksReceiver:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                fake._handle(self)

        self.serve(Handler, name="fake-standard-webhooks", path="/hooks")
        return self

    def types(self) -> list[str]:
        return [request.json["type"] for request in self.processed]
