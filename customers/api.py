"""Customers API: profiles, preferences, consent, devices, timeline and event ingestion."""

from django.http import Http404
from ninja import Query, Router, Schema, Status
from ninja import Field as NinjaField

from core.errors import FieldError, InputError

from . import queries
from .services import ingestion, preferences, profiles
from .auth import api_actor
from .models import ChannelKind, Customer, EventCategory, Topic
from .schemas import (
    ConsentIn,
    CustomerBatchIn,
    CustomerDetailOut,
    CustomerIn,
    CustomerOut,
    DeviceIn,
    DeviceOut,
    EventBatchIn,
    IngestOut,
    SubscriptionIn,
    SubscriptionOut,
    TimelineOut,
    UpsertOut,
    error_responses,
)

router = Router(tags=["customers"])

ERRORS = error_responses(404)


def _customer(customer_id: int) -> Customer:
    customer = Customer.objects.filter(pk=customer_id).first()
    if customer is None:
        raise Http404(f"No customer has id {customer_id}.")
    return customer


def _input(payload: CustomerIn) -> profiles.CustomerInput:
    data = payload.model_dump(exclude_unset=True)
    data["subscriptions"] = [
        {"topic": sub.topic, "channel": str(sub.channel), "subscribed": sub.subscribed} for sub in payload.subscriptions
    ]
    return profiles.CustomerInput(**data)


def _upsert_out(result: profiles.UpsertResult) -> dict:
    return {**CustomerOut.from_orm(result.customer).dict(), "created": result.created}


@router.post(
    "/customers",
    response={200: UpsertOut, 201: UpsertOut, **ERRORS},
    summary="Create or update a customer",
    description="Matched by `external_id`, else by `email`. Attributes are merged; 201 when created.",
)
def customer_upsert(request, payload: CustomerIn):
    [result] = profiles.customers_upsert(items=[_input(payload)], source="api", actor=api_actor(request))
    return Status(201 if result.created else 200, _upsert_out(result))


class BatchUpsertOut(Schema):
    customers: list[UpsertOut]


@router.post(
    "/customers/batch",
    response={200: BatchUpsertOut, **ERRORS},
    summary="Create or update up to 1,000 customers",
    description="All or nothing: any invalid item rejects the whole batch with an error per item index.",
)
def customers_batch(request, payload: CustomerBatchIn):
    results = profiles.customers_upsert(
        items=[_input(item) for item in payload.customers], source="api", actor=api_actor(request)
    )
    return {"customers": [_upsert_out(result) for result in results]}


def _detail(customer_id: int) -> dict:
    customer = queries.customer_with_profile(customer_id)
    if customer is None:
        raise Http404(f"No customer has id {customer_id}.")
    data = CustomerOut.from_orm(customer).dict()
    data["subscriptions"] = [
        {"topic": s.topic.key, "channel": s.channel, "subscribed": s.subscribed, "source": s.source,
         "updated_at": s.updated_at}
        for s in sorted(customer.subscriptions.all(), key=lambda s: (s.topic.key, s.channel))
    ]
    data["consent"] = [
        {"channel": s.channel, "granted": s.granted, "updated_at": s.updated_at, "source": s.consent.source,
         "legal_basis": s.consent.legal_basis}
        for s in customer.consent_states.all()
    ]
    data["devices"] = list(customer.devices.all())
    return data


@router.get("/customers/{int:customer_id}", response={200: CustomerDetailOut, **ERRORS}, summary="A customer")
def customer_detail(request, customer_id: int):
    """Profile, subscriptions, current consent per channel, and devices."""
    return _detail(customer_id)


class TimelineQuery(Schema):
    limit: int = NinjaField(50, ge=1, le=200)
    cursor: str | None = None
    category: EventCategory | None = NinjaField(None, description="messages, events, segments, …")
    channel: ChannelKind | None = None


