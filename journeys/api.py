"""Journeys API: /api/v1/journeys (draw, validate, publish with a migration of the customers
in flight, steer, dry-run, test, enroll, export and import) and /api/v1/customers/{id}/journeys.

Views parse, call a service or a query, and answer; every write goes through
``journeys.services``. A request the journey's status does not allow (pausing a draft,
enrolling into a journey that is not live) answers 409.
"""

from __future__ import annotations

import base64
import binascii

from django.http import Http404
from django.utils import timezone
from ninja import Query, Router, Status

from core.errors import FieldError, InputError
from customers.auth import api_actor
from customers.models import Customer
from customers.schemas import CustomerRef, error_responses

from . import graph as graphs
from . import queries, services
from .models import Journey, JourneyVersion
from .schemas import (
    EXPORT_FORMAT,
    CustomerContextIn,
    CustomerJourneyOut,
    DryRunOut,
    EnrolledOut,
    EnrollmentOut,
    EnrollmentsOut,
    EnrollmentsQuery,
    ExportQuery,
    ImportedOut,
    JourneyDocument,
    JourneyImportIn,
    JourneyIn,
    JourneyListItemOut,
    JourneyOut,
    JourneyUpdateIn,
    NotEnrolledOut,
    PublishIn,
    PublishOut,
    PublishPreviewOut,
    ValidateOut,
)

router = Router(tags=["journeys"])
ERRORS = error_responses(404)
STATUS_ERRORS = error_responses(404, 409)


def _journey(journey_id: int) -> Journey:
    journey = Journey.objects.select_related("live_version").filter(pk=journey_id).first()
    if journey is None:
        raise Http404(f"No journey has id {journey_id}.")
    return journey


def _customer(ref: CustomerRef) -> Customer:
    lookup = next(name for name in ("id", "external_id", "email") if getattr(ref, name) is not None)
    value = getattr(ref, lookup)
    customer = Customer.objects.filter(**{"pk" if lookup == "id" else lookup: value}).first()
    if customer is None:
        raise Http404(f"No customer has {lookup.replace('_', ' ')} {value!r}; create the customer first "
                      "(POST /api/v1/customers).")
    return customer


def _conflict(exc: InputError, field: str):
    """409 for a request the journey's status does not allow; None for any other refusal."""
    if exc.errors and all(error.field == field for error in exc.errors):
        return Status(409, {"message": exc.message, "errors": [error.as_dict() for error in exc.errors]})
    return None


def _version(version: JourneyVersion, journey: Journey) -> dict:
    return {"id": version.pk, "number": version.number, "published_at": version.published_at,
            "published_by": version.published_by, "live": version.pk == journey.live_version_id,
            "in_flight": getattr(version, "in_flight", 0), "migration": version.migration or {}}


def _detail(journey: Journey) -> dict:
    if journey.live_version_id:
        counts = queries.map_figures(journey)
    else:
        counts = {"nodes": {}, "edges": {}, "conversion": {}}
    return {
        "id": journey.pk, "name": journey.name, "description": journey.description, "status": journey.status,
        "live_version": journey.live_version.number if journey.live_version_id else None,
        "draft": journey.draft if isinstance(journey.draft, dict) else {},
        "draft_saved_at": journey.draft_saved_at, "created_at": journey.created_at, "updated_at": journey.updated_at,
        "versions": [_version(version, journey) for version in queries.journey_versions(journey)],
        "counts": counts,
    }


def _problems(graph) -> list[dict]:
    return [problem.as_dict() for problem in graphs.problems(graph)]


def _draft_error(problems: list[graphs.Problem]) -> InputError:
    """The draft's problems, named as ``journey_publish`` names them (``draft.nodes.<id>.<field>``)."""
    return InputError(
        [FieldError(f"draft.nodes.{p.node}.{p.field}" if p.node else f"draft.{p.field}", p.message) for p in problems],
        message="The draft has problems; fix each one and publish again. Nothing was written.",
    )


# --- The journeys ------------------------------------------------------------------------------------


