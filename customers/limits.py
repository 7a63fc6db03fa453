"""Limits on public forms that email an address (password resets, fresh preference links).

Counted in the database, so every web process shares the count, with or without Redis.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .models import EmailRequest

# pg_advisory_xact_lock(class, key): the class keeps these locks apart from any other use.
LOCK_CLASS = 7301


def _address_key(purpose: str, email: str) -> str:
    return salted_hmac(f"customers.email-request.{purpose}", email.strip().lower(), algorithm="sha256").hexdigest()


def email_request_allow(
    *, purpose: str, email: str, ip_address: str = "", per_address: int, per_client: int | None = None,
    window: timedelta,
) -> bool:
    """Record a request to email ``email`` for ``purpose``; True if it is within the limits.

    At most ``per_address`` allowed requests per address and, when given, ``per_client``
    requests of any kind per client address for ``purpose`` within ``window``.
    """
    key = _address_key(purpose, email)
    since = timezone.now() - window
    with transaction.atomic():
        # Requests for the same address or from the same client wait for each other, so two
        # at once cannot both take the last allowed one. Always address first, then client.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s)), pg_advisory_xact_lock(%s, hashtext(%s))",
                [LOCK_CLASS, f"{purpose}:address:{key}", LOCK_CLASS, f"{purpose}:client:{ip_address}"],
            )
        requests = EmailRequest.objects.filter(purpose=purpose)
        # Rows older than the window count for nothing: keep the table to one window.
        requests.filter(requested_at__lt=since).delete()
        counts = requests.filter(requested_at__gte=since).aggregate(
            address=Count("pk", filter=Q(address_key=key, allowed=True)),
            client=Count("pk", filter=Q(ip_address=ip_address)),
        )
        allowed = counts["address"] < per_address and (per_client is None or counts["client"] < per_client)
        EmailRequest.objects.create(purpose=purpose, address_key=key, ip_address=ip_address, allowed=allowed)
    return allowed
