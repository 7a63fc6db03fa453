"""The provider registry: channel kind → provider name → class, imported on first use.

Which provider a channel uses comes from the environment (``EMAIL_PROVIDER``,
``SMS_PROVIDER``, ``WHATSAPP_PROVIDER``, ``VOICE_PROVIDER``, ``PUSH_PROVIDER``), read into
``settings.PROVIDERS``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .base import DeliveryEvent, OutgoingMessage, Provider, ProviderError, SendResult

REGISTRY: dict[str, dict[str, str]] = {
    "email": {
        "sandbox": "campaigns.providers.sandbox.SandboxEmail",
        "django": "campaigns.providers.email.DjangoEmail",
    },
    "sms": {
        "sandbox": "campaigns.providers.sandbox.SandboxSMS",
        "twilio": "campaigns.providers.twilio.TwilioSMS",
    },
    "whatsapp": {
        "sandbox": "campaigns.providers.sandbox.SandboxWhatsApp",
        "twilio": "campaigns.providers.twilio.TwilioWhatsApp",
    },
    "voice": {
        "sandbox": "campaigns.providers.sandbox.SandboxVoice",
        "twilio": "campaigns.providers.twilio.TwilioVoice",
    },
    "push": {
        "sandbox": "campaigns.providers.sandbox.SandboxPush",
        "fcm": "campaigns.providers.push.FCMPush",
        "webpush": "campaigns.providers.push.WebPush",
    },
}


def provider_class(channel: str, name: str | None = None) -> type[Provider]:
    name = name or settings.PROVIDERS.get(channel, "sandbox")
    try:
        path = REGISTRY[channel][name]
    except KeyError:
        choices = ", ".join(REGISTRY.get(channel, {}))
        raise ImproperlyConfigured(
            f"{channel.upper()}_PROVIDER={name!r} is not a provider for {channel}; choose one of: {choices}"
        ) from None
    return import_string(path)


def provider_for(channel: str, name: str | None = None) -> Provider:
    return provider_class(channel, name)()


__all__ = [
    "REGISTRY",
    "DeliveryEvent",
    "OutgoingMessage",
    "Provider",
    "ProviderError",
    "SendResult",
    "provider_class",
    "provider_for",
]
