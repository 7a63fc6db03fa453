from django.apps import AppConfig
from django.db.models.signals import post_migrate


def ensure_roles(sender, using="default", **kwargs):
    """Keep the three role groups present (a database flush empties them) and give the
    Admin role every permission, including those of apps added later."""
    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    from .roles import ADMIN, ALL_ROLES

    # post_migrate is sent once per app, and each app's permissions are created on its own
    # turn: run once, on the last app's turn, when every permission exists. (Every test
    # that commits ends with a flush, which sends it again.)
    if sender is not [config for config in apps.get_app_configs() if config.models_module][-1]:
        return

    for name in ALL_ROLES:
        Group.objects.using(using).get_or_create(name=name)
    Group.objects.using(using).get(name=ADMIN).permissions.set(Permission.objects.using(using).all())


class CustomersConfig(AppConfig):
    name = "customers"
    verbose_name = "Customers"

    def ready(self) -> None:
        post_migrate.connect(ensure_roles, dispatch_uid="customers.ensure_roles")
