"""Dry run: who would enter the draft now and how they would split, on current data, with
nothing sent or written (journeys.services.dry_run rolls its whole run back)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.shortcuts import render
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers

from core.htmx import wants_partial
from customers.roles import MARKETER, role_required

from .. import graph as graphs
from .. import queries, services
from .builder import problem_groups
from .journey import DETAIL_TEMPLATE, detail_context

DRY_RUN_PARTIAL = f"{DETAIL_TEMPLATE}#dry-run-result"
# Nodes where customers split: the dry run's table marks them.
BRANCHING = {"condition", "split", "nba"}


@dataclass
class PortFigure:
    port: str
    count: int
    share: float  # of the customers who reached the node, 0..100
    to: str


@dataclass
class NodeFigure:
    id: str
    label: str
    type: str
    type_label: str
    reached: int
    ports: list[PortFigure] = field(default_factory=list)

    @property
    def branching(self) -> bool:
        return self.type in BRANCHING


def node_figures(graph: dict, result: services.DryRun) -> list[NodeFigure]:
    """The nodes the simulated customers reached, in the order a customer meets them."""
    by_id = graphs.nodes_by_id(graph)
    ordered = queries.map_nodes(graph, {"nodes": {}, "edges": {}, "conversion": {}})
    figures = []
    for item in ordered:
        seen = result.nodes.get(item["id"])
        if not seen:
            continue
        node = by_id[item["id"]]
        reached = seen["reached"]
        ports = [
            PortFigure(port["port"], seen["ports"].get(port["port"], 0),
                       100 * seen["ports"].get(port["port"], 0) / reached if reached else 0, port["to"])
            for port in item["ports"]
        ]
        figures.append(NodeFigure(item["id"], item["label"], node.get("type"), item["type_label"], reached, ports))
    return figures


def dry_run_context(journey) -> dict:
    found = graphs.problems(journey.draft)
    if found:
        return {"dry_run": {"problems": problem_groups(journey.draft, found), "problem_count": len(found)}}
    result = services.dry_run(journey=journey)
    tried = min(result.entering, services.DRY_RUN_SAMPLE)
    return {"dry_run": {"result": result, "nodes": node_figures(journey.draft, result), "tried": tried,
                        "sampled": result.entering > tried, "refused": tried - result.simulated}}


@role_required(MARKETER)
@require_POST
@vary_on_headers("HX-Request")
def journey_dry_run(request, journey_id: int):
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    context = {"journey": journey, **dry_run_context(journey)}
    if wants_partial(request):
        return render(request, DRY_RUN_PARTIAL, context)
    return render(request, DETAIL_TEMPLATE, {**detail_context(journey, request=request), **context})