@router.get(
    "/journeys", response={200: list[JourneyListItemOut], **ERRORS}, summary="Every journey with its live figures",
    description="By name: status, live version, customers in it now, entered today and the goal conversion rate.",
)
def journey_list(request):
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        {"id": row.journey.pk, "name": row.journey.name, "status": row.journey.status,
         "live_version": row.journey.live_version.number if row.journey.live_version_id else None,
         "in_journey_now": row.in_now, "entered_today": row.entered_today, "entered": row.entered,
         "converted": row.converted, "goal_conversion_rate": row.conversion_rate}
        for row in queries.journey_figures(since=midnight)
    ]


@router.post(
    "/journeys", response={201: JourneyOut, **ERRORS}, summary="Create a draft journey",
    description="Without a `graph`, the draft is a trigger joined to an exit. A draft may be incomplete; "
                "`/validate` lists what must be fixed before it can be published.",
)
def journey_create(request, payload: JourneyIn):
    journey = services.journey_create(
        name=payload.name, description=payload.description,
        graph=payload.graph.as_graph() if payload.graph is not None else None, actor=api_actor(request),
    )
    return Status(201, _detail(_journey(journey.pk)))


@router.get(
    "/journeys/{int:journey_id}", response={200: JourneyOut, **ERRORS},
    summary="A journey: its draft, versions and live counts",
    description="`counts` are the live version's: customers at each node now, arrivals at each node and passes "
                "along each edge (`\"node:port\"`).",
)
def journey_detail(request, journey_id: int):
    return _detail(_journey(journey_id))


@router.put(
    "/journeys/{int:journey_id}", response={200: JourneyOut, **ERRORS}, summary="Change a journey's name or draft",
    description="Only the fields sent change. The draft may be incomplete, but it must be a graph: every node "
                "with an id and a known type, every edge with from, port and to.",
)
def journey_update(request, journey_id: int, payload: JourneyUpdateIn):
    journey = services.journey_update(
        journey=_journey(journey_id), name=payload.name, description=payload.description,
        graph=payload.graph.as_graph() if payload.graph is not None else None, actor=api_actor(request),
    )
    return _detail(_journey(journey.pk))


@router.post(
    "/journeys/{int:journey_id}/validate", response={200: ValidateOut, **ERRORS}, summary="Check the draft",
    description="Every problem, by node id and field (node null for the journey's settings): one trigger, every "
                "node configured and reachable, every port connected, no loop without a wait, and the segments, "
                "topics and actions it names exist. 200 whether or not the draft is valid.",
)
def journey_validate(request, journey_id: int):
    found = _problems(_journey(journey_id).draft)
    return {"valid": not found, "problems": found}


# --- Publishing ------------------------------------------------------------------------------------


def _check_migration(journey: Journey, migration: dict[str, str]) -> None:
    """Every key a node of a published version, every value stay, exit or a node of the draft
    customers can be moved to: a misspelt id would otherwise leave people where they are."""
    if not migration:
        return
    old = queries.published_node_ids(journey)
    new = graphs.nodes_by_id(journey.draft if isinstance(journey.draft, dict) else {})
    errors = []
    for node, choice in migration.items():
        if node not in old:
            errors.append(FieldError(f"migration.{node}", f"no published version of this journey has a node {node!r}"))
        elif choice not in ("stay", "exit") and choice not in new:
            errors.append(FieldError(f"migration.{node}", f"must be 'stay', 'exit' or a node of the new version; "
                                                           f"it has no node {choice!r}"))
        elif choice in new and new[choice].get("type") == "trigger":
            errors.append(FieldError(f"migration.{node}", "customers cannot be moved back to the trigger"))
    if errors:
        raise InputError(errors)


def _line(line: services.MigrationLine) -> dict:
    return {**line.as_dict(), "sentence": line.sentence}


