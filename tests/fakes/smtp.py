"""Email providers on loopback: a real SMTP server (aiosmtpd) and Postmark's HTTP API.

Both record what they were sent and can refuse chosen recipients the way the real thing
does (SMTP ``550`` at ``RCPT TO``; Postmark's 422 "inactive recipient").
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.smtp import SMTP

# Generous, like the tests' own waits: a loaded machine may take seconds to start a thread's loop.
WAIT_SECONDS = 30


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        return part.get_content() if part else ""

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        return part.get_content() if part else ""


class _Handler:
    def __init__(self, server: "FakeSMTPServer"):
        self.server = server

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):
        cap = self.server.messages_per_session
        if cap and getattr(session, "accepted", 0) >= cap:
            # What relays answer once a session has sent its share, then they hang up.
            asyncio.get_running_loop().call_later(0.1, smtp.transport.close)
            return "421 4.7.0 Too many messages for this session, closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        if address.lower() in self.server.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        session.accepted = getattr(session, "accepted", 0) + 1
        with self.server.lock:
            self.server.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Ok: queued"


class FakeSMTPServer:
    """An SMTP server on 127.0.0.1 and a free port, in a thread of its own.

    ``refuse``: addresses answered with 550 at RCPT TO; ``messages_per_session``: after that
    many messages a session is answered 421 and closed. ``connections`` counts SMTP sessions.
    """

    def __init__(self, refuse: set[str] | None = None, messages_per_session: int = 0):
        self.refuse = {address.lower() for address in (refuse or set())}
        self.messages_per_session = messages_per_session
        self.messages: list[ReceivedMail] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-smtp", daemon=True)
        self._server = None

    def _protocol(self):
        with self.lock:
            self.connections += 1
        return SMTP(_Handler(self), hostname="mx.test", ident="fake-smtp")

    def start(self) -> "FakeSMTPServer":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(self._protocol, self.host, 0), self._loop
        )
        self._server = future.result(timeout=WAIT_SECONDS)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=WAIT_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=WAIT_SECONDS)
        self._loop.close()

    def to(self, address: str) -> list[ReceivedMail]:
        return [mail for mail in self.messages if address in mail.rcpt_tos]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- Postmark's email API -------------------------------------------------------------------------


@dataclass
class FakePostmark:
    """Postmark's ``POST /email`` on loopback: accepts with a MessageID, or refuses inactive recipients."""

    token: str = "postmark-test-token"
    inactive: set[str] = field(default_factory=set)
    sent: list[dict] = field(default_factory=list)

    def start(self) -> "FakePostmark":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.headers.get("X-Postmark-Server-Token") != fake.token:
                    return self._answer(401, {"ErrorCode": 10, "Message": "The Server Token you provided was invalid."})
                if self.path.rstrip("/") != "/email":
                    return self._answer(404, {"ErrorCode": 404, "Message": "Not found"})
                recipient = body.get("To", "").lower()
                if recipient in fake.inactive:
                    return self._answer(422, {
                        "ErrorCode": 406,
                        "Message": "You tried to send to a recipient that has been marked as inactive.\n"
                                   f"Found inactive addresses: {recipient}.\n"
                                   "Inactive recipients are ones that have generated a hard bounce "
                                   "or a spam complaint.",
                    })
                message_id = str(uuid.uuid4())
                fake.sent.append({**body, "MessageID": message_id})
                self._answer(200, {"To": body.get("To"), "SubmittedAt": "2026-01-01T00:00:00Z",
                                   "MessageID": message_id, "ErrorCode": 0, "Message": "OK"})

            def _answer(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-postmark", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