@router.get(
    "/customers/{int:customer_id}/timeline",
    response={200: TimelineOut, **ERRORS},
    summary="A customer's timeline, newest first",
    description="Keyset pagination: pass `next_cursor` as `cursor` to get the next page.",
)
def customer_timeline(request, customer_id: int, params: Query[TimelineQuery]):
    _customer(customer_id)
    try:
        page = queries.timeline_page(
            customer_id, limit=params.limit, cursor=params.cursor,
            category=params.category or "", channel=params.channel or "",
        )
    except queries.InvalidCursor as exc:
        raise InputError([FieldError("cursor", str(exc))]) from None
    return {"events": page.events, "next_cursor": page.next_cursor}


class SubscriptionsOut(Schema):
    changed: bool
    subscriptions: list[SubscriptionOut]


@router.post(
    "/customers/{int:customer_id}/subscriptions",
    response={200: SubscriptionsOut, **ERRORS},
    summary="Subscribe or unsubscribe a customer from a topic on a channel",
)
def subscription_set(request, customer_id: int, payload: SubscriptionIn):
    customer = _customer(customer_id)
    topic = Topic.objects.filter(key=payload.topic).first()
    if topic is None:
        raise InputError([FieldError("topic", preferences.unknown_topic_message(payload.topic))])
    changed = preferences.subscription_set(
        customer=customer, topic=topic, channel=payload.channel, subscribed=payload.subscribed,
        source=payload.source, actor=api_actor(request), reason=payload.reason,
    )
    return {"changed": changed, "subscriptions": _detail(customer_id)["subscriptions"]}


class ConsentOut(Schema):
    id: int
    channel: str
    granted: bool
    occurred_at: str
    source: str
    legal_basis: str


@router.post(
    "/customers/{int:customer_id}/consent",
    response={201: ConsentOut, **ERRORS},
    summary="Record a consent grant or revocation, with proof",
)
def consent_record(request, customer_id: int, payload: ConsentIn):
    customer = _customer(customer_id)
    entry = preferences.consent_record(
        customer=customer, channel=payload.channel, granted=payload.granted, source=payload.source,
        actor=api_actor(request), legal_basis=payload.legal_basis, ip_address=payload.proof.ip_address,
        user_agent=payload.proof.user_agent, wording=payload.proof.wording, form_url=payload.proof.form_url,
        occurred_at=payload.occurred_at,
    )
    return Status(201, {
        "id": entry.pk, "channel": entry.channel, "granted": entry.granted,
        "occurred_at": entry.occurred_at.isoformat(), "source": entry.source, "legal_basis": entry.legal_basis,
    })


@router.post(
    "/customers/{int:customer_id}/devices",
    response={201: DeviceOut, **ERRORS},
    summary="Register a push device (FCM token or Web Push subscription)",
)
def device_register(request, customer_id: int, payload: DeviceIn):
    customer = _customer(customer_id)
    device = profiles.device_register(
        customer=customer, kind=payload.kind, token=payload.token, platform=payload.platform,
        source="api", actor=api_actor(request),
    )
    return Status(201, device)


class EventBatchWithSource(EventBatchIn):
    source: str = NinjaField(
        "api", pattern=r"^[a-z][a-z0-9_.:-]{0,63}$",
        description="Where the events come from (web, app, ivr, crm…); idempotency keys are unique per source",
    )


@router.post(
    "/events",
    response={200: IngestOut, **ERRORS},
    summary="Ingest up to 1,000 events",
    description=(
        "The whole batch is validated first: any invalid item rejects the batch (HTTP 400, an error per "
        "item index and field) and nothing is written. Customers referenced by `external_id` or `email` "
        "are created when unknown. Events whose `idempotency_key` was already stored for the same "
        "`source` are skipped, so retrying a batch is safe."
    ),
)
def events_ingest(request, payload: EventBatchWithSource):
    items = [
        ingestion.EventInput(
            customer_id=event.customer.id,
            external_id=event.customer.external_id,
            email=event.customer.email,
            name=event.name,
            properties=event.properties,
            occurred_at=event.occurred_at,
            idempotency_key=event.idempotency_key,
        )
        for event in payload.events
    ]
    result = ingestion.events_ingest(items=items, source=payload.source, actor=api_actor(request))
    return {"accepted": result.accepted, "duplicates": result.duplicates, "customers_created": result.customers_created}
