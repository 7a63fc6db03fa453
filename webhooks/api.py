"""Outgoing webhooks API: register endpoints, rotate their secrets, read the delivery log,
replay a message, enable an endpoint that was disabled."""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from customers.auth import api_actor
from customers.schemas import error_responses

from . import queries, services
from .models import Endpoint, Message

router = Router(tags=["webhooks"])
ERRORS = error_responses(404)


class WebhookEndpointIn(Schema):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(..., description="http(s) URL the messages are POSTed to; internal hosts are refused "
                                      "unless WEBHOOK_ALLOWED_HOSTS lists them")
    events: list[str] = Field(..., description="Event names (order_completed), patterns (message.*, "
                                               "journey.*, segment.*, customer.*) or * for every event")
    description: str = Field("", max_length=500)


class WebhookEndpointOut(Schema):
    id: int
    url: str
    description: str
    events: list[str]
    status: str = Field(..., description="enabled, or disabled (see disabled_reason)")
    disabled_reason: str | None = Field(None, description="Why the endpoint was disabled, automatically or by hand")
    disabled_at: datetime | None
    last_delivery_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        None, description="After a rotation, messages are signed with the previous secret too until then")
    created_at: datetime

    @staticmethod
    def resolve_disabled_reason(endpoint: Endpoint) -> str | None:
        return endpoint.disabled_reason if endpoint.status == Endpoint.Status.DISABLED else None


class WebhookEndpointCreatedOut(WebhookEndpointOut):
    secret: str = Field(..., description="whsec_…: verify signatures with it. Shown only now.")


class WebhookSecretOut(Schema):
    secret: str = Field(..., description="The new secret (shown only now)")
    previous_secret_expires_at: datetime | None


class WebhookDeliveryOut(Schema):
    id: int
    webhook_id: str = Field(..., description="The webhook-id header, the same on every attempt and replay")
    event_type: str
    event_id: int | None = Field(None, description="The event's timeline id")
    customer_id: int
    status: str = Field(..., description="pending, delivered or failed (given up after the last retry)")
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_response: str = Field(..., description="The first characters of the last answer")
    last_error: str
    created_at: datetime
    delivered_at: datetime | None

    @staticmethod
    def resolve_next_attempt_at(message: Message) -> datetime | None:
        return message.next_attempt_at if message.status == Message.Status.PENDING else None


class WebhookDeliveriesOut(Schema):
    deliveries: list[WebhookDeliveryOut]
    next_cursor: int | None


class WebhookDeliveriesQuery(Schema):
    limit: int = Field(50, ge=1, le=500)
    cursor: int | None = Field(None, ge=1, description="next_cursor from the previous page")


@router.post("/webhooks", response={201: WebhookEndpointCreatedOut, **ERRORS}, summary="Register a webhook endpoint")
def webhook_create(request, payload: WebhookEndpointIn):
    """The answer holds the endpoint's signing secret: it is shown only in this answer (and a
    new one when rotated), never by GET."""
    endpoint = services.endpoint_create(
        url=payload.url, events=payload.events, description=payload.description, actor=api_actor(request))
    return Status(201, endpoint)


@router.get("/webhooks", response={200: list[WebhookEndpointOut], **ERRORS}, summary="All webhook endpoints")
def webhook_list(request):
    return queries.endpoint_list()


@router.get("/webhooks/{int:webhook_id}", response={200: WebhookEndpointOut, **ERRORS}, summary="A webhook endpoint")
def webhook_detail(request, webhook_id: int):
    return queries.endpoint_get(webhook_id)


@router.delete("/webhooks/{int:webhook_id}", response={204: None, **ERRORS}, summary="Delete a webhook endpoint")
def webhook_delete(request, webhook_id: int):
    services.endpoint_delete(endpoint=queries.endpoint_get(webhook_id), actor=api_actor(request))
    return Status(204, None)


@router.post("/webhooks/{int:webhook_id}/rotate-secret", response={200: WebhookSecretOut, **ERRORS},
             summary="Rotate an endpoint's signing secret")
def webhook_rotate_secret(request, webhook_id: int):
    """Messages are signed with both the new and the previous secret for a grace period
    (``previous_secret_expires_at``), so receivers can switch without losing any."""
    endpoint = queries.endpoint_get(webhook_id)
    secret = services.secret_rotate(endpoint=endpoint, actor=api_actor(request))
    return {"secret": secret, "previous_secret_expires_at": endpoint.previous_secret_expires_at}


@router.post("/webhooks/{int:webhook_id}/enable", response={200: WebhookEndpointOut, **ERRORS},
             summary="Enable a disabled endpoint")
def webhook_enable(request, webhook_id: int):
    """Delivery resumes, in order, from the message the endpoint stopped at."""
    return services.endpoint_enable(endpoint=queries.endpoint_get(webhook_id), actor=api_actor(request))


@router.get("/webhooks/{int:webhook_id}/deliveries", response={200: WebhookDeliveriesOut, **ERRORS},
            summary="An endpoint's delivery log, newest first",
            description="Keyset pagination: pass `next_cursor` as `cursor` to get the next page.")
def webhook_deliveries(request, webhook_id: int, params: Query[WebhookDeliveriesQuery]):
    page = queries.deliveries_page(queries.endpoint_get(webhook_id), limit=params.limit, cursor=params.cursor)
    return {"deliveries": page.messages, "next_cursor": page.next_cursor}


@router.post("/webhooks/{int:webhook_id}/deliveries/{int:delivery_id}/replay",
             response={202: WebhookDeliveryOut, **ERRORS}, summary="Send a message again")
def webhook_replay(request, webhook_id: int, delivery_id: int):
    """The message is sent again with the same ``webhook-id`` and body, delivered or not."""
    message = queries.message_get(queries.endpoint_get(webhook_id), delivery_id)
    return Status(202, services.message_replay(message=message, actor=api_actor(request)))
