"""Sign-in writes: the audit of sign-ins and the password-reset limits."""

from __future__ import annotations

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from customers.services import audit

from .models import PasswordResetRequest

# pg_advisory_xact_lock(class, key): the class keeps these locks apart from any other use.
RESET_LOCK_CLASS = 7301


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


def _address_key(email: str) -> str:
    return salted_hmac("accounts.password-reset", email.strip().lower(), algorithm="sha256").hexdigest()


def password_reset_allow(*, email: str, ip_address: str) -> bool:
    """Record a password-reset request; True if it is within the limits and may send.

    At most ``PASSWORD_RESET_LIMIT_PER_ADDRESS`` allowed requests per address and
    ``PASSWORD_RESET_LIMIT_PER_CLIENT`` requests of any kind per client address within
    ``PASSWORD_RESET_WINDOW``. Counted in the database, so every web process shares the count.
    """
    key = _address_key(email)
    since = timezone.now() - settings.PASSWORD_RESET_WINDOW
    with transaction.atomic():
        # Requests for the same address or from the same client wait for each other, so two
        # at once cannot both take the last allowed one. Always address first, then client.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s)), pg_advisory_xact_lock(%s, hashtext(%s))",
                [RESET_LOCK_CLASS, "address:" + key, RESET_LOCK_CLASS, "client:" + ip_address],
            )
        # Rows older than the window count for nothing: keep the table to one window.
        PasswordResetRequest.objects.filter(requested_at__lt=since).delete()
        counts = PasswordResetRequest.objects.filter(requested_at__gte=since).aggregate(
            address=Count("pk", filter=Q(address_key=key, allowed=True)),
            client=Count("pk", filter=Q(ip_address=ip_address)),
        )
        allowed = (counts["address"] < settings.PASSWORD_RESET_LIMIT_PER_ADDRESS
                   and counts["client"] < settings.PASSWORD_RESET_LIMIT_PER_CLIENT)
        PasswordResetRequest.objects.create(address_key=key, ip_address=ip_address, allowed=allowed)
    return allowed
