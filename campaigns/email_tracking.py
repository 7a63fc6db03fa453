"""ESP webhooks, through anymail's ``tracking`` signal, into the one delivery-event handler.

anymail has already checked the webhook's basic auth (``ANYMAIL["WEBHOOK_SECRET"]``) and
normalised the ESP's payload. A receiver that raises makes the ESP deliver the webhook
again, so this one is quick (one lookup, one transaction) and idempotent: each ESP event
carries an id, applied once however often it arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging

from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.signals import tracking
from anymail.webhooks.base import AnymailCoreWebhookView
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.conf import settings
from django.http import HttpResponseNotFound, JsonResponse
from django.urls import URLPattern
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from django.utils import timezone

from customers.validation import EARLIEST

from .models import DeliveryStatus
from .providers import DeliveryEvent
from .providers.email import DjangoEmail

logger = logging.getLogger(__name__)

# anymail's normalised event types → delivery event kinds; the rest (queued, sent,
# deferred, autoresponded, subscribed, unknown) say nothing a marketer counts.
KINDS = {
    "delivered": DeliveryStatus.DELIVERED,
    "opened": DeliveryStatus.OPENED,
    "clicked": DeliveryStatus.CLICKED,
    "bounced": DeliveryStatus.BOUNCED,
    "complained": DeliveryStatus.COMPLAINED,
    "unsubscribed": DeliveryStatus.UNSUBSCRIBED,
    "rejected": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
}

# Some ESPs report soft bounces as "bounced" and say so only in their own fields. A soft
# bounce is followed by a delivery or a hard bounce, so it must not make an address unusable.
SOFT_BOUNCE_MARKERS = ("soft", "transient", "dnserror", "temporary")


class MalformedWebhook(AnymailWebhookValidationFailure):
    """A webhook body the ESP's parser could not read: Django answers 400 (SuspiciousOperation)."""


class _Guarded:
    """Mixed into every anymail webhook view.

    - With DEBUG off, every call is refused (503) while ``ANYMAIL["WEBHOOK_SECRET"]`` is
      unset: anymail would accept any post, and a forged bounce or complaint would make a
      customer's address unusable. The development server (DEBUG on) keeps them open for
      trying an ESP out; ``campaigns.checks`` warns at startup and fails ``check --deploy``.
    - A body that fails validation or parsing with any error is the sender's fault (400),
      not ours (500, which makes the ESP retry it forever). Errors in our own signal
      receivers still answer 500, so real events are delivered again.
    - The webhook of an ESP that is not configured here (no signing key, its package not
      installed) answers 404 instead of raising ImproperlyConfigured.
    """

    unavailable: ImproperlyConfigured | None = None

    def __init__(self, **kwargs):
        try:
            super().__init__(**kwargs)
        except ImproperlyConfigured as exc:
            self.unavailable = exc

    @method_decorator(csrf_exempt)
    @method_decorator(login_not_required)
    def dispatch(self, request, *args, **kwargs):
        if not settings.DEBUG and not settings.ANYMAIL.get("WEBHOOK_SECRET"):
            logger.warning("Refused an ESP webhook at %s: ANYMAIL_WEBHOOK_SECRET is not set", request.path)
            return JsonResponse({
                "message": "ESP webhooks are turned off: ANYMAIL_WEBHOOK_SECRET is not set on this server, so "
                           "their sender could not be checked. Nothing was written.",
            }, status=503)
        if self.unavailable is not None:
            logger.warning("webhook for an ESP that is not configured: %s (%s)", request.path, self.unavailable)
            return HttpResponseNotFound("This ESP's webhook is not configured here.", content_type="text/plain")
        return super().dispatch(request, *args, **kwargs)

    def run_validators(self, request):
        try:
            super().run_validators(request)
        except AnymailWebhookValidationFailure:
            raise
        except Exception as exc:
            raise MalformedWebhook(f"{self.esp_name} webhook could not be read: {exc!r}") from exc

    def parse_events(self, request):
        try:
            # list(): a parser may be a generator that fails only while iterated.
            return list(super().parse_events(request))
        except AnymailWebhookValidationFailure:
            raise
        except Exception as exc:
            raise MalformedWebhook(f"{self.esp_name} webhook could not be read: {exc!r}") from exc


