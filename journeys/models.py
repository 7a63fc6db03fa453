"""Journeys: the running automation that moves each customer through a graph of steps.

A :class:`Journey` holds a draft graph; publishing freezes it as an immutable
:class:`JourneyVersion`. Each customer in a journey is an :class:`Enrollment` pinned to a
version, at one node, with a sequence number that every transition checks
(``UPDATE … WHERE id = … AND seq = …``), so a step runs once even when a task is retried or
a worker dies. Timers (:class:`WakeUp`) and event waits (:class:`EventWait`) are narrow
tables of their own; :class:`Step` is the log, unique per (enrollment, node, visit).
Messages go to ``campaigns.Delivery``; webhooks (:class:`WebhookCall`) and support tasks
(:class:`Task`) are outbox rows with idempotency keys written in the same transaction as
the step that made them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from customers.models import Customer


class Journey(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        LIVE = "live", "Live"
        PAUSED = "paused", "Paused"
        STOPPED = "stopped", "Stopped"

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # The graph being edited, in our own schema (journeys.graph); the canvas's JSON is a view of it.
    draft = models.JSONField(default=dict, blank=True)
    draft_saved_at = models.DateTimeField(default=timezone.now)
    live_version = models.ForeignKey(
        "JourneyVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def accepts_entries(self) -> bool:
        return self.status == self.Status.LIVE


class JourneyVersion(models.Model):
    """A published graph. Never changed after it is written."""

    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    graph = models.JSONField()
    published_at = models.DateTimeField(default=timezone.now)
    published_by = models.CharField(max_length=255, blank=True, default="")
    # What the publish did with the customers in flight: {"moved": {old_node: [new_node, n]}, …}.
    migration = models.JSONField(default=dict, blank=True)
    # A snapshot of the draft that test mode runs one customer through; never live.
    is_test = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "number"], condition=Q(is_test=False), name="journey_version_unique"
            ),
        ]
        ordering = ["journey", "-number"]

    def __str__(self) -> str:
        return f"{self.journey} v{self.number}"


class EnrollmentStatus(models.TextChoices):
    ACTIVE = "active", "Moving"
    WAITING = "waiting", "Waiting"
    COMPLETED = "completed", "Completed"
    CONVERTED = "converted", "Converted"
    EXITED = "exited", "Exited"


IN_FLIGHT = (EnrollmentStatus.ACTIVE.value, EnrollmentStatus.WAITING.value)


class Enrollment(models.Model):
    """One customer's run through a journey.

    ``run_key`` tells runs apart where a journey allows several (one per cart id); a
    customer has at most one run in flight per (journey, run_key), and with ``once``
    (``unique_run``) at most one ever.
    """

    id = models.BigAutoField(primary_key=True)
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="enrollments")
    version = models.ForeignKey(JourneyVersion, on_delete=models.PROTECT, related_name="enrollments")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="journey_enrollments")
    node = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=EnrollmentStatus.choices, default=EnrollmentStatus.ACTIVE)
    context = models.JSONField(default=dict, blank=True)
    seq = models.PositiveIntegerField(default=0)
    run_key = models.CharField(max_length=255, blank=True, default="")
    unique_run = models.BooleanField(default=False)
    test = models.BooleanField(default=False, help_text="A test-mode run: waits shortened, sandbox providers")
    entered_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    # The node whose step came last before the journey ended (conversions are attributed to it).
    last_step = models.CharField(max_length=64, blank=True, default="")
    wake_at = models.DateTimeField(null=True, blank=True, help_text="The next scheduled wake-up, for display")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "customer", "run_key"],
                condition=Q(ended_at__isnull=True),
                name="enrollment_in_flight_unique",
            ),
            models.UniqueConstraint(
                fields=["journey", "customer", "run_key"],
                condition=Q(unique_run=True),
                name="enrollment_once_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["journey", "node"], name="enrollment_node_idx", condition=Q(ended_at__isnull=True)),
            models.Index(fields=["customer", "-entered_at"], name="enrollment_customer_idx"),
            models.Index(fields=["journey", "customer", "-ended_at"], name="enrollment_reentry_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.journey_id} at {self.node}"

    @property
    def in_flight(self) -> bool:
        return self.ended_at is None


class WakeUp(models.Model):
    """A timer: wake the enrollment at ``due_at`` at ``node`` (if its ``seq`` still matches)."""

    id = models.BigAutoField(primary_key=True)
    enrollment = models.OneToOneField(Enrollment, on_delete=models.CASCADE, related_name="wakeup")
    due_at = models.DateTimeField()
    node = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()
    # The port to leave by when it fires ("out" for a plain wait, "timeout" for an event wait).
    port = models.CharField(max_length=32, default="out")

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="wakeup_due_idx")]


class EventWait(models.Model):
    """Wait for an event (optionally with a property equal to ``match_value``)."""

    id = models.BigAutoField(primary_key=True)
    enrollment = models.OneToOneField(Enrollment, on_delete=models.CASCADE, related_name="event_wait")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", db_index=False)
    event = models.CharField(max_length=128)
    match_property = models.CharField(max_length=128, blank=True, default="")
    match_value = models.TextField(blank=True, default="")
    node = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["customer", "event"], name="eventwait_customer_idx")]


class Step(models.Model):
    """The step log: one row per node an enrollment passed, with the port it left by."""

    id = models.BigAutoField(primary_key=True)
    enrollment = models.ForeignKey(Enrollment, on_delete=models.CASCADE, related_name="steps", db_index=False)
    journey_id = models.BigIntegerField()
    node = models.CharField(max_length=64)
    visit = models.PositiveIntegerField(default=1)
    port = models.CharField(max_length=64, blank=True, default="")
    at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["enrollment", "node", "visit"], name="step_once")]
        indexes = [models.Index(fields=["journey_id", "node", "at"], name="step_node_idx")]


class NodeCounter(models.Model):
    """Live-map figures, kept by the executor: per journey × node × port × metric, in total
    and per minute. Sharded like ``campaigns.Counter`` so a herd does not queue on one row."""

    class Grain(models.TextChoices):
        TOTAL = "total", "Total"
        MINUTE = "minute", "Minute"

    id = models.BigAutoField(primary_key=True)
    journey_id = models.BigIntegerField()
    grain = models.CharField(max_length=8, choices=Grain.choices)
    bucket = models.DateTimeField()
    node = models.CharField(max_length=64)
    # "" for node metrics (entered), the port for edge metrics (passed).
    port = models.CharField(max_length=64, blank=True, default="")
    metric = models.CharField(max_length=32, help_text="entered, passed, converted, exited")
    shard = models.SmallIntegerField(default=0)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["journey_id", "grain", "bucket", "node", "port", "metric", "shard"], name="nodecounter_unique"
            ),
        ]


# --- Next best action -------------------------------------------------------------------------------


class Action(models.Model):
    """An entry of the next-best-action catalog: an offer, a message or a human follow-up."""

    class Kind(models.TextChoices):
        OFFER = "offer", "Offer"
        MESSAGE = "message", "Message"
        HUMAN = "human", "Human follow-up"

    key = models.SlugField(max_length=64, unique=True, help_text="The node's port for this action")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OFFER)
    description = models.TextField(blank=True, default="")
    eligibility = models.JSONField(null=True, blank=True, help_text="A rule tree; empty means everyone")
    eligibility_compiled = models.JSONField(null=True, blank=True, editable=False)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    value = models.DecimalField(max_digits=12, decimal_places=2, default=1)
    priority = models.DecimalField(max_digits=6, decimal_places=2, default=1)
    # Contact policy: at most max_offers in window_days; a pause after an answer.
    max_offers = models.PositiveIntegerField(default=3)
    window_days = models.PositiveIntegerField(default=30)
    cooldown_after_accept_days = models.PositiveIntegerField(default=30)
    cooldown_after_reject_days = models.PositiveIntegerField(default=7)
    accept_event = models.CharField(max_length=128, help_text="The event that counts as acceptance")
    reject_event = models.CharField(max_length=128, blank=True, default="")
    active = models.BooleanField(default=True)
    # Learnt from outcomes: offers made and accepted (the acceptance rate is smoothed).
    offered = models.PositiveIntegerField(default=0, editable=False)
    accepted = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.name


class Decision(models.Model):
    """One next-best-action decision, with every candidate, its score and the reasons."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"

    id = models.BigAutoField(primary_key=True)
    enrollment = models.ForeignKey(Enrollment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    journey_id = models.BigIntegerField(null=True, blank=True)
    node = models.CharField(max_length=64, blank=True, default="")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="decisions")
    action = models.ForeignKey(Action, null=True, blank=True, on_delete=models.SET_NULL, related_name="decisions")
    holdout = models.BooleanField(default=False)
    candidates = models.JSONField(default=list, blank=True)
    decided_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    outcome_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["customer", "action", "-decided_at"], name="decision_contact_idx"),
        ]


# --- Work handed outside the executor ---------------------------------------------------------------


class Task(models.Model):
    """A support task a journey handed to a person; the journey waits for its outcome."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        EXPIRED = "expired", "Expired"

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="journey_tasks")
    journey = models.ForeignKey(Journey, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    enrollment = models.ForeignKey(Enrollment, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    node = models.CharField(max_length=64, blank=True, default="")
    seq = models.PositiveIntegerField(default=0)
    title = models.CharField(max_length=200)
    instructions = models.TextField(blank=True, default="")
    outcomes = models.JSONField(default=list, help_text="The outcomes a person can choose")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="journey_tasks"
    )
    outcome = models.CharField(max_length=64, blank=True, default="")
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=255, blank=True, default="")
    idempotency_key = models.CharField(max_length=255, unique=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"], name="task_queue_idx")]
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.title


class WebhookCall(models.Model):
    """An outgoing webhook of a journey step: written with the step, sent by a worker."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    id = models.BigAutoField(primary_key=True)
    enrollment = models.ForeignKey(Enrollment, on_delete=models.CASCADE, related_name="webhook_calls")
    node = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()
    url = models.URLField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["next_attempt_at"], name="webhookcall_due_idx", condition=Q(status="pending")),
        ]
