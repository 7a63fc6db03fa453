"""Keep segments true in real time: re-evaluate what a committed change can affect.

Runs right after the change commits, in the process that made it, for just the customers
concerned and just the segments whose rules read what changed, whichever app wrote it (an
ingested event, a message opened, a preference changed in admin, another segment
entered). If it fails, the change stays committed and the work is handed to a background
task.
"""

import contextvars
import logging

from django.dispatch import receiver

from customers.signals import customers_changed

from . import services

logger = logging.getLogger(__name__)

# A segment whose rules read ``segment.entered`` events changes when another segment does,
# and its own entries are a change again. Each round follows from the previous one; a rule
# set that keeps changing after this many rounds finishes in the background instead.
MAX_ROUNDS = 8
_round = contextvars.ContextVar("segments_round", default=0)


def _queue(customer_ids, segment_ids) -> None:
    from django_q.tasks import async_task

    async_task("segments.tasks.refresh", sorted(customer_ids), segment_ids)


@receiver(customers_changed, dispatch_uid="segments.on_customers_changed")
def on_customers_changed(sender, change, **kwargs):
    segment_ids = services.segments_affected(
        event_names=change.names, fields=change.fields, created=bool(change.created)
    )
    if not segment_ids:
        return
    depth = _round.get()
    if depth >= MAX_ROUNDS:
        logger.warning("segments still changing after %s rounds; the rest runs in the background", depth)
        _queue(change.customer_ids, segment_ids)
        return
    token = _round.set(depth + 1)
    try:
        services.segments_refresh_for(customer_ids=change.customer_ids, segment_ids=segment_ids)
    except Exception:
        logger.exception("real-time segment update failed; queued for the background workers")
        _queue(change.customer_ids, segment_ids)
    finally:
        _round.reset(token)
