"""API schemas for journeys: what /api/v1/journeys accepts and returns.

The graph is typed down to its nodes and edges, so that a node without an id or an edge
whose ends are not names is refused with its path before any service sees it; what a node's
``config`` may hold depends on its type and is checked by ``journeys.graph`` (``/validate``),
which names every problem by node id and field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema
from pydantic import BaseModel, ConfigDict, field_validator

from customers.schemas import CustomerRef

from . import graph as graphs
from .models import EnrollmentStatus

EXPORT_FORMAT = "switchboard.journey/1"

NodeType = Literal[tuple(graphs.NODE_TYPES)]  # the palette's types, as an enum in the OpenAPI description


class StrictIn(BaseModel):
    """Input: unknown fields are refused, so a misspelt field is an error the sender sees."""

    model_config = ConfigDict(extra="forbid")


# --- The graph -----------------------------------------------------------------------------------


class JourneyNodeIn(StrictIn):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(..., min_length=1, max_length=64, description="Stable across versions: letters, digits, _ or -")
    type: NodeType
    label: str = Field("", max_length=120, description="What the canvas shows; the type's name when empty")
    config: dict[str, Any] = Field(default_factory=dict, description="The node's settings; they depend on its type")
    x: int | float | None = Field(None, description="Position on the canvas")
    y: int | float | None = None


class JourneyEdgeIn(StrictIn):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: str = Field(..., alias="from", max_length=64, description="The node the edge leaves")
    port: str = Field(..., max_length=64, description="The port it leaves by, e.g. out, yes, no, timeout")
    to: str = Field(..., max_length=64, description="The node it leads to")


class JourneyGraphIn(StrictIn):
    nodes: list[JourneyNodeIn] = Field(default_factory=list, max_length=graphs.MAX_NODES)
    edges: list[JourneyEdgeIn] = Field(default_factory=list, max_length=graphs.MAX_NODES * 12)
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="reentry ({mode: once | after_exit | per_value, cooldown_hours, property}), goal "
                    "({event} or {segment}), exits ([{event} | {segment_left} | {unsubscribed}]), caps "
                    "({entries_per_day, sends_per_customer})",
    )

    def as_graph(self) -> dict:
        """The graph as stored: what was sent, without defaults added to the nodes."""
        return {
            "nodes": [node.model_dump(exclude_unset=True) for node in self.nodes],
            "edges": [edge.model_dump(by_alias=True) for edge in self.edges],
            "settings": self.settings,
        }


# --- Journeys ------------------------------------------------------------------------------------


class JourneyIn(StrictIn):
    name: str = Field(..., min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    graph: JourneyGraphIn | None = Field(None, description="The draft; a trigger joined to an exit when left out")


class JourneyUpdateIn(StrictIn):
    """Only the fields sent change."""

    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = Field(None, max_length=2000)
    graph: JourneyGraphIn | None = Field(None, description="The new draft (it may be incomplete until published)")


class JourneyListItemOut(Schema):
    id: int
    name: str
    status: str
    live_version: int | None = Field(..., description="The live version's number; null before the first publish")
    in_journey_now: int = Field(..., description="Customers in the journey now (on any version)")
    entered_today: int = Field(..., description="Runs that began since midnight (the server's time zone)")
    entered: int = Field(..., description="Runs that began, ever (test runs are never counted)")
    converted: int = Field(..., description="Runs that reached the goal")
    goal_conversion_rate: float | None = Field(
        ..., description="converted / entered; null when the journey has no goal or nobody entered yet"
    )


class JourneyVersionOut(Schema):
    id: int
    number: int
    published_at: datetime
    published_by: str
    live: bool
    in_flight: int = Field(..., description="Customers still on this version")
    migration: dict[str, Any] = Field(..., description="What the publish did with the customers in flight")


class JourneyNodeCountOut(Schema):
    now: int = Field(..., description="Customers at the node now (on any version: node ids are stable)")
    entered: int = Field(..., description="Arrivals at the node, ever")


class JourneyCountsOut(Schema):
    nodes: dict[str, JourneyNodeCountOut] = Field(..., description="Every node of the live version, by id")
    edges: dict[str, int] = Field(..., description='Customers who passed each edge, keyed "node:port"')
    conversion: dict[str, float] = Field(
        ..., description='For a journey with a goal: the share of those who passed each edge who then converted'
    )


class JourneyOut(Schema):
    id: int
    name: str
    description: str
    status: str
    live_version: int | None
    draft: dict[str, Any] = Field(..., description="The graph being edited")
    draft_saved_at: datetime
    created_at: datetime
    updated_at: datetime
    versions: list[JourneyVersionOut] = Field(..., description="Published versions, newest first")
    counts: JourneyCountsOut = Field(
        ..., description="Live figures of the live version (empty before the first publish)"
    )


class GraphProblemOut(Schema):
    node: str | None = Field(..., description="The node's id; null for the journey's settings and the graph itself")
    field: str
    message: str


class ValidateOut(Schema):
    valid: bool
    problems: list[GraphProblemOut]


class ImportedOut(JourneyOut):
    problems: list[GraphProblemOut] = Field(..., description="What must be fixed before the draft can be published")


# --- Publishing ----------------------------------------------------------------------------------


class PublishIn(StrictIn):
    migration: dict[str, str] = Field(
        default_factory=dict,
        description='For customers waiting at a node of an older version: {old node id: "stay" | "exit" | '
                    "a node id of the new version}. Nodes left out stay on their version.",
    )
    preview: bool = Field(False, description="Answer what the publish would do, and write nothing")


class MigrationLineOut(Schema):
    version: int = Field(..., description="The version the customers are on")
    node: str
    label: str
    waiting: int
    action: Literal["stay", "move", "exit"]
    target: str
    target_label: str
    sentence: str


class PublishPreviewOut(Schema):
    preview: Literal[True] = True
    lines: list[MigrationLineOut]
    suggested_migration: dict[str, str] = Field(
        ..., description="Waits that kept their id in the new version: the natural place to move people to"
    )


class PublishOut(Schema):
    journey: int
    status: str
    version: JourneyVersionOut
    lines: list[MigrationLineOut] = Field(..., description="What the publish did with the customers waiting")


# --- Dry run, test mode, entering -----------------------------------------------------------------


class DryRunNodeOut(Schema):
    reached: int
    ports: dict[str, int]


class DryRunOut(Schema):
    entering: int = Field(..., description="Customers the trigger would let in now")
    simulated: int = Field(..., description="How many of them were run through the graph (a sample when many)")
    population: str
    nodes: dict[str, DryRunNodeOut]
    edges: dict[str, int]


class CustomerContextIn(StrictIn):
    customer: CustomerRef
    context: dict[str, Any] = Field(
        default_factory=dict, description="Stored under `entry` in the journey's context (like an event's properties)"
    )


class CustomerBriefOut(Schema):
    id: int
    external_id: str | None
    email: str


class EnrollmentOut(Schema):
    id: int
    journey: int
    version: int = Field(..., description="The version's number (0 for a test run)")
    customer: CustomerBriefOut
    node: str
    node_label: str
    status: str
    test: bool
    entered_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    wake_at: datetime | None = Field(..., description="The next scheduled wake-up")
    context: dict[str, Any]


class EnrolledOut(EnrollmentOut):
    enrolled: Literal[True] = True


class NotEnrolledOut(Schema):
    enrolled: Literal[False] = False
    reason: str


class EnrollmentsQuery(Schema):
    node: str | None = Field(None, max_length=64, description="Only customers at this node")
    status: EnrollmentStatus | None = None
    test: bool = Field(False, description="Test-mode runs instead of real ones")
    cursor: str | None = Field(None, max_length=200, description="next_cursor from the previous page")
    limit: int = Field(100, ge=1, le=500)


class EnrollmentsOut(Schema):
    enrollments: list[EnrollmentOut]
    next_cursor: str | None


class JourneyStepOut(Schema):
    node: str
    label: str
    port: str = Field(..., description="The port the customer left by")
    visit: int
    at: datetime


class JourneyRefOut(Schema):
    id: int
    name: str


class CustomerJourneyOut(Schema):
    enrollment: int
    journey: JourneyRefOut
    version: int
    node: str
    node_label: str
    status: str
    entered_at: datetime
    ended_at: datetime | None
    wake_at: datetime | None = Field(..., description="The next scheduled wake-up")
    steps: list[JourneyStepOut]


# --- Export and import ---------------------------------------------------------------------------


class ExportQuery(Schema):
    version: int | None = Field(None, ge=1, description="A published version's number; the draft when left out")


class JourneyDocument(Schema):
    format: str = Field(EXPORT_FORMAT, description=f"Always {EXPORT_FORMAT!r}")
    name: str
    description: str
    graph: dict[str, Any]


class JourneyImportIn(StrictIn):
    format: str = Field(..., description=f"{EXPORT_FORMAT!r}, as /export writes it")
    name: str = Field(..., min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    graph: JourneyGraphIn

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value != EXPORT_FORMAT:
            raise ValueError(f"must be {EXPORT_FORMAT!r}: export a journey from Switchboard to get such a document")
        return value
