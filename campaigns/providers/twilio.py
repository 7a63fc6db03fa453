"""Twilio's REST API (or a Twilio-compatible one) for SMS, WhatsApp and voice.

Configuration (read when sending, never at import): ``TWILIO_ACCOUNT_SID`` and
``TWILIO_AUTH_TOKEN`` (HTTP basic auth), ``TWILIO_API_BASE`` (``https://api.twilio.com``, or a
compatible API, or a fake in tests), the senders ``TWILIO_SMS_FROM``, ``TWILIO_WHATSAPP_FROM``,
``TWILIO_VOICE_FROM`` or ``TWILIO_MESSAGING_SERVICE_SID`` for messages, and ``SITE_URL``, which
makes the ``StatusCallback`` URL Twilio reports delivery to (``campaigns.webhooks``).

A batch is sent concurrently: ``DELIVERY_CONCURRENCY`` threads share one keep-alive
``httpx.Client`` per process, kept across batches (the dispatcher asks for a provider per
batch, and a TLS handshake per batch would cost more than the batch's requests).
``start_batch`` queues the requests on those threads and returns at once; for SMS the
dispatcher uses it to record one batch and prepare the next while this one is on the wire.

Outcomes: 2xx → sent, with Twilio's SID as the provider message id. 429 and 5xx → temporary
(``Retry-After`` honoured). 401/403 → temporary too, so fixing the credentials lets the
retries through. Any other 4xx (21211 invalid number, 21610 recipient replied STOP, 21614
not a mobile …) → permanent, with Twilio's code and message as the reason. A connection that
could not be opened → temporary; one that broke after the request went out is ambiguous,
so Twilio is asked whether it has the message before the error is reported.

No idempotency key. Twilio's Messages and Calls APIs take none: the create parameters (To,
From, MessagingServiceSid, Body, ContentSid, ContentVariables, StatusCallback, …, per the API
reference and the helper libraries' ``MessageList.create`` signatures) have no such field, and
a repeated POST creates a second message. ``I-Twilio-Idempotency-Token`` is a header Twilio
*sends* on its webhooks so receivers can drop retried callbacks, not one its REST API honours.
So a delivery that a killed worker left in ``sending`` is settled by asking (:meth:`lookup`):
``GET Messages.json?To=<number>&DateSent>=<day>`` (paged through ``next_page_uri``), matching a
message with the same body created at or after the claim. ``DateSent`` filters on the day
Twilio *sent* a message, and one still queued (a Messaging Service queue can hold a campaign
for hours) has no sent date, so the newest page of the unfiltered list is read as well.
Body matching cannot work for WhatsApp Content templates (Twilio renders the text) or for
calls, so those are not looked up and are resent: at-least-once, limited to the messages in
flight at the crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from .base import OutgoingMessage, Provider, ProviderError, SendResult

logger = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
# Added by the dispatcher to marketing SMS and WhatsApp bodies; an approved WhatsApp template
# is sent as approved, so a body that is only this line does not replace the template.
OPT_OUT_LINE = "Reply STOP to opt out"
# Content API template SIDs: "HX" and 32 hex digits.
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
# Twilio stamps messages to the second on its own clock; allow for both.
CLOCK_ALLOWANCE = timedelta(seconds=60)
LOOKUP_PAGE_SIZE = 200
# A recipient with more messages than this since the claim is not a campaign recipient.
LOOKUP_MAX_PAGES = 10
# HTTP statuses that say "not now" rather than "never".
TEMPORARY_STATUSES = {401, 403, 408, 409, 425, 429}


@dataclass(frozen=True)
class _Config:
    base: str
    account_sid: str
    auth_token: str
    concurrency: int


def _config() -> _Config:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        if not getattr(settings, name, ""):
            raise ImproperlyConfigured(
                f"{name} is not set: the Twilio provider needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
                "(see README, Configuration)"
            )
    return _Config(
        base=settings.TWILIO_API_BASE.rstrip("/"),
        account_sid=settings.TWILIO_ACCOUNT_SID,
        auth_token=settings.TWILIO_AUTH_TOKEN,
        concurrency=max(1, int(settings.DELIVERY_CONCURRENCY)),
    )


# One client and thread pool per process and configuration: connections stay alive across
# batches. The pid is part of the key because a forked worker must not share its parent's sockets.
_shared_lock = threading.Lock()
_shared: dict = {}


def _transport(config: _Config) -> tuple[httpx.Client, ThreadPoolExecutor]:
    key = (os.getpid(), config)
    with _shared_lock:
        current = _shared.get("current")
        if current and current[0] == key:
            return current[1], current[2]
        if current and current[0][0] == os.getpid():
            current[1].close()
            current[2].shutdown(wait=False)
        client = httpx.Client(
            base_url=config.base,
            auth=(config.account_sid, config.auth_token),
            timeout=httpx.Timeout(20.0, connect=5.0),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
            headers={"User-Agent": "switchboard"},
        )
        pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="twilio")
        _shared["current"] = (key, client, pool)
        return client, pool


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _twilio_error(response: httpx.Response) -> str:
    """Twilio's error as "Twilio <code>: <message>" (or the HTTP status when the body is not Twilio's)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        code = body.get("code")
        return f"Twilio {code}: {body['message']}" if code else f"Twilio: {body['message']}"
    return f"Twilio answered HTTP {response.status_code}: {response.text[:200]}".strip()


