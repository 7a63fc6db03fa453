"""Next-best-action catalog API: /api/v1/actions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.http import Http404
from ninja import Field, Router, Schema, Status
from pydantic import AwareDatetime, ConfigDict

from core.errors import FieldError, InputError
from customers.auth import api_actor
from customers.schemas import error_responses

from . import action_services
from .models import Action
from .nba import smoothed_rate

router = Router(tags=["actions"])
ERRORS = error_responses(404)

KIND = Field(Action.Kind.OFFER.value, description="offer, message or human (a follow-up by a person)")
KEY = Field(..., description="Lower-case letters, digits, '_' or '-'; the port journeys leave by. Cannot change.")
ELIGIBILITY = Field(None, description="A rule tree in the segments' rule language; null means everyone")


class ActionIn(Schema):
    model_config = ConfigDict(extra="forbid")
    key: str = KEY
    name: str
    kind: str = KIND
    description: str = ""
    eligibility: dict[str, Any] | None = ELIGIBILITY
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    value: Decimal = Field(Decimal("1"), description="What an acceptance is worth (2 decimal places)")
    priority: Decimal = Field(Decimal("1"), description="A weight of the score (2 decimal places)")
    max_offers: int = Field(3, description="At most this many offers to one customer …")
    window_days: int = Field(30, description="… in this many days")
    cooldown_after_accept_days: int = 30
    cooldown_after_reject_days: int = 7
    accept_event: str = Field(..., description="The event that counts as acceptance")
    reject_event: str = Field("", description="The event that counts as rejection (optional)")
    active: bool = True


class ActionUpdateIn(Schema):
    """Only the fields sent change; null clears eligibility and the validity dates."""

    model_config = ConfigDict(extra="forbid")
    key: str | None = Field(None, description="Must equal the current key: it cannot change")
    name: str | None = None
    kind: str | None = None
    description: str | None = None
    eligibility: dict[str, Any] | None = ELIGIBILITY
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    value: Decimal | None = None
    priority: Decimal | None = None
    max_offers: int | None = None
    window_days: int | None = None
    cooldown_after_accept_days: int | None = None
    cooldown_after_reject_days: int | None = None
    accept_event: str | None = None
    reject_event: str | None = None
    active: bool | None = None


# Fields a PUT may clear with null; for the others null is refused like any other bad value.
NULLABLE = {"eligibility", "valid_from", "valid_until"}


class ActionOut(Schema):
    id: int
    key: str
    name: str
    kind: str
    description: str
    eligibility: dict[str, Any] | None
    valid_from: datetime | None
    valid_until: datetime | None
    value: float
    priority: float
    max_offers: int
    window_days: int
    cooldown_after_accept_days: int
    cooldown_after_reject_days: int
    accept_event: str
    reject_event: str
    active: bool
    offered: int
    accepted: int
    acceptance_rate: float = Field(..., description="(accepted + 1) / (offered + 2): the smoothed rate ranking uses")
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_acceptance_rate(action: Action) -> float:
        return smoothed_rate(offered=action.offered, accepted=action.accepted)


def _action(action_id: int) -> Action:
    action = Action.objects.filter(pk=action_id).first()
    if action is None:
        raise Http404(f"No action has id {action_id}.")
    return action


@router.get("/actions", response={200: list[ActionOut], **ERRORS}, summary="The next-best-action catalog")
def action_list(request):
    return list(Action.objects.order_by("key"))


@router.post("/actions", response={201: ActionOut, **ERRORS}, summary="Add an action to the catalog")
def action_create(request, payload: ActionIn):
    fields = payload.model_dump()
    action = action_services.action_create(
        key=fields.pop("key"), name=fields.pop("name"), accept_event=fields.pop("accept_event"),
        actor=api_actor(request), **fields,
    )
    return Status(201, action)


@router.get("/actions/{int:action_id}", response={200: ActionOut, **ERRORS}, summary="An action")
def action_detail(request, action_id: int):
    return _action(action_id)


@router.put("/actions/{int:action_id}", response={200: ActionOut, **ERRORS}, summary="Change an action")
def action_update(request, action_id: int, payload: ActionUpdateIn):
    """The fields sent change; the others stay as they are."""
    changes = payload.model_dump(exclude_unset=True)
    refused = sorted(field for field, value in changes.items() if value is None and field not in NULLABLE)
    if refused:
        raise InputError([FieldError(field, "may not be null; leave it out to keep it") for field in refused])
    return action_services.action_update(action=_action(action_id), actor=api_actor(request), **changes)


@router.delete(
    "/actions/{int:action_id}", response={200: ActionOut, 204: None, **ERRORS},
    summary="Delete an action, or deactivate it when decisions or journeys refer to it",
)
def action_delete(request, action_id: int):
    """204 when the action is gone; 200 with the action, now inactive, when its history is kept."""
    action = _action(action_id)
    if action_services.action_delete(action=action, actor=api_actor(request)):
        return Status(204, None)
    action.refresh_from_db()
    return Status(200, action)
