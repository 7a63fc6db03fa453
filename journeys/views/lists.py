"""The journeys list, with each journey's figures, and a form that starts a new journey and
opens it in the builder."""

from __future__ import annotations

from django import forms
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.audit import user_actor
from core.errors import InputError
from core.text import sentence
from customers.roles import MARKETER, role_required

from .. import graph as graphs
from .. import queries, services
from .builder import STATUS_TONES

LIST_TEMPLATE = "journeys/list.html"


class NewJourneyForm(forms.Form):
    name = forms.CharField(max_length=120, strip=True, error_messages={"required": "Give the journey a name."})


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def journey_list(request):
    form = NewJourneyForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                journey = services.journey_create(
                    name=form.cleaned_data["name"], graph=graphs.empty_graph(), actor=user_actor(request),
                    user=request.user,
                )
            except InputError as exc:
                for error in exc.errors:
                    form.add_error("name" if error.field == "name" else None, sentence(error.message))
            else:
                return redirect("journeys:builder", journey.pk)
        status = 422
    else:
        status = 200
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [
        {"journey": row.journey, "figures": row, "tone": STATUS_TONES.get(row.journey.status, "neutral")}
        for row in queries.journey_rows(user=request.user, since=today)
    ]
    return render(request, LIST_TEMPLATE, {"rows": rows, "form": form}, status=status)
