from django.conf import settings
from django.db import models
from django.utils import timezone

from customers.models import Customer


class Segment(models.Model):
    """A named audience: defined by rules (kept up to date by itself) or a static list."""

    class Kind(models.TextChoices):
        DYNAMIC = "dynamic", "Dynamic (rules)"
        STATIC = "static", "Static (list)"

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


class SegmentMembership(models.Model):
    """Materialised membership: who is in a segment now, and since when."""

    pk = models.CompositePrimaryKey("segment_id", "customer_id")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="memberships")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="segment_memberships")
    entered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["customer", "segment"], name="membership_customer_idx")]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.segment_id}"


class SegmentSize(models.Model):
    """Size samples, for the size-over-time chart (one per segment per sweep at most)."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="sizes")
    at = models.DateTimeField(default=timezone.now)
    size = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["segment", "-at"], name="segment_size_idx")]
        ordering = ["-at"]
