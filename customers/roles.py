"""The three roles, as Django groups (created by a migration).

Support: customers and timelines. Marketer: everything but Django admin. Admin:
everything. A signed-in user with none of them is refused everywhere.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

MARKETER = "Marketer"
SUPPORT = "Support"
ADMIN = "Admin"
ALL_ROLES = (MARKETER, SUPPORT, ADMIN)


def user_roles(user) -> frozenset[str]:
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_switchboard_roles", None)
    if cached is None:
        names = set(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
        if user.is_superuser:
            names.add(ADMIN)
        cached = user._switchboard_roles = frozenset(names)
    return cached


def has_role(user, *roles: str) -> bool:
    """Admins pass every check; others need one of ``roles``."""
    held = user_roles(user)
    return ADMIN in held or bool(held.intersection(roles))


def can_view_customers(user) -> bool:
    return has_role(user, SUPPORT, MARKETER)


def can_edit_preferences(user) -> bool:
    return has_role(user, SUPPORT, MARKETER)


def can_use_marketing(user) -> bool:
    return has_role(user, MARKETER)


def role_required(*roles: str):
    """Sign-in required; then 403 unless the user holds one of ``roles`` (or is an Admin)."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not has_role(request.user, *roles):
                raise PermissionDenied("Your account has no role that allows this page.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
