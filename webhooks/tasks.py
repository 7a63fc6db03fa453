"""django-q2 entry points: thin, take ids, safe to run twice."""

from __future__ import annotations


def send(endpoint_id: int) -> dict:
    """Deliver one endpoint's due messages (queued by a kick after messages were enqueued)."""
    from .models import Endpoint
    from .sender import deliver_endpoint

    # From here on, a new message kicks again (this run may already be past looking for it).
    Endpoint.objects.filter(pk=endpoint_id).update(kicked_at=None)
    return deliver_endpoint(endpoint_id, budget_seconds=40)


def tick() -> dict:
    """Every minute: deliver endpoints with retries that fell due, or whose kick was lost."""
    from .sender import deliver_due

    return deliver_due(budget_seconds=45)


def enqueue(change: dict) -> dict:
    """A change the real-time receiver could not enqueue, retried in the background."""
    from customers.timeline import Change

    from . import outbox
    from .sender import kick

    rebuilt = Change(
        customer_ids=frozenset(pk for ids in change["by_name"].values() for pk in ids),
        by_name={name: frozenset(ids) for name, ids in change["by_name"].items()},
        event_ids={name: tuple(span) for name, span in change.get("event_ids", {}).items()},
        memberships={(name, segment): frozenset(ids) for name, segment, ids in change.get("memberships", [])},
    )
    written = outbox.enqueue(rebuilt)
    kick(written)
    return {str(pk): count for pk, count in written.items()}
