"""Reads for the support task pages, with the permission check the views rely on."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Case, F, IntegerField, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404

from customers.roles import can_view_customers

from .models import Task

# The queue's filters: key → label. Open tasks only, except "resolved" and "all".
SHOWS = {
    "all": "All",
    "mine": "Mine",
    "unassigned": "Unassigned",
    "resolved": "Resolved",
}
DEFAULT_SHOW = "all"


def _check(user) -> None:
    if not can_view_customers(user):
        raise PermissionDenied("Your account has no role that allows working on support tasks.")


def task_queue(*, user, show: str = DEFAULT_SHOW) -> QuerySet[Task]:
    """The tasks ``user`` may see under the filter ``show``: open ones first, oldest first,
    then closed ones, most recently closed first."""
    _check(user)
    tasks = Task.objects.select_related("customer", "journey", "assignee")
    open_ = Task.Status.OPEN
    if show == "mine":
        return tasks.filter(status=open_, assignee=user).order_by("created_at", "id")
    if show == "unassigned":
        return tasks.filter(status=open_, assignee__isnull=True).order_by("created_at", "id")
    if show == "resolved":
        return tasks.exclude(status=open_).order_by(F("resolved_at").desc(nulls_last=True), "-id")
    return tasks.annotate(
        closed=Case(When(status=open_, then=Value(0)), default=Value(1), output_field=IntegerField()),
        open_since=Case(When(status=open_, then=F("created_at"))),
        closed_at=Coalesce("resolved_at", "created_at"),
    ).order_by("closed", F("open_since").asc(nulls_last=True), F("closed_at").desc(), "id")


def task_get_for_user(*, user, task_id: int) -> Task:
    """The task with its customer, journey, assignee and enrollment, if ``user`` may work on
    support tasks; 403 or 404 otherwise."""
    _check(user)
    task = Task.objects.select_related("customer", "journey", "assignee", "enrollment").filter(pk=task_id).first()
    if task is None:
        raise Http404("No such task.")
    return task
