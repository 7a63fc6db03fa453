"""The next-best-action catalog: the list of actions, and the forms that create and change them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from core.audit import user_actor
from core.errors import InputError
from customers.roles import MARKETER, role_required

from .. import action_queries, action_services
from ..action_forms import ActionForm
from ..models import Action
from ..nba import smoothed_rate

LIST_TEMPLATE = "journeys/actions.html"
FORM_TEMPLATE = "journeys/action_form.html"

EXAMPLE_RULE = {"all": [{"attr": "lifecycle_stage", "op": "eq", "value": "customer"}]}


@dataclass
class ActionRow:
    action: Action
    now: datetime

    @property
    def acceptance_rate(self) -> float | None:
        """What customers did: accepted ÷ offered (None before the first offer)."""
        return self.action.accepted / self.action.offered if self.action.offered else None

    @property
    def smoothed_rate(self) -> float:
        """What ranking uses (see journeys.nba)."""
        return smoothed_rate(offered=self.action.offered, accepted=self.action.accepted)

    @property
    def validity(self) -> str:
        """"upcoming", "expired" or "current"."""
        if self.action.valid_from is not None and self.action.valid_from > self.now:
            return "upcoming"
        if self.action.valid_until is not None and self.action.valid_until <= self.now:
            return "expired"
        return "current"


@role_required(MARKETER)
def action_list(request):
    now = timezone.now()
    rows = [ActionRow(action, now) for action in action_queries.actions_for_user(user=request.user)]
    return render(request, LIST_TEMPLATE, {"rows": rows})


def _local(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M") if moment else ""


def _initial(action: Action) -> dict:
    return {
        "name": action.name, "kind": action.kind, "description": action.description, "value": action.value,
        "priority": action.priority, "valid_from": _local(action.valid_from), "valid_until": _local(action.valid_until),
        "max_offers": action.max_offers, "window_days": action.window_days,
        "cooldown_after_accept_days": action.cooldown_after_accept_days,
        "cooldown_after_reject_days": action.cooldown_after_reject_days,
        "accept_event": action.accept_event, "reject_event": action.reject_event, "active": action.active,
    }


# The order a person writes a rule's keys in (the database keeps its own).
RULE_KEYS = ("all", "any", "not", "attr", "event", "where", "prop", "op", "value", "within_days", "count",
             "subscribed", "topic", "channel", "reachable", "segment")


def _readable(rule):
    if isinstance(rule, dict):
        order = {key: index for index, key in enumerate(RULE_KEYS)}
        return {key: _readable(rule[key]) for key in sorted(rule, key=lambda key: (order.get(key, len(order)), key))}
    if isinstance(rule, list):
        return [_readable(item) for item in rule]
    return rule


def _form_page(request, form: ActionForm, *, action: Action | None, status: int = 200):
    if form.is_bound:
        rule_text = form.data.get("eligibility", "")
    elif action is not None and action.eligibility:
        rule_text = json.dumps(_readable(action.eligibility), indent=2, ensure_ascii=False)
    else:
        rule_text = ""
    context = {
        "form": form, "action": action, "rule_text": rule_text,
        "example_rule": json.dumps(EXAMPLE_RULE, ensure_ascii=False), "time_zone": timezone.get_current_timezone_name(),
    }
    return render(request, FORM_TEMPLATE, context, status=status)


def _check_the_rest(form: ActionForm) -> None:
    """After the form refused some fields, check the ones it could read as the service would
    (the key, the eligibility rule, the dates), so one attempt shows every problem."""
    readable = {name: value for name, value in getattr(form, "cleaned_data", {}).items() if name not in form.errors}
    problems = [
        error for error in action_services.action_problems(values=readable, action=form.action)
        if error.field.split(".")[0].split("[")[0] not in form.errors
    ]
    if problems:
        form.add_service_errors(InputError(problems))


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def action_new(request):
    form = ActionForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                action = action_services.action_create(
                    key=form.cleaned_data["key"], actor=user_actor(request), **form.service_values()
                )
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Action “{action.name}” added to the catalog as “{action.key}”.")
                return redirect("journeys:action_list")
        else:
            _check_the_rest(form)
        return _form_page(request, form, action=None, status=422)
    return _form_page(request, form, action=None)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def action_edit(request, action_id: int):
    action = action_queries.action_get_for_user(user=request.user, action_id=action_id)
    form = ActionForm(request.POST or None, action=action, initial=_initial(action))
    if request.method == "POST":
        if form.is_valid():
            try:
                action = action_services.action_update(
                    action=action, actor=user_actor(request), **form.service_values()
                )
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"“{action.name}” saved.")
                return redirect("journeys:action_list")
        else:
            _check_the_rest(form)
        return _form_page(request, form, action=action, status=422)
    return _form_page(request, form, action=action)
