"""Conversions are attributed as goal events arrive, right after they commit."""

import logging

from django.dispatch import receiver

from customers.signals import events_ingested

from . import services

logger = logging.getLogger(__name__)


@receiver(events_ingested, dispatch_uid="campaigns.on_events")
def on_events(sender, customer_ids, names, **kwargs):
    try:
        services.conversions_attribute(customer_ids=customer_ids, names=names)
    except Exception:
        logger.exception("conversion attribution failed; queued for the background workers")
        from django_q.tasks import async_task

        async_task("campaigns.tasks.attribute_conversions", sorted(customer_ids), sorted(names))
