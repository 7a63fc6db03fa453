from datetime import timedelta

from django.utils import timezone
from ninja.security import HttpBearer

from .models import ApiKey


class ApiKeyAuth(HttpBearer):
    """``Authorization: Bearer sb_…``: an active API key, looked up by its SHA-256."""

    def authenticate(self, request, token: str):
        if not token:
            return None
        key = ApiKey.objects.active().filter(key_hash=ApiKey.hash(token)).first()
        if key is None:
            return None
        now = timezone.now()
        # Recording every use would add a write to every request; once a minute is enough.
        if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key


def api_actor(request) -> str:
    return f"api:{request.auth.name}"