def _normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in (text or "").replace("\r\n", "\n").strip().split("\n"))


class TwilioProvider(Provider):
    """The common part: a create request per message, sent concurrently, and the lookup."""

    name = "twilio"
    supports_lookup = True
    resource = "Messages.json"

    def params(self, message: OutgoingMessage) -> dict[str, str]:
        raise NotImplementedError

    def lookup_body(self, message: OutgoingMessage, params: dict[str, str]) -> str | None:
        """The body Twilio will show for this message, or None when it cannot be matched by body."""
        return params.get("Body")

    # --- Sending ---------------------------------------------------------------------------

    def _path(self, config: _Config, resource: str) -> str:
        return f"/{API_VERSION}/Accounts/{config.account_sid}/{resource}"

    def _status_callback(self) -> str:
        return settings.SITE_URL + reverse("tracking:twilio-status")

    def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        return self.start_batch(messages)()

    def start_batch(self, messages: list[OutgoingMessage]) -> Callable[[], list[SendResult]]:
        """Queue a create request per message on the shared pool and return at once; the
        function returned waits for the answers. A batch started while another is still
        sending queues behind it, so the connections stay busy between batches."""
        if not messages:
            return list
        config = _config()
        client, pool = _transport(config)
        path = self._path(config, self.resource)
        callback = self._status_callback()
        prepared = []
        for message in messages:
            params = self.params(message)
            params["StatusCallback"] = callback
            prepared.append((message, params))
        futures = [(message, pool.submit(self._send, client, config, path, message, params))
                   for message, params in prepared]

        def results() -> list[SendResult]:
            answered = []
            for message, future in futures:
                try:
                    answered.append(future.result())
                except Exception as exc:  # a bug, not an answer: this message is retried later
                    logger.exception("sending delivery %s to Twilio failed", message.delivery_id)
                    answered.append(SendResult(message.delivery_id, False, error=f"provider error: {exc}"))
            return answered

        return results

    def _send(self, client: httpx.Client, config: _Config, path: str, message: OutgoingMessage,
              params: dict[str, str]) -> SendResult:
        try:
            response = client.post(path, data=params)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached Twilio.
            return SendResult(message.delivery_id, False, error=f"could not reach Twilio: {exc!r}")
        except httpx.TransportError as exc:
            return self._ambiguous(client, config, message, params, exc)
        if response.is_success:
            try:
                sid = response.json()["sid"]
            except (ValueError, KeyError, TypeError):
                return self._ambiguous(client, config, message, params, ValueError(response.text[:200]))
            return SendResult(message.delivery_id, True, provider_message_id=sid)
        reason = _twilio_error(response)
        if response.status_code in TEMPORARY_STATUSES or response.status_code >= 500:
            return SendResult(message.delivery_id, False, error=reason, retry_after=_retry_after(response))
        return SendResult(message.delivery_id, False, error=reason, permanent=True)

    def _ambiguous(self, client, config, message, params, exc) -> SendResult:
        """The request may have reached Twilio: ask before calling it a failure to retry."""
        body = self.lookup_body(message, params)
        try:
            # On this pool thread, not through the pool: every thread could be waiting here.
            found = {} if body is None else self._find_for(
                client, config, params["To"], [(message, _normalised(body))])
        except ProviderError as lookup_error:
            found = {}
            logger.warning("Twilio lookup after a broken request failed: %s", lookup_error)
        if message.delivery_id in found:
            return SendResult(message.delivery_id, True, provider_message_id=found[message.delivery_id])
        return SendResult(message.delivery_id, False, error=f"connection to Twilio broke: {exc!r}")

    # --- Settling what a crashed worker left -------------------------------------------------

    def lookup(self, messages: list[OutgoingMessage]) -> dict[int, str]:
        """Delivery id → Twilio SID for messages Twilio already has; raises :class:`ProviderError`
        when Twilio cannot be asked (the deliveries then stay unsettled rather than be resent)."""
        if not messages:
            return {}
        config = _config()
        client, _ = _transport(config)
        return self._find(client, config, [(message, self.params(message)) for message in messages])

    def _find(self, client: httpx.Client, config: _Config, items: list[tuple[OutgoingMessage, dict]]) -> dict[int, str]:
        wanted: dict[str, list[tuple[OutgoingMessage, str]]] = {}
        for message, params in items:
            body = self.lookup_body(message, params)
            if body is None:
                continue
            wanted.setdefault(params["To"], []).append((message, _normalised(body)))
        if not wanted:
            return {}
        _, pool = _transport(config)
        found: dict[int, str] = {}
        for result in pool.map(lambda entry: self._find_for(client, config, *entry), wanted.items()):
            found.update(result)
        return found

    def _find_for(self, client: httpx.Client, config: _Config, to: str,
                  pending: list[tuple[OutgoingMessage, str]]) -> dict[int, str]:
        path = self._path(config, "Messages.json")
        # next_page_uri is absolute from the API host's root; the client's base may have a path.
        prefix = urlsplit(config.base).path.rstrip("/")
        claimed = [m.claimed_at for m, _ in pending if m.claimed_at]
        # claimed_at can be the moment an expired lease was taken over rather than the first
        # claim, so look back one lease further, plus the clock allowance.
        since = (min(claimed) if claimed else datetime.now(timezone.utc)) - CLOCK_ALLOWANCE - timedelta(
            seconds=settings.DELIVERY_LEASE_SECONDS)
        found: dict[int, str] = {}
        used: set[str] = set()
        queries = [
            {"To": to, "DateSent>": since.astimezone(timezone.utc).date().isoformat(), "PageSize": LOOKUP_PAGE_SIZE},
            # Queued messages have no sent date yet; the newest page holds them.
            {"To": to, "PageSize": LOOKUP_PAGE_SIZE},
        ]
        for number, params in enumerate(queries):
            url, pages = path, 0
            while url and pages < (LOOKUP_MAX_PAGES if number == 0 else 1):
                listing = self._get(client, url, params)
                pages += 1
                for row in listing.get("messages") or []:
                    if row.get("sid") in used or not str(row.get("direction", "outbound")).startswith("outbound"):
                        continue
                    created = _parse_date(row.get("date_created"))
                    if created is None or created < since:
                        continue
                    body = _normalised(row.get("body") or "")
                    for message, expected in pending:
                        if message.delivery_id not in found and body == expected:
                            found[message.delivery_id] = row["sid"]
                            used.add(row["sid"])
                            break
                if len(found) == len(pending):
                    return found
                url, params = listing.get("next_page_uri"), None
                if url and prefix and url.startswith(prefix + "/"):
                    url = url[len(prefix):]
        return found

    def _get(self, client: httpx.Client, url: str, params: dict | None) -> dict:
        try:
            response = client.get(url, params=params)
        except httpx.TransportError as exc:
            raise ProviderError(f"could not list Twilio messages: {exc!r}", permanent=False) from exc
        if not response.is_success:
            raise ProviderError(f"could not list Twilio messages: {_twilio_error(response)}", permanent=False)
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderError("Twilio's message list was not JSON", permanent=False) from exc


