from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares: error types, the audit trail, admin and page helpers.

    Imports nothing from the other apps, so any of them can import it."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"
