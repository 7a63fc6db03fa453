from django.apps import AppConfig
from django.db.models.signals import post_migrate


def grant_admin_permissions(sender, using="default", **kwargs):
    """Give the Admin role every permission, including those of apps added later."""
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.using(using).filter(name="Admin").first()
    if group is not None:
        group.permissions.set(Permission.objects.using(using).all())


class CustomersConfig(AppConfig):
    name = "customers"
    verbose_name = "Customers"

    def ready(self) -> None:
        post_migrate.connect(grant_admin_permissions, dispatch_uid="customers.grant_admin_permissions")
