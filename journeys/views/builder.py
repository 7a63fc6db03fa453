"""The journey builder: the canvas page, its autosaved draft, the side panel's forms
(one per node, one for the journey's settings) and "Validate"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.audit import user_actor
from core.errors import InputError
from customers.roles import MARKETER, role_required
from customers.validation import format_path, unstorable

from .. import graph as graphs
from .. import queries, services
from ..forms import SettingsForm, node_form
from ..models import Journey

BUILDER_TEMPLATE = "journeys/builder.html"
NODE_PANEL = f"{BUILDER_TEMPLATE}#node-panel"
SETTINGS_PANEL = f"{BUILDER_TEMPLATE}#settings-panel"
PROBLEMS = f"{BUILDER_TEMPLATE}#problems"

# What a node added from the palette starts with, where its ports depend on its config.
NEW_NODE_CONFIG = {
    "split": {"branches": [{"port": "a", "weight": 50}, {"port": "b", "weight": 50}]},
    "task": {"outcomes": ["done"], "timeout_hours": 48},
}
STATUS_TONES = {
    Journey.Status.DRAFT: "neutral",
    Journey.Status.LIVE: "live",
    Journey.Status.PAUSED: "warn",
    Journey.Status.STOPPED: "bad",
}


def _draft(journey: Journey) -> dict:
    graph = journey.draft if isinstance(journey.draft, dict) else {}
    return {"nodes": graph.get("nodes") or [], "edges": graph.get("edges") or [], "settings": graph.get("settings") or {}}


def _publish_url(journey: Journey) -> str:
    try:
        return reverse("journeys:publish", args=[journey.pk])
    except NoReverseMatch:
        return f"/journeys/{journey.pk}/publish/"


def _problem_counts(found: list[graphs.Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in found:
        if problem.node:
            counts[problem.node] = counts.get(problem.node, 0) + 1
    return counts


def _canvas_data(journey: Journey, graph: dict, found: list[graphs.Problem]) -> dict:
    """What the page's script mounts the canvas with (see static/src/journey-canvas.js)."""
    node_url = reverse("journeys:builder_node", args=[journey.pk, "__node__"])
    return {
        "graph": graph,
        "ports": {node["id"]: graphs.ports(node) for node in graph["nodes"] if isinstance(node, dict) and "id" in node},
        "nodeTypes": {kind: {"label": label, "description": text} for kind, (label, text) in graphs.NODE_TYPES.items()},
        "defaults": {
            kind: {"config": NEW_NODE_CONFIG.get(kind, {}),
                   "ports": graphs.ports({"type": kind, "config": NEW_NODE_CONFIG.get(kind, {})})}
            for kind in graphs.NODE_TYPES
        },
        "problems": _problem_counts(found),
        "urls": {
            "draft": reverse("journeys:builder_draft", args=[journey.pk]),
            "node": node_url,
            "settings": reverse("journeys:builder_settings", args=[journey.pk]),
        },
    }


@role_required(MARKETER)
@require_GET
def journey_builder(request, journey_id: int):
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    graph = _draft(journey)
    found = graphs.problems(graph)
    context = {
        "journey": journey,
        "status_tone": STATUS_TONES.get(journey.status, "neutral"),
        "canvas_data": _canvas_data(journey, graph, found),
        "publish_url": _publish_url(journey),
        "node_types": graphs.NODE_TYPES,
    }
    return render(request, BUILDER_TEMPLATE, context)


# --- The draft, saved as the canvas changes -----------------------------------------------------


def _refused(message: str, errors: list[dict], status: int = 400) -> JsonResponse:
    return JsonResponse({"message": message, "errors": errors}, status=status)


