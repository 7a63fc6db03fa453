"""Answering htmx requests: the partial a page asked for, or the whole page.

Partials are defined inside their page with ``{% partialdef %}`` and named
``"<template>#<partial>"``; a view renders the page for a normal request and the partial
for an htmx one.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.template.loader import render_to_string


def wants_partial(request) -> bool:
    """Whether to answer with a partial rather than the whole page.

    Assumes django-htmx's middleware (``request.htmx``)."""
    # A history-restore request comes from htmx but needs the whole page back.
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_partials(request, names: list[str], context: dict, status: int = 200) -> HttpResponse:
    """The partials ``names``, one after another in one response.

    The first is swapped into the request's target; every later one is rendered with
    ``oob`` true, which its template turns into an out-of-band swap by element id.
    """
    html = "".join(
        render_to_string(name, {**context, "oob": index > 0}, request=request) for index, name in enumerate(names)
    )
    return HttpResponse(html, status=status)
