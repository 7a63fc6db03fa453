"""Tracking, unsubscribe, preference centre and provider webhooks (public, token-signed)."""

from django.http import HttpResponse


def _todo(request, *args, **kwargs):
    return HttpResponse(status=501)


open_pixel = click = unsubscribe = preferences = _todo
