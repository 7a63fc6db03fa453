"""Provider webhooks: Twilio status callbacks and inbound messages.

Both are public (no session, no CSRF token) and trust nothing but Twilio's signature:
``X-Twilio-Signature`` is the base64 HMAC-SHA1, keyed with ``TWILIO_AUTH_TOKEN``, of the
exact URL Twilio called followed by every POST parameter as name + value, sorted by name.
The URL is rebuilt from ``SITE_URL`` (the public address Twilio was given in
``StatusCallback``), never from the Host header a proxy passed on.

Status callbacks become :class:`~campaigns.providers.DeliveryEvent` objects for
``delivery_events_apply``, which moves statuses forward only and applies an event id once.
Twilio sends one callback per status change (never one for the initial ``queued``), and
may repeat one: the event id is ``twilio:<sid>:<status>``.

Inbound messages carry replies; STOP and its synonyms unsubscribe the sender's number from
marketing on that channel at once, START / UNSTOP make the number usable again. Twilio
itself blocks a number that sent STOP (error 21610 on the next send), so keeping our own
records in step avoids sending what would fail anyway.
"""

from __future__ import annotations

import base64
import hmac
import logging
from hashlib import sha1
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from customers.models import ChannelKind, Customer, Subscription
from customers.services.preferences import channel_status_set, subscriptions_change

from .models import DeliveryStatus
from .providers import DeliveryEvent
from .services.delivery_events import delivery_events_apply

logger = logging.getLogger(__name__)

PROVIDER = "twilio"
SOURCE = "twilio-inbound"

# MessageStatus / CallStatus → delivery event kind; the statuses not listed are steps on the
# way (accepted, queued, sending, sent, ringing, in-progress, …) and change nothing.
POSITIVE = {"delivered": DeliveryStatus.DELIVERED, "completed": DeliveryStatus.DELIVERED, "read": DeliveryStatus.OPENED}
NEGATIVE = {"undelivered", "failed", "busy", "no-answer", "canceled"}
# Error codes that mean the number itself is unusable: a hard bounce, not a bad day.
BOUNCE_CODES = {21211, 21614, 30005, 30006}
ERROR_TEXT = {
    21211: "invalid 'To' number",
    21610: "the recipient replied STOP",
    21614: "the number is not a mobile number",
    30003: "unreachable destination handset",
    30004: "message blocked",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
    30007: "filtered by the carrier",
    30008: "unknown error",
    63016: "outside WhatsApp's 24-hour window: use an approved template",
}
CALL_TEXT = {"busy": "the line was busy", "no-answer": "nobody answered", "canceled": "the call was cancelled",
             "failed": "the call could not be placed"}

# Twilio's standard opt-out and opt-in keywords: a reply of exactly one of them.
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
START_WORDS = {"START", "UNSTOP"}
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _bad(field: str, message: str) -> JsonResponse:
    return JsonResponse({"message": "The webhook was not accepted; nothing was written.",
                         "errors": [{"field": field, "message": message}]}, status=400)


def _urls(url: str) -> list[str]:
    """The URL as given, and with the default port added or removed: Twilio signs either."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    if parts.port:
        other = parts._replace(netloc=parts.hostname + ("" if parts.port == default else f":{parts.port}"))
    else:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    return list(dict.fromkeys([url, urlunsplit(other)]))


def _signature(token: str, url: str, params: dict[str, list[str]]) -> str:
    payload = url + "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), sha1).digest()).decode()


def _verified(request) -> tuple[dict[str, str], JsonResponse | None]:
    """The POST parameters when Twilio's signature checks out; otherwise the response to give."""
    try:
        params = {name: values for name, values in request.POST.lists()}
    except (MultiPartParserError, ValueError) as exc:
        return {}, _bad("body", f"expected form-encoded fields: {exc}")
    given = request.headers.get("X-Twilio-Signature", "")
    token = settings.TWILIO_AUTH_TOKEN
    if not token:
        logger.warning("A Twilio webhook arrived but TWILIO_AUTH_TOKEN is not set, so it cannot be verified")
    valid = bool(token and given) and any(
        hmac.compare_digest(_signature(token, url, params), given)
        for url in _urls(settings.SITE_URL + request.get_full_path())
    )
    if not valid:
        return {}, JsonResponse({"message": "Missing or invalid X-Twilio-Signature."}, status=403)
    return {name: values[-1].strip() for name, values in params.items()}, None


