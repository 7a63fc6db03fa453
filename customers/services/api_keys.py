"""The keys the JSON API is called with."""

from __future__ import annotations

from django.utils import timezone

from core.audit import audit

from ..models import ApiKey


def api_key_create(*, name: str, created_by=None) -> tuple[ApiKey, str]:
    """Create an API key; returns it with the raw key, which is never stored or shown again."""
    raw = ApiKey.generate()
    key = ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=ApiKey.hash(raw), created_by=created_by)
    audit(actor=str(created_by or "system"), action="api_key.created", object_type="api_key", object_id=key.pk,
          details={"name": name})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: str) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    audit(actor=actor, action="api_key.revoked", object_type="api_key", object_id=key.pk)
