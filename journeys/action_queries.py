"""Reads for the next-best-action catalog and its decisions, with their permission checks."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.http import Http404

from customers.roles import can_use_marketing, can_view_customers

from .graph import node_label, nodes_by_id
from .models import Action, Decision, Journey, JourneyVersion
from .nba import NONE_PORT, candidates_in_order


def actions_for_user(*, user) -> list[Action]:
    """The whole catalog, by key, for marketers (and admins)."""
    if not can_use_marketing(user):
        raise PermissionDenied("Your account has no role that allows working with the action catalog.")
    return list(Action.objects.order_by("key"))


def action_get_for_user(*, user, action_id: int) -> Action:
    """The action, if ``user`` may work with the catalog (marketers and admins)."""
    if not can_use_marketing(user):
        raise PermissionDenied("Your account has no role that allows working with the action catalog.")
    action = Action.objects.filter(pk=action_id).first()
    if action is None:
        raise Http404("No such action.")
    return action


@dataclass
class DecisionView:
    """A decision with what the "why this action" page names: journey, node, chosen port."""

    decision: Decision
    journey: Journey | None
    node_label: str
    port: str
    candidates: list[dict]

    @property
    def chosen(self) -> dict | None:
        """The candidate that won (also when a holdout kept the customer from it)."""
        return next((c for c in self.candidates if c.get("rank") == 1), None)


def decision_get_for_user(*, user, decision_id: int) -> DecisionView:
    """The decision and its context, if ``user`` may see customers (support and marketers)."""
    if not can_view_customers(user):
        raise PermissionDenied("Your account has no role that allows viewing customers.")
    decision = (
        Decision.objects.select_related("customer", "action", "enrollment").filter(pk=decision_id).first()
    )
    if decision is None:
        raise Http404("No such decision.")
    journey = Journey.objects.filter(pk=decision.journey_id).first() if decision.journey_id else None
    label = decision.node
    if decision.enrollment is not None:
        graph = JourneyVersion.objects.filter(pk=decision.enrollment.version_id).values_list("graph", flat=True).first()
        node = nodes_by_id(graph or {}).get(decision.node)
        if node is not None:
            label = node_label(node)
    port = decision.action.key if decision.action is not None else NONE_PORT
    return DecisionView(
        decision=decision, journey=journey, node_label=label, port=port,
        candidates=candidates_in_order(decision.candidates),
    )
