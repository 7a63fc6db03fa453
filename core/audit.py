"""The audit trail's one writer."""

from __future__ import annotations

from .models import AuditEntry


def audit(*, actor: str, action: str, object_type: str, object_id: object = "", details: dict | None = None) -> None:
    """Record that ``actor`` did ``action`` to an object, in the caller's transaction."""
    AuditEntry.objects.create(
        actor=actor, action=action, object_type=object_type, object_id=str(object_id), details=details or {}
    )
