"""A Twilio stand-in: a real HTTP/1.1 server on loopback speaking enough of the REST API.

It implements what Switchboard's adapter uses, with Twilio's shapes and error bodies:

- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From or MessagingServiceSid,
  Body or ContentSid + ContentVariables, StatusCallback) → 201 and the message resource;
- ``GET  …/Messages.json`` with ``To``, ``From``, ``DateSent``, ``DateSent>`` (sent on or after a
  day), ``DateSent<``, ``PageSize`` and ``Page``, newest first, paged through ``next_page_uri``;
- ``POST …/Calls.json`` (To, From, Twiml or Url, StatusCallback) → 201 and the call resource;
- HTTP basic auth with the account SID and auth token (401, code 20003, otherwise).

Knobs: ``latency`` (seconds before each answer, without holding up other connections),
``queued_seconds`` (how long a message stays ``queued`` with no sent date, which is what
hides it from ``DateSent`` filters), ``max_page_size`` (to force paging), and scripted
failures per recipient (:meth:`FakeTwilio.fail`). Every accepted message is logged when
the request arrives, as Twilio would have it even if the client died waiting for the answer.

Two ways to run it:

- in a test: ``with FakeTwilio() as fake: …`` runs it on a thread (``fake.url``);
- as a process (the benchmark): ``python -m tests.fakes.twilio --latency-ms 2`` prints one
  JSON line with its ``url`` and serves until killed; ``/_fake/messages``, ``/_fake/stats``,
  ``/_fake/active`` (client ports that sent a request in the last 20 ms), ``/_fake/fail`` and
  ``/_fake/reset`` (no auth) read and steer it over HTTP.

It is an asyncio server with keep-alive and a small hand-written HTTP parser, so one
process answers thousands of requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import itertools
import json
import signal
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from email.utils import format_datetime
from hashlib import sha1
from http import HTTPStatus
from urllib.parse import parse_qs, urlencode, urlsplit

ACCOUNT_SID = "AC" + "5a17c4b0" * 4
AUTH_TOKEN = "fake-twilio-auth-token"
API_VERSION = "2010-04-01"


def signature(auth_token: str, url: str, params: dict) -> str:
    """``X-Twilio-Signature`` for a POST to ``url`` with ``params``, as Twilio computes it:
    HMAC-SHA1 over the URL followed by each parameter name and value, sorted by name."""
    payload = url
    for name in sorted(params):
        values = params[name] if isinstance(params[name], (list, tuple)) else [params[name]]
        for value in sorted(set(values)):
            payload += name + value
    digest = hmac.new(auth_token.encode(), payload.encode(), sha1).digest()
    return base64.b64encode(digest).decode()


def _rfc2822(moment: float) -> str:
    return format_datetime(datetime.fromtimestamp(moment, timezone.utc), usegmt=True)


@dataclass
class Failure:
    status: int
    code: int
    message: str
    # None: fail every time
    times: int | None = 1
    retry_after: str | None = None


class FakeTwilio:
    def __init__(self, *, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN, latency: float = 0.0,
                 queued_seconds: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.latency = latency
        self.queued_seconds = queued_seconds
        self.max_page_size = 1000
        self.host, self.port = host, port
        self._expected_auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._prefix = f"/{API_VERSION}/Accounts/{account_sid}/"
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.reset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        # client port → when it last sent a request (lets a benchmark catch a worker mid-send)
        self._last_request: dict[int, float] = {}

    def configure(self, settings, *, channels=("sms",), sms_from: str = "+15005550006",
                  site_url: str = "https://switchboard.example.com") -> None:
        """Point Django's ``settings`` (pytest-django's fixture) at this fake for ``channels``,
        sending SMS from ``sms_from``, with status callbacks under ``site_url``."""
        settings.PROVIDERS = {**settings.PROVIDERS, **{channel: "twilio" for channel in channels}}
        settings.TWILIO_API_BASE = self.url
        settings.TWILIO_ACCOUNT_SID = self.account_sid
        settings.TWILIO_AUTH_TOKEN = self.auth_token
        settings.TWILIO_SMS_FROM = sms_from
        settings.TWILIO_MESSAGING_SERVICE_SID = ""
        settings.SITE_URL = site_url

    # --- State, readable from tests --------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._messages: list[dict] = []
            self._by_to: dict[str, list[dict]] = {}
            self._by_sid: dict[str, dict] = {}
            self._calls: list[dict] = []
            self._requests: list[dict] = []
            self._failures: dict[str, list[Failure]] = {}

    @property
    def messages(self) -> list[dict]:
        """Accepted messages, oldest first: sid, to, from, body, status_callback, params, created."""
        with self._lock:
            return list(self._messages)

    @property
    def calls(self) -> list[dict]:
        with self._lock:
            return list(self._calls)

    @property
    def requests(self) -> list[dict]:
        """Every API request: method, resource (Messages/Calls), params (first value of each)."""
        with self._lock:
            return list(self._requests)

    def posts_to(self, number: str) -> int:
        """How many create requests named ``number`` (with or without a ``whatsapp:`` prefix)."""
        return sum(1 for r in self.requests if r["method"] == "POST" and _bare(r["params"].get("To", "")) == number)

    def fail(self, to: str, *, status: int, code: int, message: str, times: int | None = 1,
             retry_after: str | None = None) -> None:
        """Answer the next ``times`` creates for ``to`` (every one when None) with this error."""
        with self._lock:
            self._failures.setdefault(_bare(to), []).append(Failure(status, code, message, times, retry_after))

    def status_callback(self, sid: str, status: str, *, error_code: int | None = None) -> tuple[str, dict]:
        """The (url, form params) Twilio would POST to a message's or call's StatusCallback."""
        with self._lock:
            record = self._by_sid[sid]
        if sid.startswith("CA"):
            params = {"CallSid": sid, "CallStatus": status, "AccountSid": self.account_sid, "From": record["from"],
                      "To": record["to"], "ApiVersion": API_VERSION, "Direction": "outbound-api", "CallDuration": "7"}
        else:
            params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                      "AccountSid": self.account_sid, "From": record["from"], "To": record["to"],
                      "ApiVersion": API_VERSION}
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return record["status_callback"], params

    def sign(self, url: str, params: dict) -> str:
        return signature(self.auth_token, url, params)

    # --- Running ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve(self) -> asyncio.AbstractServer:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def start(self) -> "FakeTwilio":
        """Serve on a background thread until :meth:`stop`."""
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            self._server.close()
            # Clients keep connections alive; the server waits for none of them.
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.abort()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-twilio", daemon=True)
        self._thread.start()
        if not ready.wait(30):  # generous: a loaded machine may take seconds to start the thread's loop
            raise RuntimeError("the fake Twilio server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "FakeTwilio":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- Requests --------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, bytes, dict]:
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        if headers.get("authorization") != self._expected_auth:
            return _error(401, 20003, "Authentication Error - invalid username")
        if not path.startswith(self._prefix):
            return _error(404, 20404, f"The requested resource {path} was not found")
        resource = path[len(self._prefix):]
        if method == "POST":
            content_type = headers.get("content-type", "")
            if not content_type.startswith("application/x-www-form-urlencoded"):
                return _error(400, 20001, "Expected a form-encoded body")
            params = _form(body.decode("utf-8", "replace"))
        else:
            params = _form(parts.query)
        with self._lock:
            self._requests.append({"method": method, "resource": resource, "params": params, "at": time.time()})
        if resource == "Messages.json" and method == "POST":
            return self._create_message(params)
        if resource == "Messages.json" and method == "GET":
            return self._list_messages(params)
        if resource == "Calls.json" and method == "POST":
            return self._create_call(params)
        return _error(405 if resource in ("Messages.json", "Calls.json") else 404, 20004, "Method not allowed")

    def _scripted(self, to: str) -> tuple[int, bytes, dict] | None:
        with self._lock:
            queue = self._failures.get(_bare(to))
            if not queue:
                return None
            failure = queue[0]
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
        extra = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
        return _error(failure.status, failure.code, failure.message, extra)

    def _create_message(self, params: dict) -> tuple[int, bytes, dict]:
        to = params.get("To", "")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not params.get("From") and not params.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' phone number is required.")
        if not params.get("Body") and not params.get("ContentSid"):
            return _error(400, 21602, "Message body is required.")
        if params.get("ContentVariables"):
            try:
                json.loads(params["ContentVariables"])
            except ValueError:
                return _error(400, 21656, "The ContentVariables Parameter is invalid.")
        failure = self._scripted(to)
        if failure:
            return failure
        # The fake does not know approved templates: a template send's body names it.
        body = params.get("Body") or f"{params['ContentSid']} {params.get('ContentVariables', '')}".strip()
        record = {
            "sid": f"SM{next(self._counter):032x}", "to": to, "from": params.get("From", ""),
            "messaging_service_sid": params.get("MessagingServiceSid"), "body": body,
            "status_callback": params.get("StatusCallback", ""), "params": params, "created": time.time(),
        }
        with self._lock:
            self._messages.append(record)
            self._by_to.setdefault(to, []).append(record)
            self._by_sid[record["sid"]] = record
        resource = self._message_json(record, now=record["created"])
        resource["status"], resource["date_sent"] = "queued", None
        return 201, json.dumps(resource).encode(), {}

    def _message_json(self, record: dict, *, now: float) -> dict:
        sent_at = record["created"] + self.queued_seconds
        sent = now >= sent_at
        return {
            "account_sid": self.account_sid, "api_version": API_VERSION, "body": record["body"],
            "date_created": _rfc2822(record["created"]), "date_updated": _rfc2822(sent_at if sent else record["created"]),
            "date_sent": _rfc2822(sent_at) if sent else None, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": record["from"], "messaging_service_sid": record["messaging_service_sid"],
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD", "sid": record["sid"],
            "status": "sent" if sent else "queued", "to": record["to"],
            "uri": f"{self._prefix}Messages/{record['sid']}.json",
        }

    def _list_messages(self, params: dict) -> tuple[int, bytes, dict]:
        now = time.time()
        try:
            page = int(params.get("Page", "0"))
            size = min(int(params.get("PageSize", "50")), 1000, self.max_page_size)
            bounds = {key: date.fromisoformat(params[key]) for key in ("DateSent", "DateSent>", "DateSent<")
                      if key in params}
        except ValueError:
            return _error(400, 20001, "Invalid paging or date value")
        if page < 0 or size < 1:
            return _error(400, 20001, "Invalid paging value")
        with self._lock:
            pool = list(self._by_to.get(params["To"], [])) if "To" in params else list(self._messages)
        rows = []
        for record in pool:
            if "From" in params and record["from"] != params["From"]:
                continue
            if bounds:
                sent_at = record["created"] + self.queued_seconds
                # A message still queued has no sent date, so no date filter matches it.
                if now < sent_at:
                    continue
                day = datetime.fromtimestamp(sent_at, timezone.utc).date()
                if ("DateSent" in bounds and day != bounds["DateSent"]) or (
                        "DateSent>" in bounds and day < bounds["DateSent>"]) or (
                        "DateSent<" in bounds and day > bounds["DateSent<"]):
                    continue
            rows.append(record)
        # Newest first: queued messages (no sent date yet) lead, then by sent date.
        rows.reverse()
        chunk = rows[page * size:(page + 1) * size]
        filters = {key: params[key] for key in ("To", "From", "DateSent", "DateSent>", "DateSent<") if key in params}
        base = f"{self._prefix}Messages.json?"

        def page_uri(number: int) -> str:
            return base + urlencode({**filters, "PageSize": size, "Page": number, "PageToken": f"PA{number}"})

        more = (page + 1) * size < len(rows)
        listing = {
            "messages": [self._message_json(r, now=now) for r in chunk], "page": page, "page_size": size,
            "start": page * size, "end": page * size + max(len(chunk) - 1, 0), "uri": page_uri(page),
            "first_page_uri": page_uri(0), "next_page_uri": page_uri(page + 1) if more else None,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        }
        return 200, json.dumps(listing).encode(), {}

    def _create_call(self, params: dict) -> tuple[int, bytes, dict]:
        if not params.get("To"):
            return _error(400, 21201, "No 'To' number is specified")
        if not params.get("From"):
            return _error(400, 21213, "No 'From' number is specified")
        if not params.get("Twiml") and not params.get("Url") and not params.get("ApplicationSid"):
            return _error(400, 21205, "Url parameter is required.")
        failure = self._scripted(params["To"])
        if failure:
            return failure
        record = {
            "sid": f"CA{next(self._counter):032x}", "to": params["To"], "from": params["From"],
            "twiml": params.get("Twiml", ""), "status_callback": params.get("StatusCallback", ""), "params": params,
            "created": time.time(),
        }
        with self._lock:
            self._calls.append(record)
            self._by_sid[record["sid"]] = record
        resource = {
            "sid": record["sid"], "account_sid": self.account_sid, "to": record["to"], "from": record["from"],
            "status": "queued", "direction": "outbound-api", "api_version": API_VERSION,
            "date_created": _rfc2822(record["created"]), "date_updated": _rfc2822(record["created"]),
            "start_time": None, "end_time": None, "uri": f"{self._prefix}Calls/{record['sid']}.json",
        }
        return 201, json.dumps(resource).encode(), {}

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, bytes, dict]:
        """Unauthenticated endpoints for a benchmark driving the fake in another process."""
        if path == "/_fake/messages" and method == "GET":
            rows = [{"sid": m["sid"], "to": m["to"], "from": m["from"], "body": m["body"], "created": m["created"]}
                    for m in self.messages]
            return 200, json.dumps({"messages": rows}).encode(), {}
        if path == "/_fake/stats" and method == "GET":
            with self._lock:
                stats = {"messages": len(self._messages), "calls": len(self._calls), "requests": len(self._requests),
                         "creates": sum(1 for r in self._requests if r["method"] == "POST"),
                         "lists": sum(1 for r in self._requests if r["method"] == "GET")}
            return 200, json.dumps(stats).encode(), {}
        if path == "/_fake/active" and method == "GET":
            now = time.time()
            ports = [port for port, at in list(self._last_request.items()) if now - at <= 0.02]
            return 200, json.dumps({"ports": ports}).encode(), {}
        if path == "/_fake/reset" and method == "POST":
            self.reset()
            return 200, b"{}", {}
        if path == "/_fake/fail" and method == "POST":
            spec = json.loads(body or b"{}")
            self.fail(spec["to"], status=spec["status"], code=spec["code"], message=spec["message"],
                      times=spec.get("times", 1), retry_after=spec.get("retry_after"))
            return 200, b"{}", {}
        return 404, b'{"message": "no such control endpoint"}', {}


def _bare(number: str) -> str:
    return number.removeprefix("whatsapp:")


def _form(text: str) -> dict:
    return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()}


def _error(status: int, code: int, message: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return status, json.dumps(body).encode(), headers or {}


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: parse requests as bytes arrive, answer each in turn."""

    def __init__(self, fake: FakeTwilio):
        self.fake = fake
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.port = (transport.get_extra_info("peername") or ("", 0))[1]
        self.fake._connections.add(self)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.fake._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._answer(400, b'{"message": "malformed request"}', {}, close=True)
                return
            if "chunked" in headers.get("transfer-encoding", ""):
                self._answer(411, b'{"message": "send a Content-Length"}', {}, close=True)
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.fake._last_request[self.port] = time.time()
            try:
                status, payload, extra = self.fake.handle(method, target, headers, body)
            except Exception as exc:  # the fake must answer something even when a test feeds it junk
                status, payload, extra = 500, json.dumps({"message": f"fake error: {exc!r}"}).encode(), {}
            self._answer(status, payload, extra, close=headers.get("connection", "").lower() == "close")

    def _answer(self, status: int, payload: bytes, extra: dict, *, close: bool) -> None:
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}"]
        head += [f"{name}: {value}" for name, value in extra.items()]
        if close:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        if self.fake.latency > 0:
            asyncio.get_running_loop().call_later(self.fake.latency, self._write, data, close)
        else:
            self._write(data, close)

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Twilio API until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--queued-seconds", type=float, default=0.0)
    parser.add_argument("--account-sid", default=ACCOUNT_SID)
    parser.add_argument("--auth-token", default=AUTH_TOKEN)
    args = parser.parse_args(argv)
    fake = FakeTwilio(account_sid=args.account_sid, auth_token=args.auth_token, latency=args.latency_ms / 1000,
                      queued_seconds=args.queued_seconds, host=args.host, port=args.port)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(fake.serve())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(json.dumps({"url": fake.url, "account_sid": fake.account_sid, "auth_token": fake.auth_token}), flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