def _parse_date(value) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _sender(setting: str) -> dict[str, str]:
    """From (or the Messaging Service, which picks a sender from its pool)."""
    if settings.TWILIO_MESSAGING_SERVICE_SID:
        return {"MessagingServiceSid": settings.TWILIO_MESSAGING_SERVICE_SID}
    sender = getattr(settings, setting, "")
    if not sender:
        raise ImproperlyConfigured(
            f"{setting} is not set: set it (or TWILIO_MESSAGING_SERVICE_SID) to send with Twilio"
        )
    return {"From": sender}


class TwilioSMS(TwilioProvider):
    channel = "sms"
    # Every SMS has a body to find it by after a crash. (WhatsApp Content templates and calls
    # cannot be found, so those keep to one batch sent and unrecorded at a time.)
    sends_in_background = True

    def params(self, message: OutgoingMessage) -> dict[str, str]:
        return {"To": message.to, **_sender("TWILIO_SMS_FROM"), "Body": message.content.get("body", "")}


def _whatsapp(address: str) -> str:
    return address if address.startswith("whatsapp:") else f"whatsapp:{address}"


def template_text(template: str, variables: dict) -> str:
    """A template name or text sent as a plain body: the text, then the variables' values in order."""
    values = [str(variables[key]) for key in sorted(variables or {}, key=lambda k: (len(str(k)), str(k)))]
    return f"{template}: {', '.join(values)}" if values else template


