"""Sign-in writes: the audit of sign-ins."""

from __future__ import annotations

from customers.services import audit


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
