from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (attributes conversions as goal events arrive)
        from . import checks, email_tracking  # noqa: F401  (deploy checks; ESP webhooks → delivery events)

        checks.warn_unprotected_webhooks()
