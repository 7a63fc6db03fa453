"""Deployment checks: refuse to run production with provider webhooks anyone could call."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def webhooks_protected(app_configs, **kwargs):
    errors = []
    uses_esp = "anymail" in settings.MAILERS.get("default", {}).get("BACKEND", "")
    if settings.PROVIDERS.get("email") == "django" and uses_esp and not settings.ANYMAIL.get("WEBHOOK_SECRET"):
        errors.append(Error(
            "ANYMAIL_WEBHOOK_SECRET is not set: anyone could post tracking events (bounces, complaints) "
            "to /webhooks/anymail/.",
            hint="Set ANYMAIL_WEBHOOK_SECRET=user:password and give the same credentials to your ESP's webhook.",
            id="switchboard.E001",
        ))
    twilio = [channel for channel in ("sms", "whatsapp", "voice") if settings.PROVIDERS.get(channel) == "twilio"]
    if twilio and not settings.TWILIO_AUTH_TOKEN:
        errors.append(Error(
            f"{', '.join(c.upper() for c in twilio)}_PROVIDER=twilio needs TWILIO_AUTH_TOKEN, which also verifies "
            "Twilio's callbacks.",
            id="switchboard.E002",
        ))
    return errors
