from .roles import can_use_marketing, can_view_customers, user_roles


def roles(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "user_roles": sorted(user_roles(user)),
        "nav_customers": can_view_customers(user),
        "nav_marketing": can_use_marketing(user),
        "nav_admin": user.is_staff,
    }