@router.post(
    "/journeys/{int:journey_id}/publish",
    response={200: PublishPreviewOut, 201: PublishOut, **ERRORS},
    summary="Publish the draft as a new version, or preview what that would do",
    description=(
        "Customers in flight stay on the version they entered by default; `migration` moves those waiting at a "
        "node to a node of the new version (or ends their run): `{\"wait-2d\": \"wait-1d\"}`. Someone moved "
        "from a timed wait to a timed wait keeps the time already waited. With `preview: true` the answer (200) "
        "says what would happen, one sentence per node, and nothing is written; otherwise 201 with the new "
        "version. A draft with problems is refused (400), each problem named `draft.nodes.<id>.<field>`."
    ),
)
def journey_publish(request, journey_id: int, payload: PublishIn | None = None):
    journey = _journey(journey_id)
    payload = payload or PublishIn()
    _check_migration(journey, payload.migration)
    if payload.preview:
        found = graphs.problems(journey.draft)
        if found:
            raise _draft_error(found)
        lines = services.migration_preview(journey=journey, mapping=payload.migration)
        return Status(200, {"preview": True, "lines": [_line(line) for line in lines],
                            "suggested_migration": services.suggested_mapping(journey=journey)})
    version = services.journey_publish(journey=journey, actor=api_actor(request), mapping=payload.migration)
    journey = _journey(journey_id)
    published = next(v for v in queries.journey_versions(journey) if v.pk == version.pk)
    lines = [services.MigrationLine(**line) for line in (version.migration or {}).get("lines", [])]
    return Status(201, {"journey": journey.pk, "status": journey.status, "version": _version(published, journey),
                        "lines": [_line(line) for line in lines]})


# --- Status ----------------------------------------------------------------------------------------


def _set_status(request, journey_id: int, action):
    try:
        action(journey=_journey(journey_id), actor=api_actor(request))
    except InputError as exc:
        conflict = _conflict(exc, "status")
        if conflict is None:
            raise
        return conflict
    return _detail(_journey(journey_id))


@router.post("/journeys/{int:journey_id}/pause", response={200: JourneyOut, **STATUS_ERRORS},
             summary="Pause a live journey", description="No new entries; customers already in it carry on.")
def journey_pause(request, journey_id: int):
    return _set_status(request, journey_id, services.journey_pause)


@router.post("/journeys/{int:journey_id}/resume", response={200: JourneyOut, **STATUS_ERRORS},
             summary="Resume a paused journey")
def journey_resume(request, journey_id: int):
    return _set_status(request, journey_id, services.journey_resume)


@router.post("/journeys/{int:journey_id}/stop", response={200: JourneyOut, **STATUS_ERRORS},
             summary="Stop a live or paused journey",
             description="No new entries, and everyone in it leaves now. Publishing again makes it live.")
def journey_stop(request, journey_id: int):
    return _set_status(request, journey_id, services.journey_stop)


# --- Dry run, test mode, entering --------------------------------------------------------------------


@router.post(
    "/journeys/{int:journey_id}/dry-run", response={200: DryRunOut, **ERRORS},
    summary="Run the draft on current data without sending or writing anything",
    description="How many customers the trigger would let in now, and how they would split at each node "
                "(`nodes.<id>.ports`) and edge (`\"node:port\"`), every wait taken as over.",
)
def journey_dry_run(request, journey_id: int):
    return services.dry_run(journey=_journey(journey_id)).as_dict()


@router.post(
    "/journeys/{int:journey_id}/test", response={201: EnrollmentOut, **ERRORS},
    summary="Send one customer through the draft in test mode",
    description="Waits last a few seconds, messages go through the sandbox providers, the profile is not "
                "changed and nothing is counted; follow the run in `/enrollments?test=true`.",
)
def journey_test(request, journey_id: int, payload: CustomerContextIn):
    journey = _journey(journey_id)
    enrollment = services.test_run(journey=journey, customer=_customer(payload.customer), context=payload.context,
                                   actor=api_actor(request))
    return Status(201, queries.enrollment_row(enrollment.pk))


