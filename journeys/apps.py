from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "journeys"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (connects the event-stream receiver)
