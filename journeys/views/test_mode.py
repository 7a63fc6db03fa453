"""Test mode: send one chosen customer through the draft, with waits shortened and messages
through the sandbox providers, and watch where they go."""

from __future__ import annotations

import json

from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods
from django.views.decorators.vary import vary_on_headers

from core.audit import user_actor
from core.errors import InputError
from core.htmx import wants_partial
from customers.roles import MARKETER, role_required

from .. import graph as graphs
from .. import queries, services
from .builder import problem_groups

TEST_TEMPLATE = "journeys/test.html"
RUN_TEMPLATE = "journeys/test_run.html"
MAX_CONTEXT = 10_000


def _context(journey, *, term="", chosen=None, context_text="", errors=None) -> dict:
    found = graphs.problems(journey.draft)
    results = queries.test_candidates(term)
    if chosen is not None and all(customer.pk != chosen.pk for customer in results):
        results.insert(0, chosen)
    return {
        "journey": journey,
        "term": term,
        "results": results,
        "chosen": chosen,
        "context_text": context_text,
        "errors": errors or {},
        "problems": problem_groups(journey.draft, found),
        "problem_count": len(found),
        "wait_seconds": graphs.test_wait_seconds(),
        "runs": queries.test_runs(journey),
    }


def _parse_context(text: str) -> tuple[dict | None, str]:
    """The optional JSON context: (value, error message)."""
    if not text.strip():
        return {}, ""
    if len(text) > MAX_CONTEXT:
        return None, f"At most {MAX_CONTEXT:,} characters."
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"This is not valid JSON: {exc}."
    if not isinstance(value, dict):
        return None, 'It must be a JSON object, e.g. {"cart_id": "A1"}.'
    return value, ""


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request")
def journey_test(request, journey_id: int):
    """GET: the form (``?q=`` searches customers; htmx gets the results alone). POST: start a
    test run of the draft for the chosen customer and show it."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    if request.method == "GET":
        context = _context(journey, term=request.GET.get("q", ""))
        if wants_partial(request):
            return render(request, f"{TEST_TEMPLATE}#results", context)
        return render(request, TEST_TEMPLATE, context)

    errors: dict[str, str] = {}
    chosen = queries.test_customer(request.POST.get("customer", ""))
    if chosen is None:
        errors["customer"] = "Choose the customer to send through the journey."
    context_text = request.POST.get("context", "")
    value, problem = _parse_context(context_text)
    if problem:
        errors["context"] = problem
    if not errors:
        try:
            enrollment = services.test_run(journey=journey, customer=chosen, context=value,
                                           actor=user_actor(request))
        except InputError:
            errors["draft"] = "The draft has problems to fix before it can be tested."
        else:
            return redirect("journeys:test_run", journey.pk, enrollment.pk)
    context = _context(journey, term=request.POST.get("q", ""), chosen=chosen, context_text=context_text,
                       errors=errors)
    return render(request, TEST_TEMPLATE, context, status=422)


@role_required(MARKETER)
@require_GET
@vary_on_headers("HX-Request")
def journey_test_run(request, journey_id: int, enrollment_id: int):
    """One test run: its path so far, where it is, its next wake-up and its messages. The page
    asks again every 2 seconds (htmx) until the run ends."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    view = queries.test_run_view(user=request.user, journey=journey, enrollment_id=enrollment_id)
    context = {"journey": journey, "view": view, "run": view.enrollment, "now": timezone.now(),
               "wait_seconds": graphs.test_wait_seconds()}
    if wants_partial(request):
        return render(request, f"{RUN_TEMPLATE}#run", context)
    return render(request, RUN_TEMPLATE, context)
