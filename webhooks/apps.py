from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (connects the event-stream receiver)
