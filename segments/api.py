"""Segments API: define audiences, read their members, preview rules."""

from datetime import datetime
from typing import Any

from django.http import Http404
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict, model_validator

from customers.auth import api_actor
from customers.models import Customer
from customers.schemas import error_responses

from . import queries, services
from . import rules as rule_language
from .models import Segment

router = Router(tags=["segments"])
ERRORS = error_responses(404)


class SegmentIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    rules: dict[str, Any] | None = Field(None, description="A rule tree; see the README's rule language")
    static: bool = Field(False, description="A list of customers managed by hand instead of rules")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.static and self.rules is not None:
            raise ValueError("send either rules or static: true, not both")
        if not self.static and self.rules is None:
            raise ValueError("send the rules of the segment, or static: true for a list")
        return self


class SegmentUpdateIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = Field(None, max_length=2000)
    rules: dict[str, Any] | None = None


class ProgressOut(Schema):
    phase: str = Field(..., description="queued, evaluating or writing")
    percent: int | None = Field(None, description="Estimated from the last computation; null with nothing to go by")
    seconds_left: float | None = None
    started_at: datetime | None = None


class SegmentOut(Schema):
    id: int
    name: str
    description: str
    kind: str
    rules: dict[str, Any] | None
    status: str = Field(..., description="ready; computing (members are being computed in the background: "
                                         "see progress); failed (see error; the members are the previous ones)")
    progress: ProgressOut | None = Field(None, description="While computing")
    error: str | None = Field(None, description="Why the last computation failed")
    member_count: int
    computed_at: datetime | None
    changed_at: datetime | None
    last_full_ms: int | None
    last_lag_ms: int | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_progress(segment: Segment) -> dict | None:
        progress = segment.progress()
        if progress is None:
            return None
        return {"phase": progress.phase, "percent": progress.percent, "seconds_left": progress.seconds_left,
                "started_at": segment.compute_started_at}

    @staticmethod
    def resolve_error(segment: Segment) -> str | None:
        return segment.compute_error if segment.status == Segment.Status.FAILED else None


class PreviewIn(Schema):
    model_config = ConfigDict(extra="forbid")
    rules: dict[str, Any]


class CustomerBrief(Schema):
    id: int
    external_id: str | None
    email: str


class PreviewOut(Schema):
    count: int
    sample: list[CustomerBrief]


class MemberOut(Schema):
    id: int
    external_id: str | None
    entered_at: datetime


class MembersOut(Schema):
    members: list[MemberOut]
    next_cursor: int | None


class MembersQuery(Schema):
    limit: int = Field(100, ge=1, le=1000)
    cursor: int | None = Field(None, ge=1, description="next_cursor from the previous page")


class MembersChangeIn(Schema):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(default_factory=list, max_length=10000)
    external_ids: list[str] = Field(default_factory=list, max_length=10000)
    emails: list[str] = Field(default_factory=list, max_length=10000)

    @model_validator(mode="after")
    def _something(self):
        if not (self.ids or self.external_ids or self.emails):
            raise ValueError("send ids, external_ids or emails of the customers")
        return self


class MembersChangeOut(Schema):
    changed: int
    not_found: list[str]
    member_count: int


class CustomerSegmentOut(Schema):
    id: int
    name: str
    kind: str
    entered_at: datetime


class ExplainOut(Schema):
    segment: int
    customer: int
    member: bool
    passed: bool | None
    tree: dict[str, Any] | None


def _segment(segment_id: int) -> Segment:
    segment = Segment.objects.filter(pk=segment_id).first()
    if segment is None:
        raise Http404(f"No segment has id {segment_id}.")
    return segment


@router.post("/segments", response={201: SegmentOut, **ERRORS}, summary="Create a segment")
def segment_create(request, payload: SegmentIn):
    """A dynamic segment's members are computed in the background: the answer comes at once,
    with ``"status": "computing"`` and progress until they are ready (read the segment again to
    follow it). It is then kept up to date as customers change."""
    segment = services.segment_create(
        name=payload.name, rules=payload.rules, static=payload.static, description=payload.description,
        actor=api_actor(request),
    )
    return Status(201, segment)


