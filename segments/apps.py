from django.apps import AppConfig


class SegmentsConfig(AppConfig):
    name = "segments"

    def ready(self) -> None:
        from customers import timeline

        from . import history, receivers  # noqa: F401  (connects the real-time receivers)

        timeline.register_source(history.EVENTS_SQL)
