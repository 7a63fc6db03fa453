"""Publishing: check the draft, decide what happens to the customers waiting in older
versions, preview it, and make the draft the live version."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core.audit import user_actor
from core.errors import InputError
from core.htmx import render_partials, wants_partial
from core.text import counted
from customers.roles import MARKETER, role_required

from .. import graph as graphs
from .. import queries, services
from ..models import Journey
from .builder import problem_groups

PUBLISH_TEMPLATE = "journeys/publish.html"
CHOICES = ("stay", "move", "exit")


@dataclass
class WaitingNode:
    """Customers waiting at one node id (on one or more older versions), and the choice for them."""

    node: str
    label: str
    versions: list[tuple[int, int]]  # (version number, customers waiting)
    choice: str = "stay"
    target: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return sum(count for _, count in self.versions)


def _targets(graph: dict) -> list[dict]:
    """The new version's nodes a customer can be moved to (anything but the trigger)."""
    return [
        {"id": node["id"], "label": graphs.node_label(node),
         "type_label": graphs.NODE_TYPES.get(node.get("type"), ("Node",))[0]}
        for node in graph.get("nodes") or []
        if isinstance(node, dict) and node.get("id") and node.get("type") != "trigger"
    ]


def _waiting_nodes(journey: Journey, data=None) -> list[WaitingNode]:
    """One row per node id with customers waiting, with the choice posted in ``data`` (or the
    defaults: stay, with the suggested target pre-selected for "move")."""
    suggested = services.suggested_mapping(journey=journey)
    new_ids = set(graphs.nodes_by_id(journey.draft))
    rows: dict[str, WaitingNode] = {}
    for line in services.migration_preview(journey=journey):
        row = rows.setdefault(line.node, WaitingNode(line.node, line.label, []))
        row.versions.append((line.version, line.waiting))
    for row in rows.values():
        default_target = suggested.get(row.node) or (row.node if row.node in new_ids else "")
        if data is None:
            row.target = default_target
            continue
        choice = data.get(f"choice-{row.node}", "stay")
        row.choice = choice if choice in CHOICES else "stay"
        row.target = data.get(f"target-{row.node}", "") or default_target
        if row.choice == "move" and row.target not in new_ids:
            row.errors.append("Choose the step of the new version they move to.")
    return list(rows.values())


def _mapping(rows: list[WaitingNode]) -> dict[str, str]:
    return {row.node: ("exit" if row.choice == "exit" else row.target) for row in rows if row.choice != "stay"}


def _plan(journey: Journey, rows: list[WaitingNode]) -> list[services.MigrationLine]:
    """What publishing with these choices would do; errors land on their rows."""
    try:
        return services.migration_preview(journey=journey, mapping=_mapping(rows))
    except InputError as error:
        by_node = {row.node: row for row in rows}
        for item in error.errors:
            row = by_node.get(item.field.removeprefix("migration."))
            if row is not None:
                row.errors.append(item.message[:1].upper() + item.message[1:] + ".")
        return []


def _context(journey: Journey, rows: list[WaitingNode], **extra) -> dict:
    found = graphs.problems(journey.draft)
    return {
        "journey": journey,
        "problems": problem_groups(journey.draft, found),
        "problem_count": len(found),
        "rows": rows,
        "targets": _targets(journey.draft),
        "waiting_total": sum(row.waiting for row in rows),
        "next_number": queries.next_version_number(journey),
        "unchanged": journey.live_version_id is not None and journey.draft == journey.live_version.graph,
        **extra,
    }


def _done_message(version, lines: list[services.MigrationLine]) -> str:
    parts = []
    for line in lines:
        who = counted(line.waiting, "customer")
        if line.action == "move":
            parts.append(f"{who} at “{line.label}” moved to “{line.target_label}”")
        elif line.action == "exit":
            parts.append(f"{who} at “{line.label}” left the journey")
    text = f"Version {version.number} is live."
    return text + (" " + "; ".join(parts) + "." if parts else "")


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def journey_publish(request, journey_id: int):
    """GET: the draft's problems, the customers waiting in older versions with a choice per
    node. POST ``action=preview``: what the choices would do, nothing written. POST
    ``action=publish``: publish, then back to the journey page."""
    journey = queries.journey_for_user(user=request.user, journey_id=journey_id)
    if request.method == "GET":
        return render(request, PUBLISH_TEMPLATE, _context(journey, _waiting_nodes(journey)))

    rows = _waiting_nodes(journey, request.POST)
    lines = [] if any(row.errors for row in rows) else _plan(journey, rows)
    if any(row.errors for row in rows):
        context = _context(journey, rows, preview_errors=True)
        if wants_partial(request):
            return render_partials(request, [f"{PUBLISH_TEMPLATE}#preview"], context, status=422)
        return render(request, PUBLISH_TEMPLATE, context, status=422)

    if request.POST.get("action") != "publish":
        context = _context(journey, rows, preview=lines, previewed=True)
        if wants_partial(request):
            return render_partials(request, [f"{PUBLISH_TEMPLATE}#preview"], context)
        return render(request, PUBLISH_TEMPLATE, context)

    try:
        version = services.journey_publish(journey=journey, actor=user_actor(request), mapping=_mapping(rows))
    except InputError as error:
        messages.error(request, "Nothing was published: the draft has problems to fix first.")
        context = _context(journey, rows, publish_errors=[e.message for e in error.errors])
        return render(request, PUBLISH_TEMPLATE, context, status=422)
    messages.success(request, _done_message(version, [line for line in lines if line.action != "stay"]))
    return redirect("journeys:detail", journey.pk)
