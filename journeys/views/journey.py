"""The journey page: its status (pause, resume, stop), its versions, and the live map with
each node's panel."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from core.audit import user_actor
from core.charts import as_script_json
from core.errors import InputError
from core.htmx import wants_partial
from customers.roles import MARKETER, role_required

from .. import graph as graphs
from .. import queries, services
from ..charts import node_series
from ..models import Journey
from .builder import STATUS_TONES

DETAIL_TEMPLATE = "journeys/detail.html"
NODE_PANEL = f"{DETAIL_TEMPLATE}#node-panel"


def map_data(journey: Journey, graph: dict, counts: dict) -> dict:
    """What static/js/journey-map.js mounts the read-only canvas with."""
    return {
        "graph": graph,
        "ports": {node["id"]: graphs.ports(node) for node in graph.get("nodes") or []},
        "nodeTypes": {kind: {"label": label, "description": text} for kind, (label, text) in graphs.NODE_TYPES.items()},
        "counts": counts,
        "socket": f"/ws/journeys/{journey.pk}/",
        "nodeUrl": reverse("journeys:map_node", args=[journey.pk, "__node__"]),
    }


def _panel_context(journey: Journey, node_id: str) -> dict:
    panel = queries.node_panel(journey, node_id, now=timezone.now())
    if panel is None:
        raise Http404("No such step in this journey.")
    return {"journey": journey, "panel": panel, "chart_json": as_script_json(node_series(panel))}


def detail_context(journey: Journey, *, request) -> dict:
    graph = queries.map_graph(journey)
    live = journey.live_version_id is not None
    counts = queries.map_figures(journey) if live else {"nodes": {}, "edges": {}, "conversion": {}}
    found = graphs.problems(journey.draft)
    context = {
        "journey": journey,
        "status_tone": STATUS_TONES.get(journey.status, "neutral"),
        "versions": queries.journey_versions(journey),
        "live": live,
        "map_data": map_data(journey, graph, counts),
        "map_nodes": queries.map_nodes(graph, counts) if live else [],
        "has_goal": queries.has_goal(graph),
        "in_now": sum(figures["now"] for figures in counts["nodes"].values()),
        "draft_problems": len(found),
        "draft_changed": live and journey.draft != journey.live_version.graph,
        "test_runs": queries.test_runs(journey, limit=5),
    }
    node_id = request.GET.get("node")
    if live and node_id and node_id in graphs.nodes_by_id(graph):
        context.update(_panel_context(journey, node_id))
    return context


@role_required(MARKETER)
@require_GET
def journey_detail(request, journey_id: int):
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    return render(request, DETAIL_TEMPLATE, detail_context(journey, request=request))


@role_required(MARKETER)
@require_GET
@vary_on_headers("HX-Request")
def map_node(request, journey_id: int, node_id: str):
    """A node's panel on the live map: its chart over time and the customers there now."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    if not wants_partial(request):
        return redirect(f"{reverse('journeys:detail', args=[journey.pk])}?node={node_id}#node-panel")
    return render(request, NODE_PANEL, _panel_context(journey, node_id))


# --- Pause, resume, stop ------------------------------------------------------------------------------


def _change_status(request, journey_id: int, change, done: str):
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    try:
        journey = change(journey=journey, actor=user_actor(request))
    except InputError as error:
        messages.error(request, error.message or " ".join(e.message for e in error.errors))
    else:
        messages.success(request, done.format(name=journey.name))
    return redirect("journeys:detail", journey.pk)


@role_required(MARKETER)
@require_POST
def journey_pause(request, journey_id: int):
    return _change_status(request, journey_id, services.journey_pause,
                          "“{name}” is paused: nobody new enters; customers already in it carry on.")


@role_required(MARKETER)
@require_POST
def journey_resume(request, journey_id: int):
    return _change_status(request, journey_id, services.journey_resume, "“{name}” is live again.")


@role_required(MARKETER)
@require_POST
def journey_stop(request, journey_id: int):
    return _change_status(request, journey_id, services.journey_stop,
                          "“{name}” is stopped: everyone in it has left, and nobody new enters.")
