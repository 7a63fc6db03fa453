"""Email through Django's email API: SMTP, or any django-anymail ESP backend.

Which backend sends is Django 6.1's ``MAILERS["default"]`` (see ``config/settings.py``), so
switching from an SMTP relay to Postmark, SendGrid, Mailgun, SES … is configuration only.

- A batch shares one connection (one SMTP session, one ESP HTTP session): it is opened once
  and every message is handed to it on its own, because a backend's ``send_messages`` stops
  at the first refused recipient and would leave the rest of the batch unclassified. A server
  that drops the session (relays cap messages per connection) gets one reconnection.
- The Message-ID is derived from the delivery's idempotency key, so a resend after a crash
  carries the same Message-ID and mail systems can recognise the duplicate.
- The provider message id is the ESP's own id when anymail reports one (that is what its
  webhooks quote), otherwise our Message-ID.
"""

from __future__ import annotations

import json
import smtplib
from dataclasses import dataclass
from email.utils import parseaddr

from django.conf import settings
from django.utils.crypto import salted_hmac

from .base import OutgoingMessage, Provider, SendResult

# HTTP statuses from an ESP's API that a later attempt may get past: timeouts, rate limits,
# the ESP's own outages, and credentials an operator can fix (a permanent failure would
# throw away the whole campaign over a configuration mistake).
TEMPORARY_HTTP = {401, 403, 408, 409, 425, 429}


def message_id_for(message: OutgoingMessage) -> str:
    """The same ``<…@domain>`` for every attempt at one delivery; unique per installation."""
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2]
    if not domain or domain == "localhost":
        from django.core.mail.utils import DNS_NAME

        domain = str(DNS_NAME)
    digest = salted_hmac("switchboard.message-id", message.idempotency_key, algorithm="sha256").hexdigest()[:16]
    return f"<{message.idempotency_key}.{digest}@{domain}>"


def email_for(message: OutgoingMessage):
    from django.core.mail import EmailMultiAlternatives

    content = message.content
    email = EmailMultiAlternatives(
        subject=content.get("subject", ""),
        body=content.get("text", ""),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[message.to],
        headers={**message.headers, "Message-ID": message_id_for(message)},
    )
    if content.get("html"):
        email.attach_alternative(content["html"], "text/html")
    return email


@dataclass
class Failure:
    """A classified send failure; ``connection_lost`` means the rest of the batch cannot go now."""

    reason: str
    permanent: bool
    connection_lost: bool = False
    retry_after: float | None = None


def _smtp_text(code: int, text) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(str(text).split())}"


def _esp_said(response) -> str:
    """The human-readable part of an ESP's error answer, whatever the ESP calls it."""
    if response is None:
        return ""
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            data = errors[0]
        for key in ("Message", "message", "error", "detail"):
            if isinstance(data.get(key), str):
                return " ".join(data[key].split())
    return " ".join(json.dumps(data).split())[:200]


