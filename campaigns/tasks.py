"""django-q2 entry points: thin, take ids, safe to run twice (the outbox row is the unit of work)."""

from . import dispatch as dispatcher
from .engagement import engagement_drain_all
from .services.delivery_events import conversions_attribute
from .services.lifecycle import campaigns_tick


def dispatch() -> dict:
    return dispatcher.dispatch()


def tick() -> dict:
    """Every minute: apply opens and clicks no web process applied, start scheduled campaigns,
    finish done ones, release due winners, then send."""
    applied = engagement_drain_all(budget_seconds=10)
    result = campaigns_tick()
    result["engagement_applied"] = applied
    result["dispatch"] = dispatcher.dispatch(budget_seconds=40)
    return result


def attribute_conversions(customer_ids: list[int], names: list[str]) -> int:
    return conversions_attribute(customer_ids=set(customer_ids), names=set(names))


def simulate() -> dict:
    from . import simulation

    return simulation.simulate()


def preferences_link_send(customer_id: int) -> bool:
    from . import preference_links

    return preference_links.link_send(customer_id=customer_id)
