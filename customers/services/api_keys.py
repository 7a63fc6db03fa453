"""The keys the JSON API and the Segment-compatible source API are called with."""

from __future__ import annotations

from django.utils import timezone

from core.audit import audit

from ..models import ApiKey


def api_key_create(*, name: str, scope: str = ApiKey.Scope.API, created_by=None) -> tuple[ApiKey, str]:
    """Create a key of ``scope`` (``api`` for /api/v1/, ``source`` for a write key on /v1/);
    returns it with the raw key, which is never stored or shown again."""
    scope = ApiKey.Scope(scope)
    raw = ApiKey.generate(scope)
    key = ApiKey.objects.create(
        name=name, scope=scope, prefix=raw[:10], key_hash=ApiKey.hash(raw), created_by=created_by
    )
    audit(actor=str(created_by or "system"), action="api_key.created", object_type="api_key", object_id=key.pk,
          details={"name": name, "scope": scope.value})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: str) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    audit(actor=actor, action="api_key.revoked", object_type="api_key", object_id=key.pk)