def _retry_after(response) -> float | None:
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def classify(exc: Exception) -> Failure:
    """Permanent or temporary, with the reason a marketer sees on the delivery."""
    from anymail.exceptions import AnymailAPIError, AnymailError, AnymailRecipientsRefused

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = max(exc.recipients.values(), key=lambda pair: pair[0])
        return Failure(_smtp_text(code, text), permanent=500 <= code < 600, connection_lost=code == 421)
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 421:
        # "Service not available, closing transmission channel": often a per-session cap.
        return Failure(_smtp_text(exc.smtp_code, exc.smtp_error), permanent=False, connection_lost=True)
    if isinstance(exc, (smtplib.SMTPAuthenticationError, smtplib.SMTPSenderRefused)):
        # Our credentials or our sender address: fixable by the operator, so retried.
        return Failure(_smtp_text(exc.smtp_code, exc.smtp_error), permanent=False)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Failure(f"SMTP server disconnected: {exc}", permanent=False, connection_lost=True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return Failure(_smtp_text(exc.smtp_code, exc.smtp_error), permanent=500 <= exc.smtp_code < 600)
    if isinstance(exc, smtplib.SMTPException):
        return Failure(f"SMTP error: {exc}", permanent=False)
    if isinstance(exc, AnymailRecipientsRefused):
        said = _esp_said(exc.response)
        return Failure(f"{exc.esp_name or 'the ESP'} refused the recipient" + (f": {said}" if said else ""),
                       permanent=True)
    if isinstance(exc, AnymailAPIError):
        status = exc.status_code
        reason = " ".join(str(exc).split())
        if status is None:  # no answer at all: network trouble, as for an SMTP server out of reach
            return Failure(reason, permanent=False, connection_lost=True)
        temporary = status >= 500 or status in TEMPORARY_HTTP
        return Failure(reason, permanent=not temporary, retry_after=_retry_after(exc.response))
    if isinstance(exc, (AnymailError, ValueError)):
        # An address or a feature the ESP cannot take: the same message fails every time.
        return Failure(" ".join(str(exc).split()), permanent=True)
    # After anymail's errors: its API errors are requests' HTTPError, itself an OSError.
    if isinstance(exc, OSError):
        return Failure(f"cannot reach the mail server: {exc}", permanent=False, connection_lost=True)
    return Failure(f"{type(exc).__name__}: {exc}", permanent=False)


def _provider_id(email, fallback: str) -> str:
    status = getattr(email, "anymail_status", None)
    message_id = getattr(status, "message_id", None)
    if isinstance(message_id, set):  # one id per recipient; there is one recipient
        message_id = next(iter(sorted(message_id)), None)
    return str(message_id) if message_id else fallback


def _refused_by_esp(email) -> str:
    """Anymail can be told to report refused recipients instead of raising; honour that too."""
    status = getattr(email, "anymail_status", None)
    statuses = getattr(status, "status", None) or set()
    if statuses and statuses <= {"rejected", "invalid"}:
        return f"the email provider refused the recipient ({', '.join(sorted(statuses))})"
    return ""


class DjangoEmail(Provider):
    name = "django"
    channel = "email"

    def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        from django.core.mail import mailers

        results: dict[int, SendResult] = {}
        prepared = []
        for message in messages:
            try:
                prepared.append((message, email_for(message)))
            except Exception as exc:  # an address Django cannot put in a header
                results[message.delivery_id] = self._failed(message, classify(exc))
        mailer = None
        try:
            try:
                mailer = mailers.default
                mailer.open()
            except Exception as exc:  # unreachable server, refused login, or a MAILERS mistake
                failure = classify(exc)
                failure.permanent = False
                for message, _ in prepared:
                    results[message.delivery_id] = self._failed(message, failure)
                prepared = []
            for index, (message, email) in enumerate(prepared):
                result, lost = self._send(mailer, message, email)
                results[message.delivery_id] = result
                if lost:
                    # The server is gone for now: the rest of the batch waits for the next attempt.
                    for later, _ in prepared[index + 1:]:
                        results[later.delivery_id] = SendResult(later.delivery_id, False, error=result.error)
                    break
        finally:
            try:
                if mailer is not None:
                    mailer.close()
            except Exception:  # closing a session that already broke: nothing left to release
                pass
        return [results[m.delivery_id] for m in messages]

    def _send(self, mailer, message: OutgoingMessage, email) -> tuple[SendResult, bool]:
        """Send one email on the open connection; returns the result and whether the server is lost.

        Relays cap the messages per session (421, or a dropped connection): the connection is
        reopened once and the message tried again, so a large batch is not stalled by that cap.
        """
        for attempt in (1, 2):
            try:
                sent = mailer.send_messages([email])
            except Exception as exc:
                failure = classify(exc)
                if failure.connection_lost and attempt == 1:
                    try:
                        mailer.close()
                    except Exception:
                        pass
                    try:
                        mailer.open()
                    except Exception:
                        return self._failed(message, failure), True
                    continue
                return self._failed(message, failure), failure.connection_lost
            break
        refused = _refused_by_esp(email)
        if refused:
            return SendResult(message.delivery_id, False, error=refused, permanent=True), False
        if not sent:
            return SendResult(message.delivery_id, False, error="the mail backend did not send the message"), False
        provider_id = _provider_id(email, email.extra_headers["Message-ID"])
        return SendResult(message.delivery_id, True, provider_message_id=provider_id), False

    @staticmethod
    def _failed(message: OutgoingMessage, failure: Failure) -> SendResult:
        return SendResult(message.delivery_id, False, error=failure.reason, permanent=failure.permanent,
                          retry_after=failure.retry_after)
