from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    name = "dashboards"

    def ready(self) -> None:
        from . import publish  # noqa: F401  (publishes counter changes to open dashboards)
