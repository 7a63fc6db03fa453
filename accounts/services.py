"""Sign-in writes: the audit of sign-ins and the password-reset limits."""

from __future__ import annotations

from django.conf import settings

from customers.limits import email_request_allow
from core.audit import audit

PASSWORD_RESET = "password-reset"


def client_details(request) -> dict:
    """Where a sign-in event came from, as recorded in the audit trail (never the password)."""
    from axes.helpers import get_client_ip_address

    if request is None:
        return {}
    return {
        "ip": get_client_ip_address(request) or "",
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:255],
        "path": request.path[:255],
    }


def signin_audit(*, action: str, username: str, user_id: object = "", request=None, **details) -> None:
    """One sign-in event (``user.logged_in``, ``user.login_failed`` …) in the audit trail."""
    username = (username or "")[:150]
    audit(actor=username or "anonymous", action=action, object_type="user", object_id=user_id,
          details={"username": username, **client_details(request), **details})


def password_reset_allow(*, email: str, ip_address: str) -> bool:
    """Record a password-reset request; True if it is within the limits and may send:
    ``PASSWORD_RESET_LIMIT_PER_ADDRESS`` emails per address and
    ``PASSWORD_RESET_LIMIT_PER_CLIENT`` requests per client within ``PASSWORD_RESET_WINDOW``."""
    return email_request_allow(
        purpose=PASSWORD_RESET, email=email, ip_address=ip_address,
        per_address=settings.PASSWORD_RESET_LIMIT_PER_ADDRESS, per_client=settings.PASSWORD_RESET_LIMIT_PER_CLIENT,
        window=settings.PASSWORD_RESET_WINDOW,
    )
