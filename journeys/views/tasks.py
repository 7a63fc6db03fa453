"""Support tasks handed over by journeys: the queue, assigning, and resolving with an outcome."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from core.audit import user_actor
from core.errors import InputError
from core.htmx import render_partials, wants_partial
from customers.roles import MARKETER, SUPPORT, role_required

from .. import task_queries
from ..task_services import MAX_NOTE_LENGTH, outcome_label, task_assign, task_resolve

TASKS_PER_PAGE = 50
LIST_TEMPLATE = "journeys/tasks.html"
DETAIL_TEMPLATE = "journeys/task.html"


@role_required(SUPPORT, MARKETER)
@vary_on_headers("HX-Request")
def task_list(request):
    show = request.GET.get("show", task_queries.DEFAULT_SHOW)
    if show not in task_queries.SHOWS:
        show = task_queries.DEFAULT_SHOW
    page = Paginator(task_queries.task_queue(user=request.user, show=show), TASKS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    context = {"page": page, "show": show, "shows": task_queries.SHOWS.items(), "now": timezone.now()}
    if wants_partial(request):
        return render(request, f"{LIST_TEMPLATE}#results", context)
    return render(request, LIST_TEMPLATE, context)


@role_required(SUPPORT, MARKETER)
@require_POST
def task_assign_to_me(request, task_id: int):
    task = task_queries.task_get_for_user(user=request.user, task_id=task_id)
    from_queue = request.POST.get("from") == "queue"
    try:
        task = task_assign(task=task, user=request.user, actor=user_actor(request))
    except InputError as error:
        messages.error(request, " ".join(e.message for e in error.errors))
    else:
        messages.success(request, f"“{task.title}” is assigned to you.")
    if not wants_partial(request):
        return redirect(reverse("journeys:tasks") if from_queue else reverse("journeys:task", args=[task.pk]))
    task = task_queries.task_get_for_user(user=request.user, task_id=task.pk)
    if from_queue:
        return render_partials(request, [f"{LIST_TEMPLATE}#row", "base.html#flash"], {"task": task, "now": timezone.now()})
    return render_partials(request, [f"{DETAIL_TEMPLATE}#task", "base.html#flash"], _detail_context(task))


@role_required(SUPPORT, MARKETER)
@require_http_methods(["GET", "POST"])
def task_detail(request, task_id: int):
    task = task_queries.task_get_for_user(user=request.user, task_id=task_id)
    if request.method == "GET":
        return render(request, DETAIL_TEMPLATE, _detail_context(task))
    outcome = request.POST.get("outcome", "")
    note = request.POST.get("note", "")
    try:
        moved = task_resolve(task=task, outcome=outcome, note=note, actor=user_actor(request))
    except InputError as error:
        # Nothing was written: show the form again with what was typed and why it was refused.
        errors: dict[str, list[str]] = {}
        for item in error.errors:
            errors.setdefault(item.field, []).append(item.message)
        context = _detail_context(task, form={"outcome": outcome, "note": note, "errors": errors})
        if wants_partial(request):
            return render_partials(request, [f"{DETAIL_TEMPLATE}#task"], context, status=422)
        return render(request, DETAIL_TEMPLATE, context, status=422)
    label = outcome_label(outcome)
    if moved:
        messages.success(request, f"Resolved as “{label}”: the journey goes on by that branch.")
    else:
        messages.success(request, f"Resolved as “{label}”. The customer was no longer waiting in the journey.")
    if not wants_partial(request):
        return redirect(reverse("journeys:task", args=[task.pk]))
    task = task_queries.task_get_for_user(user=request.user, task_id=task.pk)
    return render_partials(request, [f"{DETAIL_TEMPLATE}#task", "base.html#flash"], _detail_context(task))


def _detail_context(task, *, form: dict | None = None) -> dict:
    context = task.enrollment.context if task.enrollment_id and task.enrollment else {}
    return {
        "task": task,
        "customer": task.customer,
        "outcomes": [(value, outcome_label(value)) for value in task.outcomes],
        "outcome_shown": outcome_label(task.outcome) if task.outcome else "",
        "form": form or {"outcome": "", "note": "", "errors": {}},
        "note_limit": MAX_NOTE_LENGTH,
        "journey_context": sorted((key, _shown(value)) for key, value in (context or {}).items() if key != "task"),
    }


def _shown(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"
