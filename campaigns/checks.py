"""Deployment checks: refuse to run production with provider webhooks anyone could call."""

import logging

from django.conf import settings
from django.core.checks import Error, Tags, register

logger = logging.getLogger(__name__)


def _unprotected_webhooks() -> list[tuple[str, str, str]]:
    """(message, hint, check id) for each provider webhook that cannot verify its sender."""
    problems = []
    uses_esp = "anymail" in settings.MAILERS.get("default", {}).get("BACKEND", "")
    if settings.PROVIDERS.get("email") == "django" and uses_esp and not settings.ANYMAIL.get("WEBHOOK_SECRET"):
        problems.append((
            "ANYMAIL_WEBHOOK_SECRET is not set: anyone could post tracking events (bounces, complaints) "
            "to /webhooks/anymail/.",
            "Set ANYMAIL_WEBHOOK_SECRET=user:password and give the same credentials to your ESP's webhook.",
            "switchboard.E001",
        ))
    twilio = [channel for channel in ("sms", "whatsapp", "voice") if settings.PROVIDERS.get(channel) == "twilio"]
    if twilio and not settings.TWILIO_AUTH_TOKEN:
        problems.append((
            f"{', '.join(c.upper() for c in twilio)}_PROVIDER=twilio needs TWILIO_AUTH_TOKEN, which also verifies "
            "Twilio's callbacks.",
            "",
            "switchboard.E002",
        ))
    return problems


@register(Tags.security, deploy=True)
def webhooks_protected(app_configs, **kwargs):
    return [Error(message, hint=hint or None, id=check_id) for message, hint, check_id in _unprotected_webhooks()]


def warn_unprotected_webhooks() -> None:
    """At startup in production: say which webhooks answer every call with a refusal, and why.

    ``check --deploy`` is not run by every deployment, so the server says it too; the
    webhooks themselves refuse what they cannot verify (campaigns/webhooks.py).
    """
    if settings.DEBUG:
        return
    for message, hint, check_id in _unprotected_webhooks():
        logger.warning("%s Those webhooks refuse every call until it is set. %s (%s)", message, hint, check_id)
