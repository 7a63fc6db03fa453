from django.db import models
from django.utils import timezone as tz


class PasswordResetRequest(models.Model):
    """One request for a password-reset email, kept for one limit window (see services)."""

    requested_at = models.DateTimeField(default=tz.now, db_index=True)
    # An HMAC of the normalised address, not the address: the table only has to count.
    address_key = models.CharField(max_length=64)
    ip_address = models.CharField(max_length=45, blank=True, default="")
    # Whether the request was within the limits (an email was sent if the address has an account).
    allowed = models.BooleanField()

    class Meta:
        indexes = [
            models.Index(fields=["address_key", "requested_at"], name="accounts_reset_address"),
            models.Index(fields=["ip_address", "requested_at"], name="accounts_reset_client"),
        ]

    def __str__(self) -> str:
        return f"password reset {self.requested_at:%Y-%m-%d %H:%M} from {self.ip_address or '?'}"
