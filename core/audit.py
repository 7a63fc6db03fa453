"""The audit trail's one writer, and the name it gives whoever acted."""

from __future__ import annotations

from .models import AuditEntry


def audit(*, actor: str, action: str, object_type: str, object_id: object = "", details: dict | None = None) -> None:
    """Record that ``actor`` did ``action`` to an object, in the caller's transaction."""
    AuditEntry.objects.create(
        actor=actor, action=action, object_type=object_type, object_id=str(object_id), details=details or {}
    )


def user_actor(request) -> str:
    """How the audit trail names the signed-in person behind a page's request: their username.

    (Django admin and the API name theirs ``admin:<username>`` and ``api:<key name>``.)"""
    return request.user.get_username()