def webhook_urls():
    """anymail's URL patterns (one per ESP and kind), each view guarded as :class:`_Guarded`
    says; for ``include()`` in place of ``"anymail.urls"``."""
    from anymail import urls

    patterns = []
    for pattern in urls.urlpatterns:
        view_class = getattr(pattern.callback, "view_class", None)
        if view_class is not None and issubclass(view_class, AnymailCoreWebhookView):
            guarded = type(view_class.__name__, (_Guarded, view_class), {})
            callback = guarded.as_view(**getattr(pattern.callback, "view_initkwargs", {}))
            pattern = URLPattern(pattern.pattern, callback, pattern.default_args, pattern.name)
        patterns.append(pattern)
    return patterns, urls.app_name


def _is_soft_bounce(esp_event) -> bool:
    if not isinstance(esp_event, dict):
        return False
    fields = [esp_event.get(key) for key in ("Type", "type", "event", "Event", "bounce_type", "severity")]
    data = esp_event.get("data")
    if isinstance(data, dict):  # MailerSend nests its event
        fields.append(data.get("type"))
    text = " ".join(str(value).lower().replace("_", "") for value in fields if value)
    return any(marker in text for marker in SOFT_BOUNCE_MARKERS)


def _event_id(event, esp_name: str) -> str:
    """The ESP's event id, or for ESPs that send none (Postmark opens and deliveries) a hash
    of the raw event, so a redelivered webhook is still recognised."""
    if event.event_id:
        key = f"anymail:{esp_name.lower()}:{event.event_id}"
        if len(key) <= 255:
            return key
        raw = key
    else:
        raw = json.dumps(event.esp_event, sort_keys=True, default=str)
    return f"anymail:{esp_name.lower()}:sha256:{hashlib.sha256(raw.encode()).hexdigest()}"


def _delivery_for(message_id: str):
    """Our delivery for an ESP message id (SMTP Message-IDs may come with or without <>)."""
    from .models import Delivery

    bare = message_id.strip().strip("<>")
    candidates = {message_id, bare, f"<{bare}>"}
    return (
        Delivery.objects.filter(provider=DjangoEmail.name, provider_message_id__in=candidates)
        .values("id", "customer_id", "topic__key", "channel")
        .first()
    )


def _moment(timestamp):
    """The ESP's event time, or now when it has none or an impossible one (ahead of our
    clock, or before 1970): the timeline only stores times in that window."""
    now = timezone.now()
    if timestamp is None or timestamp.tzinfo is None or not EARLIEST <= timestamp <= now:
        return now
    return timestamp


@receiver(tracking, dispatch_uid="campaigns.email_tracking")
def on_tracking(sender, event, esp_name, **kwargs) -> None:
    from .services.delivery_events import delivery_events_apply

    kind = KINDS.get(event.event_type)
    if kind is None or not event.message_id:
        return
    if kind == DeliveryStatus.BOUNCED and _is_soft_bounce(event.esp_event):
        return
    delivery = _delivery_for(str(event.message_id))
    if delivery is None:
        # Mail we did not send as a delivery (password resets through the same ESP, say).
        logger.debug("%s %s event for unknown message %s", esp_name, event.event_type, event.message_id)
        return
    reason = event.description or event.mta_response or event.reject_reason or ""
    delivery_events_apply(events=[
        DeliveryEvent(
            kind=kind,
            occurred_at=_moment(event.timestamp),
            delivery_id=delivery["id"],
            provider=DjangoEmail.name,
            provider_message_id=str(event.message_id),
            event_id=_event_id(event, esp_name),
            reason=str(reason),
            url=event.click_url or "",
        )
    ])
    if kind == DeliveryStatus.UNSUBSCRIBED:
        _unsubscribe(delivery, esp_name=esp_name, reason=str(reason))


def _unsubscribe(delivery: dict, *, esp_name: str, reason: str) -> None:
    """An unsubscribe at the ESP (its link, or the mailbox's one-click button) is an opt-out
    from that delivery's topic by email, as if made in our preference centre."""
    from customers.models import Customer
    from customers.services.preferences import subscriptions_change

    customer = Customer.objects.filter(pk=delivery["customer_id"]).first()
    if customer is None:
        return
    subscriptions_change(
        customer=customer,
        changes=[{"topic": delivery["topic__key"], "channel": "email", "subscribed": False}],
        source="email_provider",
        actor=f"anymail:{esp_name.lower()}",
        reason=reason or f"unsubscribed at {esp_name}",
    )
