"""Outgoing webhooks: endpoints, the ordered outbox of messages for each, and the log of
every attempt to deliver them.

An :class:`Endpoint` is a URL with the event names it wants and the secret its messages are
signed with (Standard Webhooks). Each matching event becomes a :class:`Message` for the
endpoint (its outbox row, written by ``webhooks.services.enqueue``); messages are delivered
in id order, one endpoint at a time by one sender, and every try is an :class:`Attempt`.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone as tz


class Endpoint(models.Model):
    class Status(models.TextChoices):
        ENABLED = "enabled", "Enabled"
        DISABLED = "disabled", "Disabled"

    url = models.CharField("URL", max_length=2000)
    description = models.CharField(max_length=500, blank=True, default="")
    # Exact event names (order_completed), name patterns (message.*) or * for everything.
    events = ArrayField(models.CharField(max_length=200))
    # whsec_ + base64 of random bytes; the previous one keeps signing until it expires.
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ENABLED)
    disabled_reason = models.TextField(blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    # The sender delivering this endpoint's messages now, until when (see webhooks.sender).
    lease_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When a task was last queued to send this endpoint's messages (cleared when it starts):
    # at most one waits in the queue per endpoint, however many changes are enqueued.
    kicked_at = models.DateTimeField(null=True, blank=True)
    last_delivery_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=tz.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status"], name="webhooks_endpoint_status")]

    def __str__(self) -> str:
        return self.url


class Message(models.Model):
    """One event for one endpoint: the outbox row, delivered in id order per endpoint."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    # The delivery log index (endpoint, -id) serves the foreign key too.
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="messages", db_index=False)
    # The webhook-id header: the same on every attempt and on a replay.
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(max_length=200)
    # The timeline row's id (negative for segment entries and exits, as on the timeline).
    event_id = models.BigIntegerField(null=True, blank=True)
    customer_id = models.BigIntegerField()
    # The body, fixed when the message is written, so that every attempt and replay sends
    # the same bytes.
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Failed attempts since the message was last written, replayed or resumed: they pick
    # the next wait from WEBHOOK_RETRY_SCHEDULE.
    failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=tz.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=tz.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The head of each endpoint's outbox.
            models.Index(fields=["endpoint", "id"], condition=models.Q(status="pending"),
                         name="webhooks_message_pending"),
            # The delivery log, newest first.
            models.Index(fields=["endpoint", "-id"], name="webhooks_message_log"),
        ]
        constraints = [
            # A timeline row reaches an endpoint once, even if two changes name it.
            models.UniqueConstraint(fields=["endpoint", "event_id"], condition=models.Q(event_id__gt=0),
                                    name="webhooks_message_once_per_event"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.webhook_id})"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.uid.hex}"


class Attempt(models.Model):
    """One try at delivering a message: the delivery log."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempt_log")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="attempts")
    attempted_at = models.DateTimeField(default=tz.now)
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # The first few hundred characters of the answer.
    response = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["message", "id"], name="webhooks_attempt_message")]

    def __str__(self) -> str:
        return f"attempt {self.pk} of message {self.message_id}"
