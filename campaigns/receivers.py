"""Conversions are attributed as goal events arrive, right after they commit, whichever
path wrote them (the API, a Segment-compatible source, the platform itself)."""

import logging

from django.dispatch import receiver

from customers.signals import customers_changed

from .services.delivery_events import conversions_attribute

logger = logging.getLogger(__name__)


@receiver(customers_changed, dispatch_uid="campaigns.on_customers_changed")
def on_customers_changed(sender, change, **kwargs):
    if not change.by_name:
        return
    try:
        conversions_attribute(customer_ids=set(change.customer_ids), names=set(change.names))
    except Exception:
        logger.exception("conversion attribution failed; queued for the background workers")
        from django_q.tasks import async_task

        async_task("campaigns.tasks.attribute_conversions", sorted(change.customer_ids), sorted(change.names))