@role_required(MARKETER)
@require_POST
def journey_draft(request, journey_id: int):
    """Store the canvas's graph as the draft: ``{"saved_at", "problems"}``, or 400 with a message
    for a draft that cannot be stored or drawn (incomplete drafts are fine)."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    try:
        graph = json.loads(request.body)
    except ValueError as exc:
        return _refused("The draft is not valid JSON; nothing was saved.", [{"field": "graph", "message": str(exc)}])
    for where, message in unstorable(graph):
        path = format_path(("graph", *where))
        return _refused("The draft cannot be stored; nothing was saved.", [{"field": path, "message": message}])
    try:
        found = services.journey_draft_save(journey=journey, graph=graph, actor=user_actor(request))
    except InputError as exc:
        return _refused("The draft cannot be used; nothing was saved.", [error.as_dict() for error in exc.errors])
    return JsonResponse({
        "saved_at": journey.draft_saved_at.isoformat(),
        "problems": [problem.as_dict() for problem in found],
    })


# --- The side panel: one node --------------------------------------------------------------------


def _node_or_404(graph: dict, node_id: str) -> dict:
    node = graphs.nodes_by_id(graph).get(node_id)
    if node is None or node.get("type") not in graphs.NODE_TYPES:
        raise Http404("No such step in the draft.")
    return node


def _with_node(graph: dict, node: dict) -> dict:
    """``graph`` with ``node`` in place of its old version; connections from ports the node no
    longer has are dropped."""
    nodes = [node if isinstance(other, dict) and other.get("id") == node["id"] else other for other in graph["nodes"]]
    keep = set(graphs.ports(node))
    edges = [
        edge for edge in graph["edges"]
        if not (isinstance(edge, dict) and edge.get("from") == node["id"] and edge.get("port") not in keep)
    ]
    return {**graph, "nodes": nodes, "edges": edges}


def _is_about_config(problem: graphs.Problem) -> bool:
    return problem.field == "label" or problem.field.startswith("config")


def _node_panel(request, journey, node, form, *, problems, saved=False, status=200) -> HttpResponse:
    kind = node.get("type")
    label, description = graphs.NODE_TYPES[kind]
    context = {
        "journey": journey,
        "node": node,
        "form": form,
        "sections": form.sections(),
        "type_label": label,
        "type_description": description,
        "ports": graphs.ports(node),
        "problems": problems,
        "saved": saved,
        "saved_node": {"id": node["id"], "label": node.get("label") or "", "config": node.get("config") or {},
                       "ports": graphs.ports(node)} if saved else None,
        "node_url": reverse("journeys:builder_node", args=[journey.pk, node["id"]]),
    }
    return render(request, NODE_PANEL, context, status=status)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def journey_node(request, journey_id: int, node_id: str):
    """A node's settings form; a valid POST writes its label and config into the draft and tells
    the canvas (``HX-Trigger: journeyNodeSaved``)."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    graph = _draft(journey)
    node = _node_or_404(graph, node_id)
    if request.method == "GET":
        mine = [problem for problem in graphs.problems(graph) if problem.node == node_id]
        return _node_panel(request, journey, node, node_form(node), problems=mine)

    form = node_form(node, request.POST)
    if not form.is_valid():
        return _node_panel(request, journey, node, form, problems=[], status=422)
    updated = {**node, "label": form.cleaned_data.get("label") or "", "config": form.to_config()}
    # The node's own settings, checked alone: the rest of the graph may well be unfinished.
    alone = {"nodes": [updated], "edges": [], "settings": {}}
    wrong = [p for p in graphs.problems(alone) if p.node == node_id and _is_about_config(p)]
    for where, message in unstorable(updated["config"]):
        wrong.append(graphs.Problem(node_id, format_path(("config", *where)), message))
    if wrong:
        form.add_problems(wrong)
        return _node_panel(request, journey, node, form, problems=[], status=422)
    try:
        found = services.journey_draft_save(journey=journey, graph=_with_node(graph, updated), actor=user_actor(request))
    except InputError as exc:
        for error in exc.errors:
            form.add_error(None, error.message)
        return _node_panel(request, journey, node, form, problems=[], status=422)
    mine = [problem for problem in found if problem.node == node_id]
    response = _node_panel(request, journey, updated, node_form(updated), problems=mine, saved=True)
    # ASCII JSON: a header carries latin-1 only. The config itself (an email's HTML can be
    # large) travels in the panel's body, not in the header.
    response["HX-Trigger"] = json.dumps({"journeyNodeSaved": {
        "id": node_id,
        "label": updated["label"],
        "ports": graphs.ports(updated),
        "problems": [problem.as_dict() for problem in mine],
    }})
    return response


# --- The side panel: the journey's settings ------------------------------------------------------


def _settings_panel(request, journey, form, *, problems, saved=False, status=200) -> HttpResponse:
    context = {
        "journey": journey,
        "form": form,
        "problems": problems,
        "saved": saved,
        "settings_url": reverse("journeys:builder_settings", args=[journey.pk]),
    }
    return render(request, SETTINGS_PANEL, context, status=status)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def journey_settings(request, journey_id: int):
    """Re-entry, goal, exit rules and caps; a valid POST writes them into the draft
    (``HX-Trigger: journeySettingsSaved``)."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    graph = _draft(journey)
    if request.method == "GET":
        journey_level = [problem for problem in graphs.problems(graph) if problem.node is None]
        return _settings_panel(request, journey, SettingsForm(settings=graph["settings"]), problems=journey_level)

    form = SettingsForm(request.POST, settings=graph["settings"])
    if not form.is_valid():
        return _settings_panel(request, journey, form, problems=[], status=422)
    updated = {**graph, "settings": form.to_settings()}
    wrong = [p for p in graphs.problems(updated) if p.node is None and p.field.startswith("settings")]
    if wrong:
        form.add_problems(wrong)
        return _settings_panel(request, journey, form, problems=[], status=422)
    try:
        found = services.journey_draft_save(journey=journey, graph=updated, actor=user_actor(request))
    except InputError as exc:
        for error in exc.errors:
            form.add_error(None, error.message)
        return _settings_panel(request, journey, form, problems=[], status=422)
    journey_level = [problem for problem in found if problem.node is None]
    response = _settings_panel(request, journey, SettingsForm(settings=updated["settings"]), problems=journey_level,
                               saved=True)
    response["HX-Trigger"] = json.dumps({"journeySettingsSaved": {"settings": updated["settings"]}})
    return response


# --- Validate ----------------------------------------------------------------------------------------


@dataclass
class ProblemGroup:
    node: str | None  # None: the journey itself
    label: str
    type_label: str
    problems: list[graphs.Problem] = field(default_factory=list)


def problem_groups(graph: dict, found: list[graphs.Problem]) -> list[ProblemGroup]:
    """Problems by node, in the graph's order; the journey's own (and those naming no node
    that exists) first, under "Journey"."""
    by_id = graphs.nodes_by_id(graph)
    journey = ProblemGroup(None, "Journey", "")
    groups: dict[str, ProblemGroup] = {}
    for node_id, node in by_id.items():
        groups[node_id] = ProblemGroup(node_id, graphs.node_label(node),
                                       graphs.NODE_TYPES.get(node.get("type"), ("",))[0])
    for problem in found:
        group = groups.get(problem.node) if problem.node else None
        (group or journey).problems.append(problem)
    return [group for group in [journey, *groups.values()] if group.problems]


@role_required(MARKETER)
@require_POST
def journey_validate(request, journey_id: int):
    """Every problem of the draft, grouped by node."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    graph = _draft(journey)
    found = graphs.problems(graph)
    context = {"journey": journey, "groups": problem_groups(graph, found), "count": len(found),
               "publish_url": _publish_url(journey)}
    return render(request, PROBLEMS, context)