@router.get("/segments", response={200: list[SegmentOut], **ERRORS}, summary="All segments")
def segment_list(request):
    return list(Segment.objects.order_by("name"))


@router.get("/segments/{int:segment_id}", response={200: SegmentOut, **ERRORS}, summary="A segment")
def segment_detail(request, segment_id: int):
    return _segment(segment_id)


@router.put("/segments/{int:segment_id}", response={200: SegmentOut, **ERRORS}, summary="Change a segment")
def segment_update(request, segment_id: int, payload: SegmentUpdateIn):
    """Changed rules recompute the members in the background (``"status": "computing"``), and
    supersede a computation still running; then members who no longer match have left and
    new matches have entered."""
    return services.segment_update(
        segment=_segment(segment_id), actor=api_actor(request), name=payload.name, rules=payload.rules,
        description=payload.description,
    )


@router.delete("/segments/{int:segment_id}", response={204: None, **ERRORS}, summary="Delete a segment")
def segment_delete(request, segment_id: int):
    services.segment_delete(segment=_segment(segment_id), actor=api_actor(request))
    return Status(204, None)


@router.post("/segments/preview", response={200: PreviewOut, **ERRORS}, summary="Count and sample a rule tree")
def segment_preview(request, payload: PreviewIn):
    """Nothing is saved."""
    try:
        preview = queries.segment_preview(payload.rules)
    except rule_language.RuleError as exc:
        raise services.rule_input_error(exc) from None
    return {"count": preview.count, "sample": preview.sample}


@router.get("/segments/{int:segment_id}/members", response={200: MembersOut, **ERRORS}, summary="Members of a segment")
def segment_members(request, segment_id: int, params: Query[MembersQuery]):
    page = queries.segment_members_page(_segment(segment_id), limit=params.limit, cursor=params.cursor)
    return {
        "members": [
            {"id": m.customer_id, "external_id": m.customer.external_id, "entered_at": m.entered_at} for m in page.members
        ],
        "next_cursor": page.next_cursor,
    }


def _change_members(request, segment_id: int, payload: MembersChangeIn, *, add: bool):
    segment = _segment(segment_id)
    change = services.static_members_change(
        segment=segment, add=add, actor=api_actor(request), ids=payload.ids, external_ids=payload.external_ids,
        emails=payload.emails,
    )
    segment.refresh_from_db()
    return {"changed": change.changed, "not_found": change.not_found, "member_count": segment.member_count}


@router.post(
    "/segments/{int:segment_id}/members", response={200: MembersChangeOut, **ERRORS},
    summary="Add customers to a static segment",
)
def segment_members_add(request, segment_id: int, payload: MembersChangeIn):
    return _change_members(request, segment_id, payload, add=True)


@router.delete(
    "/segments/{int:segment_id}/members", response={200: MembersChangeOut, **ERRORS},
    summary="Remove customers from a static segment",
)
def segment_members_remove(request, segment_id: int, payload: MembersChangeIn):
    return _change_members(request, segment_id, payload, add=False)


@router.get(
    "/customers/{int:customer_id}/segments", response={200: list[CustomerSegmentOut], **ERRORS},
    summary="The segments a customer is in",
)
def customer_segments(request, customer_id: int):
    if not Customer.objects.filter(pk=customer_id).exists():
        raise Http404(f"No customer has id {customer_id}.")
    return [
        {"id": m.segment_id, "name": m.segment.name, "kind": m.segment.kind, "entered_at": m.entered_at}
        for m in queries.customer_segments(customer_id)
    ]


@router.get(
    "/segments/{int:segment_id}/why/{int:customer_id}", response={200: ExplainOut, **ERRORS},
    summary="Each rule of a segment evaluated for one customer",
)
def segment_why(request, segment_id: int, customer_id: int):
    segment = _segment(segment_id)
    customer = Customer.objects.filter(pk=customer_id).first()
    if customer is None:
        raise Http404(f"No customer has id {customer_id}.")
    tree = queries.segment_explain(segment, customer)
    member = segment.memberships.filter(customer=customer).exists()
    return {"segment": segment.pk, "customer": customer.pk, "member": member,
            "passed": None if tree is None else tree["passed"], "tree": tree}
