"""Outgoing webhooks listen to the one event stream: each committed change becomes messages
in the outboxes of the endpoints that want its events, and their senders are kicked.

If writing the messages fails, the change is handed to a background task, which writes
them (a timeline row reaches an endpoint once, however often it is tried).
"""

import logging

from django.dispatch import receiver

from customers.signals import customers_changed

from . import outbox
from .sender import kick

logger = logging.getLogger(__name__)


def _serialized(change) -> dict:
    return {
        "by_name": {name: sorted(ids) for name, ids in change.by_name.items()},
        "event_ids": {name: list(span) for name, span in change.event_ids.items()},
        "memberships": [[name, segment, sorted(ids)] for (name, segment), ids in change.memberships.items()],
    }


@receiver(customers_changed, dispatch_uid="webhooks.on_customers_changed")
def on_customers_changed(sender, change, **kwargs):
    try:
        written = outbox.enqueue(change)
    except Exception:
        logger.exception("enqueueing webhook messages failed; queued for the background workers")
        from django_q.tasks import async_task

        async_task("webhooks.tasks.enqueue", _serialized(change), group="webhooks")
        return
    if written:
        kick(written)
