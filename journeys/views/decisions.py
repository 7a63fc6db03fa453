""""Why this action": one next-best-action decision, with every candidate and the reasons."""

from __future__ import annotations

from django.shortcuts import render

from customers.roles import MARKETER, SUPPORT, can_use_marketing, role_required

from .. import action_queries

WHY_TEMPLATE = "journeys/decision.html"


@role_required(SUPPORT, MARKETER)
def decision_why(request, decision_id: int):
    view = action_queries.decision_get_for_user(user=request.user, decision_id=decision_id)
    context = {
        "view": view, "decision": view.decision, "customer": view.decision.customer,
        # Support sees the decision; the journey and the catalog are the marketers' pages.
        "marketing_links": can_use_marketing(request.user),
    }
    return render(request, WHY_TEMPLATE, context)
