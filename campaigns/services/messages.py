"""One-off messages sent through the API: one customer, one channel, the same policy and
outbox as campaigns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from customers.models import Customer, Topic

from ..dispatch import dispatch_soon
from ..models import Delivery, DeliveryStatus
from ..personalisation import TemplateProblem, compile_content
from ..policy import decide
from ..transitions import deliveries_transition


@dataclass
class MessageResult:
    delivery: Delivery | None
    action: str
    reason: str = ""
    until: datetime | None = None
    duplicate: bool = False


def message_send(
    *, customer: Customer, topic: Topic, channel: str, content: dict, actor: str, idempotency_key: str | None = None
) -> MessageResult:
    """Send one message to one customer through the same policy and outbox as campaigns.

    The delivery is written (planned, deferred or suppressed) and the workers send it; an
    idempotency key sent twice returns the first delivery.
    """
    if idempotency_key:
        existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
        if existing:
            return MessageResult(existing, existing.status, existing.reason, duplicate=True)
    try:
        compile_content(channel, content)
    except TemplateProblem as problem:
        raise InputError([FieldError(f"content.{problem.field}", problem.message)]) from None
    now = timezone.now()
    (decision,) = decide(customer_id=customer.pk, topic_id=topic.pk, channels=[channel], at=now)
    with transaction.atomic():
        # Written planned, like every delivery, then moved by the policy's decision through
        # the one transitions path, which writes the suppression's timeline event and counter.
        delivery = Delivery.objects.create(
            customer=customer, topic=topic, channel=channel, payload={channel: content},
            status=DeliveryStatus.PLANNED, reason=decision.reason,
            due_at=decision.until or now, idempotency_key=idempotency_key, routed_by="api",
        )
        if decision.action == "suppress":
            deliveries_transition(
                to=DeliveryStatus.SUPPRESSED, only_from=[DeliveryStatus.PLANNED], now=now, reason="d.reason",
                source="SELECT %(id)s::bigint AS id", params={"id": delivery.pk},
            )
            delivery.status = DeliveryStatus.SUPPRESSED
        audit(actor=actor, action="message.requested", object_type="customer", object_id=customer.pk,
              details={"delivery_id": delivery.pk, "channel": channel, "topic": topic.key, "decision": decision.action})
        if decision.action == "send":
            transaction.on_commit(dispatch_soon, robust=True)
    return MessageResult(delivery, decision.action, decision.reason, decision.until)
