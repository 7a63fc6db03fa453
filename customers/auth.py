from datetime import timedelta

from django.utils import timezone
from ninja.security import HttpBearer

from .models import ApiKey


def _touch(key: ApiKey) -> None:
    now = timezone.now()
    # Recording every use would add a write to every request; once a minute is enough.
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)


class ApiKeyAuth(HttpBearer):
    """``Authorization: Bearer sb_…``: an active API key, looked up by its SHA-256.

    Only keys of the ``api`` scope: a source's write key is public (it ships inside web pages
    and apps) and must never open the JSON API."""

    def authenticate(self, request, token: str):
        if not token:
            return None
        key = ApiKey.objects.active().filter(key_hash=ApiKey.hash(token), scope=ApiKey.Scope.API).first()
        if key is None:
            return None
        _touch(key)
        return key


def write_key_check(raw: str) -> ApiKey | None:
    """The active source write key ``raw``, or None (a JSON API key is not a write key)."""
    if not raw or len(raw) > 200 or "\x00" in raw:
        return None
    key = ApiKey.objects.active().filter(key_hash=ApiKey.hash(raw), scope=ApiKey.Scope.SOURCE).first()
    if key is not None:
        _touch(key)
    return key


def api_actor(request) -> str:
    return f"api:{request.auth.name}"
