"""Every write to endpoints and their messages (besides the sender's own, in ``sender.py``
and the outbox's, in ``outbox.py``): keyword-only arguments, one transaction, audited."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from core.outbound import url_problem

from .models import Endpoint, Message

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_EVENTS = 100
# An exact event name (order_completed, message.sent), a family (message.*) or everything (*).
EVENT_PATTERN = re.compile(r"\*|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(\.\*)?")
OBJECT_TYPE = "webhook_endpoint"


def new_secret() -> str:
    """``whsec_`` and the base64 of random bytes, as Standard Webhooks secrets are written."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def clean_url(url: object) -> str:
    problem = url_problem(url)
    if problem:
        raise InputError([FieldError("url", f"The URL {problem}.")])
    return url  # type: ignore[return-value]


def clean_events(events: object) -> list[str]:
    """The event names and patterns, stripped and without repeats; InputError naming ``events``."""
    if not isinstance(events, (list, tuple)) or not events:
        raise InputError([FieldError("events", "list at least one event name or pattern (message.*, or * for all)")])
    if len(events) > MAX_EVENTS:
        raise InputError([FieldError("events", f"at most {MAX_EVENTS} names or patterns")])
    cleaned: list[str] = []
    for index, event in enumerate(events):
        value = event.strip() if isinstance(event, str) else event
        if not isinstance(value, str) or len(value) > 200 or not EVENT_PATTERN.fullmatch(value):
            raise InputError([FieldError(
                f"events[{index}]",
                "must be an event name (order_completed), a name pattern ending in .* (message.*) or *",
            )])
        if value not in cleaned:
            cleaned.append(value)
    return cleaned


def matches(patterns: list[str], name: str) -> bool:
    """Whether an endpoint listening for ``patterns`` wants events named ``name``."""
    for pattern in patterns:
        if pattern == "*" or pattern == name or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
            return True
    return False


def _clean(url: object, events: object) -> tuple[str, list[str]]:
    """Both checked, every problem reported at once."""
    errors: list[FieldError] = []
    cleaned = []
    for check, value in ((clean_url, url), (clean_events, events)):
        try:
            cleaned.append(check(value))
        except InputError as error:
            errors += error.errors
    if errors:
        raise InputError(errors)
    return cleaned[0], cleaned[1]


def endpoint_create(*, url: str, events: list[str], description: str = "", actor: str) -> Endpoint:
    """Register an endpoint; its ``secret`` is on the returned object (shown once)."""
    url, events = _clean(url, events)
    with transaction.atomic():
        endpoint = Endpoint.objects.create(url=url, events=events, description=description, secret=new_secret())
        audit(actor=actor, action="webhook.create", object_type=OBJECT_TYPE, object_id=endpoint.pk,
              details={"url": url, "events": events})
    return endpoint


def endpoint_update(*, endpoint: Endpoint, url: str, events: list[str], description: str, actor: str) -> Endpoint:
    url, events = _clean(url, events)
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(url=url, events=events, description=description,
                                                       updated_at=timezone.now())
        audit(actor=actor, action="webhook.update", object_type=OBJECT_TYPE, object_id=endpoint.pk,
              details={"url": url, "events": events})
    endpoint.refresh_from_db()
    return endpoint


def endpoint_delete(*, endpoint: Endpoint, actor: str) -> None:
    with transaction.atomic():
        audit(actor=actor, action="webhook.delete", object_type=OBJECT_TYPE, object_id=endpoint.pk,
              details={"url": endpoint.url})
        endpoint.delete()


def secret_rotate(*, endpoint: Endpoint, actor: str) -> str:
    """A new secret; the current one keeps signing (beside it) for WEBHOOK_SECRET_GRACE_SECONDS."""
    secret = new_secret()
    now = timezone.now()
    with transaction.atomic():
        current = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        Endpoint.objects.filter(pk=endpoint.pk).update(
            secret=secret, previous_secret=current.secret, updated_at=now,
            previous_secret_expires_at=now + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SECONDS),
        )
        audit(actor=actor, action="webhook.rotate_secret", object_type=OBJECT_TYPE, object_id=endpoint.pk,
              details={"grace_seconds": settings.WEBHOOK_SECRET_GRACE_SECONDS})
    endpoint.refresh_from_db()
    return secret


def endpoint_enable(*, endpoint: Endpoint, actor: str) -> Endpoint:
    """Enable a disabled endpoint: delivery resumes, in order, from the message it stopped at
    (a message given up on is pending again, with a fresh retry schedule)."""
    now = timezone.now()
    with transaction.atomic():
        changed = Endpoint.objects.filter(pk=endpoint.pk, status=Endpoint.Status.DISABLED).update(
            status=Endpoint.Status.ENABLED, disabled_reason="", disabled_at=None, updated_at=now)
        if changed:
            Message.objects.filter(endpoint=endpoint, status=Message.Status.FAILED).update(
                status=Message.Status.PENDING, failures=0, next_attempt_at=now)
            audit(actor=actor, action="webhook.enable", object_type=OBJECT_TYPE, object_id=endpoint.pk)
            from .sender import kick

            transaction.on_commit(lambda: kick([endpoint.pk]), robust=True)
    endpoint.refresh_from_db()
    return endpoint


def endpoint_disable(*, endpoint: Endpoint, actor: str, reason: str) -> Endpoint:
    """Stop delivering to an endpoint by hand; its messages (and new ones) wait in its outbox."""
    now = timezone.now()
    with transaction.atomic():
        changed = Endpoint.objects.filter(pk=endpoint.pk, status=Endpoint.Status.ENABLED).update(
            status=Endpoint.Status.DISABLED, disabled_reason=reason, disabled_at=now, updated_at=now)
        if changed:
            audit(actor=actor, action="webhook.disable", object_type=OBJECT_TYPE, object_id=endpoint.pk,
                  details={"reason": reason})
    endpoint.refresh_from_db()
    return endpoint


def message_replay(*, message: Message, actor: str) -> Message:
    """Send a message again, delivered or not, with the same ``webhook-id`` and body. It goes
    ahead of the endpoint's later messages (the outbox sends the lowest pending id first)."""
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(status=Message.Status.PENDING, failures=0, next_attempt_at=now)
        audit(actor=actor, action="webhook.replay", object_type="webhook_message", object_id=message.pk,
              details={"endpoint": message.endpoint_id, "webhook_id": message.webhook_id})
        from .sender import kick

        transaction.on_commit(lambda: kick([message.endpoint_id]), robust=True)
    message.refresh_from_db()
    return message
