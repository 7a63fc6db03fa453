from django.conf import settings
from django.db import models
from django.utils import timezone as tz


class MatchKey(models.TextChoices):
    EXTERNAL_ID = "external_id", "External id"
    EMAIL = "email", "Email"
    PHONE = "phone", "Phone"


class CustomerImport(models.Model):
    """One uploaded CSV file: its staging, its mapping, its progress and its outcome."""

    class Status(models.TextChoices):
        # The file is in its staging table; the mapping is still to be chosen.
        STAGED = "staged", "Waiting for the mapping"
        QUEUED = "queued", "Waiting for a worker"
        VALIDATING = "validating", "Validating"
        APPLYING = "applying", "Applying"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        DISCARDED = "discarded", "Discarded"

    RUNNING = (Status.QUEUED, Status.VALIDATING, Status.APPLYING)
    FINISHED = (Status.DONE, Status.FAILED, Status.DISCARDED)

    filename = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STAGED)
    delimiter = models.CharField(max_length=1, default=",")
    columns = models.JSONField(default=list, help_text="The header's column names, in order")
    preview = models.JSONField(default=list, blank=True, help_text="The first rows, as lists of values")
    mapping = models.JSONField(default=dict, blank=True, help_text="Column name → what it means")
    match_on = models.CharField(max_length=16, choices=MatchKey.choices, default=MatchKey.EXTERNAL_ID)
    update_existing = models.BooleanField(default=True)
    rows_total = models.BigIntegerField(default=0)
    # The first this many rows (in file order) are applied: each chunk moves it in the
    # transaction that applies the chunk, so no row is applied twice.
    applied_through = models.BigIntegerField(default=0)
    created_count = models.BigIntegerField(default=0)
    updated_count = models.BigIntegerField(default=0)
    unchanged_count = models.BigIntegerField(default=0)
    rejected_count = models.BigIntegerField(default=0)
    warning_count = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    phase_seconds = models.JSONField(default=dict, blank=True, help_text="Seconds spent in each phase")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=tz.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    applying_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status"], name="customer_import_status_idx")]

    @property
    def phase_timings(self) -> list[tuple[str, float]]:
        """(phase, seconds) in the order the phases run (JSON objects keep no key order)."""
        return [(phase, self.phase_seconds[phase]) for phase in ("staging", "validating", "applying")
                if phase in self.phase_seconds]

    def __str__(self) -> str:
        return f"{self.filename} ({self.get_status_display().lower()})"

    @property
    def staging_table(self) -> str:
        return f"customers_import_{int(self.pk)}_staging"

    @property
    def work_table(self) -> str:
        return f"customers_import_{int(self.pk)}_rows"

    @property
    def is_running(self) -> bool:
        return self.status in self.RUNNING

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def progress(self) -> dict:
        """Phase, rows done of the total, percent and an estimate of the seconds left."""
        now = tz.now()
        done = self.applied_through if self.status == self.Status.APPLYING else (
            self.rows_total if self.status == self.Status.DONE else 0)
        percent = None
        seconds_left = None
        if self.status == self.Status.APPLYING and self.rows_total:
            percent = min(100, round(100 * done / self.rows_total))
            if done and self.applying_at:
                elapsed = (now - self.applying_at).total_seconds()
                seconds_left = elapsed / done * (self.rows_total - done)
        elapsed = int((now - self.started_at).total_seconds()) if self.started_at else 0
        return {"phase": self.status, "phase_label": self.get_status_display(), "rows_done": done,
                "rows_total": self.rows_total, "percent": percent, "seconds_left": seconds_left,
                "elapsed_seconds": elapsed}


class ImportIssue(models.Model):
    """A row of an import's report: rejected (not applied, with the reason) or applied with a
    warning (a cell kept as it was, with the reason)."""

    class Kind(models.TextChoices):
        REJECTED = "rejected", "Rejected"
        WARNING = "warning", "Warning"

    customer_import = models.ForeignKey(CustomerImport, on_delete=models.CASCADE, related_name="issues")
    line = models.BigIntegerField(help_text="Line in the file; the header is line 1")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.TextField()
    values = models.JSONField(default=list, help_text="The row's original values")

    class Meta:
        ordering = ["customer_import", "line"]
        constraints = [
            models.UniqueConstraint(fields=["customer_import", "line", "kind"], name="import_issue_unique"),
        ]

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"
