"""Sign-in pages that differ from Django's own: the lockout page."""

from __future__ import annotations

from axes.helpers import get_client_username, get_cool_off
from django.shortcuts import render

LOCKED_OUT_TEMPLATE = "registration/locked_out.html"


def locked_out(request, original_response=None, credentials=None):
    """What a locked-out client sees, on the sign-in page and Django admin's (AXES_LOCKOUT_CALLABLE)."""
    cool_off = get_cool_off(request)
    minutes = max(1, round(cool_off.total_seconds() / 60)) if cool_off else None
    context = {"username": get_client_username(request, credentials) or "", "minutes": minutes}
    return render(request, LOCKED_OUT_TEMPLATE, context, status=429)