@router.post(
    "/journeys/{int:journey_id}/enroll",
    response={201: EnrolledOut, 200: NotEnrolledOut, **STATUS_ERRORS},
    summary="Enroll one customer (the API trigger)",
    description=(
        "201 with the enrollment, already run on to its first wait; 200 with `enrolled: false` and the reason "
        "when the journey's re-entry rule (or entry cap) lets no new run in; 404 for an unknown customer; 409 "
        "when the journey is not live. `context` is kept under `entry` in the journey's context."
    ),
)
def journey_enroll(request, journey_id: int, payload: CustomerContextIn):
    journey = _journey(journey_id)
    customer = _customer(payload.customer)
    try:
        enrollment = services.journey_enroll(journey=journey, customer=customer, context=payload.context,
                                             actor=api_actor(request))
    except InputError as exc:
        conflict = _conflict(exc, "journey")
        if conflict is None:
            raise
        return conflict
    if enrollment is None:
        reason = queries.enrollment_refusal(journey, customer_id=customer.pk, context=payload.context)
        return Status(200, {"enrolled": False, "reason": reason})
    return Status(201, {**queries.enrollment_row(enrollment.pk), "enrolled": True})


def _cursor(value: int) -> str:
    return base64.urlsafe_b64encode(f"e{value}".encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    digits = text.removeprefix("e")
    if not text.startswith("e") or not digits.isascii() or not digits.isdigit() or not 0 < int(digits) < 2**63:
        message = "not a cursor this API returned; pass next_cursor from the previous page"
        raise InputError([FieldError("cursor", message)])
    return int(digits)


@router.get(
    "/journeys/{int:journey_id}/enrollments", response={200: EnrollmentsOut, **ERRORS},
    summary="The journey's customers, newest first",
    description="Filter by `node` (customers at that node) and `status`. Keyset pagination: pass `next_cursor` "
                "as `cursor` to get the next page.",
)
def journey_enrollments(request, journey_id: int, params: Query[EnrollmentsQuery]):
    journey = _journey(journey_id)
    before = _after(params.cursor) if params.cursor else None
    rows, next_before = queries.enrollments_page(
        journey, node=params.node or "", status=params.status or "", test=params.test, before=before,
        limit=params.limit,
    )
    return {"enrollments": rows, "next_cursor": _cursor(next_before) if next_before else None}


@router.get(
    "/customers/{int:customer_id}/journeys", response={200: list[CustomerJourneyOut], **ERRORS},
    summary="A customer's journeys: where they are, how they got there, their next wake-up",
    description="Every run (test runs left out), newest first, with its steps: the node, the port it left by "
                "and when.",
)
def customer_journeys(request, customer_id: int):
    if not Customer.objects.filter(pk=customer_id).exists():
        raise Http404(f"No customer has id {customer_id}.")
    return queries.customer_enrollments(customer_id)


# --- Export and import -------------------------------------------------------------------------------


@router.get(
    "/journeys/{int:journey_id}/export", response={200: JourneyDocument, **ERRORS},
    summary="A journey as a JSON document",
    description=f"The draft, or a published version with `?version=N`, as `{EXPORT_FORMAT}`: POST it to "
                "`/journeys/import` (here or on another Switchboard) to make a draft of it.",
)
def journey_export(request, journey_id: int, params: Query[ExportQuery]):
    journey = _journey(journey_id)
    graph = journey.draft
    if params.version is not None:
        graph = queries.published_graph(journey, params.version)
        if graph is None:
            raise Http404(f"Journey {journey.pk} has no version {params.version}.")
    return {"format": EXPORT_FORMAT, "name": journey.name, "description": journey.description,
            "graph": graph if isinstance(graph, dict) else {}}


@router.post(
    "/journeys/import", response={201: ImportedOut, **ERRORS}, summary="Make a draft journey of an exported document",
    description="The name must be free. The segments, topics and actions the graph names may not exist here: "
                "`problems` lists what must be fixed before the draft can be published.",
)
def journey_import(request, payload: JourneyImportIn):
    journey = services.journey_create(name=payload.name, description=payload.description,
                                      graph=payload.graph.as_graph(), actor=api_actor(request))
    journey = _journey(journey.pk)
    return Status(201, {**_detail(journey), "problems": _problems(journey.draft)})
