from django.apps import AppConfig


class SegmentsConfig(AppConfig):
    name = "segments"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (connects the real-time receivers)
