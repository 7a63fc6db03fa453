from django.db import models
from django.utils import timezone as tz


class AuditEntry(models.Model):
    """Who changed what, from the UI, the API or the admin. Written only by ``core.audit``."""

    occurred_at = models.DateTimeField(default=tz.now, db_index=True)
    actor = models.CharField(max_length=255)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        # The table kept its name when the model moved here from the customers app.
        db_table = "customers_auditentry"
        verbose_name_plural = "audit entries"
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type} {self.object_id}"
