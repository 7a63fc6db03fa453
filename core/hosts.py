"""The hosts a request may name, by Django's own rule, for code that runs before Django does."""

from __future__ import annotations

from django.conf import settings


def allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS``, or with DEBUG on and none set, the local names Django then allows
    (``HttpRequest.get_host`` makes the same choice)."""
    return settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
