"""Keep segments true in real time: re-evaluate what a committed change can affect.

Runs right after the change commits, in the process that made it, for just the customers
concerned and just the segments whose rules read what changed. If it fails, the change
stays committed and the work is handed to a background task.
"""

import logging

from django.dispatch import receiver

from customers.signals import customers_changed, events_ingested

from . import services

logger = logging.getLogger(__name__)


def _refresh(customer_ids: set[int], segment_ids: list[int]) -> None:
    if not segment_ids or not customer_ids:
        return
    try:
        services.segments_refresh_for(customer_ids=customer_ids, segment_ids=segment_ids)
    except Exception:
        logger.exception("real-time segment update failed; queued for the background workers")
        from django_q.tasks import async_task

        async_task("segments.tasks.refresh", sorted(customer_ids), segment_ids)


@receiver(events_ingested, dispatch_uid="segments.on_events")
def on_events(sender, customer_ids, names, **kwargs):
    _refresh(customer_ids, services.segments_affected(event_names=names))


@receiver(customers_changed, dispatch_uid="segments.on_customers_changed")
def on_customers_changed(sender, customer_ids, fields, created=False, **kwargs):
    _refresh(customer_ids, services.segments_affected(fields=fields, created=created))