def _event(params: dict[str, str]) -> DeliveryEvent | JsonResponse | None:
    """The delivery event a status callback reports, a 400 for a malformed one, or None."""
    sid = params.get("MessageSid") or params.get("CallSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("CallStatus") or params.get("SmsStatus") or "").lower()
    if not sid:
        return _bad("MessageSid", "a status callback names the message (MessageSid) or call (CallSid)")
    if len(sid) > 64 or not sid.replace("-", "").isalnum():
        return _bad("MessageSid", f"'{sid[:70]}' is not a message or call SID")
    if not status:
        return _bad("MessageStatus", "a status callback carries MessageStatus (or CallStatus)")
    raw_code = params.get("ErrorCode", "")
    if raw_code and not raw_code.isdigit():
        return _bad("ErrorCode", f"'{raw_code[:20]}' is not a Twilio error code")
    code = int(raw_code) if raw_code else None
    if status in POSITIVE:
        kind, reason = POSITIVE[status], ""
    elif status in NEGATIVE:
        kind = DeliveryStatus.BOUNCED if code in BOUNCE_CODES else DeliveryStatus.FAILED
        if code:
            reason = f"Twilio {code}: {params.get('ErrorMessage') or ERROR_TEXT.get(code, status)}"
        else:
            reason = params.get("ErrorMessage") or CALL_TEXT.get(status, status)
    else:
        return None
    return DeliveryEvent(kind, occurred_at=timezone.now(), provider=PROVIDER, provider_message_id=sid,
                         event_id=f"twilio:{sid}:{status}", reason=reason)


@csrf_exempt
@require_POST
def twilio_status(request):
    """Twilio's StatusCallback for messages and calls: delivered, read, failed, bounced."""
    params, refused = _verified(request)
    if refused:
        return refused
    event = _event(params)
    if isinstance(event, JsonResponse):
        return event
    if event is not None:
        delivery_events_apply(events=[event])
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request):
    """A message to one of our numbers: STOP unsubscribes the sender, START resumes; answers empty TwiML."""
    params, refused = _verified(request)
    if refused:
        return refused
    sender = params.get("From", "")
    if not sender:
        return _bad("From", "an inbound message names its sender (From)")
    channel = ChannelKind.WHATSAPP if sender.startswith("whatsapp:") else ChannelKind.SMS
    phone = sender.removeprefix("whatsapp:").strip()
    word = params.get("Body", "").strip().upper()
    # With Advanced Opt-Out, Twilio names the keyword's meaning itself (custom keywords included).
    meaning = params.get("OptOutType", "").upper()
    if word in STOP_WORDS or meaning == "STOP":
        _opt_out(phone=phone, channel=channel)
    elif word in START_WORDS or meaning == "START":
        _opt_in(phone=phone, channel=channel)
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")


def _opt_out(*, phone: str, channel: str) -> None:
    """Stop marketing to every customer with this number on ``channel``, now."""
    with transaction.atomic():
        customers = list(Customer.objects.filter(phone=phone)) if phone else []
        if not customers:
            logger.info("STOP from %s matches no customer", phone)
            return
        ids = {customer.pk for customer in customers}
        channel_status_set(customer_ids=ids, channel=channel, status="unsubscribed", reason="replied STOP",
                           source=SOURCE)
        topics: dict[int, list[str]] = {}
        for customer_id, key in Subscription.objects.filter(
            customer_id__in=ids, channel=channel, subscribed=True, topic__is_transactional=False
        ).values_list("customer_id", "topic__key"):
            topics.setdefault(customer_id, []).append(key)
        for customer in customers:
            changes = [{"topic": key, "channel": channel, "subscribed": False} for key in topics.get(customer.pk, [])]
            if changes:
                subscriptions_change(customer=customer, changes=changes, source=SOURCE,
                                     actor=f"customer {phone}", reason="replied STOP")


def _opt_in(*, phone: str, channel: str) -> None:
    """The number may be messaged again; topic subscriptions stay as the customer left them."""
    ids = set(Customer.objects.filter(phone=phone).values_list("pk", flat=True)) if phone else set()
    channel_status_set(customer_ids=ids, channel=channel, status="ok", reason="replied START", source=SOURCE)
