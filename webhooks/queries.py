"""Reads of endpoints and their delivery logs."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import Http404

from .models import Attempt, Endpoint, Message


def endpoint_get(endpoint_id: int) -> Endpoint:
    endpoint = Endpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise Http404(f"No webhook endpoint has id {endpoint_id}.")
    return endpoint


def endpoint_list() -> list[Endpoint]:
    return list(Endpoint.objects.order_by("id"))


def message_get(endpoint: Endpoint, message_id: int) -> Message:
    message = Message.objects.filter(pk=message_id, endpoint=endpoint).first()
    if message is None:
        raise Http404(f"Webhook endpoint {endpoint.pk} has no delivery with id {message_id}.")
    return message


@dataclass(frozen=True)
class DeliveriesPage:
    messages: list[Message]
    next_cursor: int | None


def deliveries_page(endpoint: Endpoint, *, limit: int = 50, cursor: int | None = None) -> DeliveriesPage:
    """The endpoint's messages, newest first, after ``cursor`` (the last id of the previous page)."""
    queryset = Message.objects.filter(endpoint=endpoint).order_by("-id")
    if cursor is not None:
        queryset = queryset.filter(id__lt=cursor)
    found = list(queryset[: limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return DeliveriesPage(found, found[-1].pk if more and found else None)


def attempts_of(message: Message, *, limit: int = 50) -> list[Attempt]:
    return list(Attempt.objects.filter(message=message).order_by("-id")[:limit])
