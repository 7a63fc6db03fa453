from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from customers.models import Customer


@dataclass(frozen=True)
class Progress:
    phase: str
    percent: int | None  # None while there is nothing to estimate from
    seconds_left: float | None
    elapsed_ms: int

    @property
    def elapsed_seconds(self) -> int:
        return self.elapsed_ms // 1000

    @property
    def phase_label(self) -> str:
        return Segment.Phase(self.phase).label if self.phase in Segment.Phase.values else ""


class Segment(models.Model):
    """A named audience: defined by rules (kept up to date by itself) or a static list."""

    class Kind(models.TextChoices):
        DYNAMIC = "dynamic", "Dynamic (rules)"
        STATIC = "static", "Static (list)"

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        COMPUTING = "computing", "Computing"
        FAILED = "failed", "Computation failed"

    class Phase(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        EVALUATING = "evaluating", "Evaluating the rules"
        WRITING = "writing", "Writing the members"

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True, default="")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.DYNAMIC)
    rules = models.JSONField(null=True, blank=True, help_text="The rule tree as written")
    compiled = models.JSONField(null=True, blank=True, editable=False, help_text="The validated, normalised tree")
    dependencies = models.JSONField(default=dict, blank=True, editable=False)
    member_count = models.PositiveIntegerField(default=0, editable=False)
    computed_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="Last full computation")
    changed_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="Last membership change")
    swept_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Time windows were last brought up to this moment"
    )
    last_full_ms = models.PositiveIntegerField(null=True, blank=True, editable=False)
    last_lag_ms = models.PositiveIntegerField(
        null=True, blank=True, editable=False,
        help_text="Time from a customer change being committed to this segment reflecting it",
    )
    # A full computation (a new segment, new rules, "recompute now") runs in the background.
    # Each request bumps ``generation``; a computation that finds a newer one was superseded
    # and stops without writing.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY, editable=False)
    generation = models.PositiveIntegerField(default=0, editable=False)
    compute_phase = models.CharField(max_length=16, choices=Phase.choices, blank=True, default="", editable=False)
    compute_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    compute_estimate_ms = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="How long the running computation should take"
    )
    compute_error = models.TextField(blank=True, default="", editable=False)
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
    def is_dynamic(self) -> bool:
        return self.kind == self.Kind.DYNAMIC

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    def progress(self, now: datetime | None = None) -> Progress | None:
        """How far the running computation is, estimated from the time it should take; None
        unless computing."""
        if self.status != self.Status.COMPUTING:
            return None
        now = now or timezone.now()
        started = self.compute_started_at
        elapsed_ms = int((now - started).total_seconds() * 1000) if started else 0
        estimate = self.compute_estimate_ms
        if estimate is None or started is None:
            return Progress(phase=self.compute_phase or self.Phase.QUEUED, percent=None, seconds_left=None,
                            elapsed_ms=elapsed_ms)
        # An estimate is only an estimate: the bar stops short of the end until the work is done.
        percent = min(95, int(100 * elapsed_ms / max(estimate, 1)))
        left = max(estimate - elapsed_ms, 0) / 1000
        return Progress(phase=self.compute_phase, percent=percent, seconds_left=round(left, 1), elapsed_ms=elapsed_ms)


class SegmentMembership(models.Model):
    """Materialised membership: who is in a segment now, and since when."""

    pk = models.CompositePrimaryKey("segment_id", "customer_id")
    # A membership is written by set-based statements that select existing customers while
    # holding the segment's row lock, so the database checks nothing per row: no foreign key
    # triggers (deletes cascade through Django).
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="memberships",
                                db_constraint=False, db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="segment_memberships",
                                 db_constraint=False, db_index=False)
    entered_at = models.DateTimeField(default=timezone.now)
    entered_by = models.CharField(max_length=255, blank=True, default="", help_text="Who added them, when a person did")

    # The table is partitioned by segment, each partition with a unique index on customer_id:
    # see segments.storage and migration 0007.

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.segment_id}"


class PastMembership(models.Model):
    """A membership that ended: when the customer entered and when they left.

    With the current memberships' ``entered_at`` this is the segments' history on the
    customers' timelines (``segment.entered`` and ``segment.exited``, see
    ``segments.history``): entering costs no row beyond the membership itself, and leaving
    one narrow row, where a timeline event per change cost a wide row with four indexes.
    Kept when the segment is deleted.
    """

    id = models.BigAutoField(primary_key=True)
    segment_id = models.BigIntegerField()
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", db_constraint=False,
                                 db_index=False)
    entered_at = models.DateTimeField()
    exited_at = models.DateTimeField()
    entered_by = models.CharField(max_length=255, blank=True, default="")
    exited_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["customer", "-exited_at"], name="past_membership_customer_idx"),
            models.Index(fields=["segment_id", "-exited_at"], name="past_membership_segment_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.segment_id} until {self.exited_at:%Y-%m-%d %H:%M}"


class SegmentPending(models.Model):
    """Customers who changed while their segment was being computed in full: the computation
    evaluated a snapshot taken before, so it re-evaluates them once it has written."""

    pk = models.CompositePrimaryKey("segment_id", "customer_id")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="+", db_constraint=False,
                                db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", db_constraint=False,
                                 db_index=False)

    def __str__(self) -> str:
        return f"{self.customer_id} pending in {self.segment_id}"


class SegmentSize(models.Model):
    """Size samples, for the size-over-time chart (one per segment per sweep at most)."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="sizes")
    at = models.DateTimeField(default=timezone.now)
    size = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["segment", "-at"], name="segment_size_idx")]
        ordering = ["-at"]
