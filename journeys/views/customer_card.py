"""The Journeys card on the customer page, loaded by htmx from this app so that customers
depends on nothing of journeys (as the Segments card comes from segments)."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from core.htmx import wants_partial
from customers import queries as customer_queries
from customers.roles import MARKETER, SUPPORT, can_use_marketing, role_required

from .. import queries

CARD_TEMPLATE = "journeys/customer_card.html"


@role_required(SUPPORT, MARKETER)
@require_GET
@vary_on_headers("HX-Request")
def customer_journeys_card(request, customer_id: int):
    """Where the customer is in each journey, how they got there, and their next wake-up."""
    customer = customer_queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    if not wants_partial(request):
        return redirect(f"{reverse('customers:detail', args=[customer.pk])}#customer-journeys")
    found = queries.customer_journeys(user=request.user, customer_id=customer.pk)
    context = {
        "customer": customer,
        "views": found.views,
        "total": found.total,
        "links": can_use_marketing(request.user),
        "now": timezone.now(),
    }
    return render(request, CARD_TEMPLATE, context)