class TwilioWhatsApp(TwilioProvider):
    """WhatsApp through Twilio: an approved Content template (``HX…`` SID) with variables, or text.

    Business-initiated WhatsApp messages must use an approved template. With a Content SID
    the message is ``ContentSid`` + ``ContentVariables`` and Twilio fills the template in.
    Otherwise the content's own body is sent, or, without one, the template (already
    personalised, it is a Django template like every content field) followed by the
    variables' values: what a sandbox number or an open 24-hour session accepts.
    """

    channel = "whatsapp"

    def params(self, message: OutgoingMessage) -> dict[str, str]:
        content = message.content
        params = {"To": _whatsapp(message.to)}
        if settings.TWILIO_MESSAGING_SERVICE_SID and not settings.TWILIO_WHATSAPP_FROM:
            params["MessagingServiceSid"] = settings.TWILIO_MESSAGING_SERVICE_SID
        elif settings.TWILIO_WHATSAPP_FROM:
            params["From"] = _whatsapp(settings.TWILIO_WHATSAPP_FROM)
        else:
            raise ImproperlyConfigured(
                "TWILIO_WHATSAPP_FROM is not set: set it (or TWILIO_MESSAGING_SERVICE_SID) to send WhatsApp with Twilio"
            )
        template = (content.get("template") or "").strip()
        variables = content.get("variables") or {}
        body = (content.get("body") or "").strip()
        if CONTENT_SID.match(template):
            params["ContentSid"] = template
            if variables:
                params["ContentVariables"] = json.dumps(variables)
        elif body and body != OPT_OUT_LINE:
            params["Body"] = body
        else:
            params["Body"] = template_text(template, variables)
        return params

    def lookup_body(self, message: OutgoingMessage, params: dict[str, str]) -> str | None:
        return params.get("Body")  # None for Content templates: Twilio renders those


class TwilioVoice(TwilioProvider):
    """A call that reads the text aloud (TwiML ``<Say>``).

    Calls cannot be matched after a crash (Twilio does not return the TwiML of a call), so
    this provider does not offer a lookup.
    """

    channel = "voice"
    resource = "Calls.json"
    supports_lookup = False

    def params(self, message: OutgoingMessage) -> dict[str, str]:
        sender = settings.TWILIO_VOICE_FROM
        if not sender:
            raise ImproperlyConfigured("TWILIO_VOICE_FROM is not set: set it to place calls with Twilio")
        text = message.content.get("text", "")
        return {"To": message.to, "From": sender, "Twiml": f"<Response><Say>{escape(text)}</Say></Response>"}

    def lookup_body(self, message: OutgoingMessage, params: dict[str, str]) -> str | None:
        return None

    def lookup(self, messages: list[OutgoingMessage]) -> dict[int, str]:
        return {}
