import hashlib
import secrets

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex, GinIndex, OpClass
from django.db import connection, models
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Lower, Reverse, Upper
from django.utils import timezone as tz

from .validation import EARLIEST, LATEST


def in_window(field: str, name: str, *, nullable: bool = False) -> models.CheckConstraint:
    """A CHECK that keeps ``field`` in the stored window (see ``customers.validation``): a row
    outside it could not be read back into Python, and would break every page showing it."""
    condition = Q(**{f"{field}__gte": EARLIEST, f"{field}__lt": LATEST})
    if nullable:
        condition |= Q(**{f"{field}__isnull": True})
    return models.CheckConstraint(
        condition=condition, name=name,
        violation_error_message=f"{field} must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d}.",
    )


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WHATSAPP = "whatsapp", "WhatsApp"
    VOICE = "voice", "Voice"
    PUSH = "push", "Push"


class CustomerQuerySet(models.QuerySet):
    def search(self, term: str):
        term = term.strip()
        if not term:
            return self
        if "\x00" in term:
            return self.none()  # no stored value holds a NUL, and PostgreSQL cannot compare with one
        # Each branch matches an index (emails are stored lower-case; names have upper()
        # pattern indexes), so PostgreSQL combines index scans instead of reading every row.
        query = (
            Q(email__startswith=term.lower())
            | Q(external_id=term)
            | Q(first_name__istartswith=term)
            | Q(last_name__istartswith=term)
        )
        parts = term.split()
        if len(parts) == 2:
            query |= Q(first_name__iexact=parts[0], last_name__istartswith=parts[1])
        # Numbers are stored as E.164 (+33612345678) and typed in many ways: 06 12 34 56 78,
        # +33 6 12 34 56 78, 0033 612…, (415) 555-0123, or just the last digits. Without the
        # leading zeros (a trunk or international prefix), the typed digits are a suffix of the
        # stored number, found through an index on the reversed number.
        tail = "".join(ch for ch in term if ch.isdigit()).lstrip("0")
        if len(tail) >= 4:
            query |= Q(phone_reversed__startswith=tail[::-1])
        if term.isdigit():
            query |= Q(pk=int(term))
        return self.alias(phone_reversed=Reverse("phone")).filter(query)

    def reachable_on(self, channel: str):
        """Customers reachable on ``channel``, as ``customers.reachability`` defines it."""
        from . import reachability  # it reads this module's models

        table = self.model._meta.db_table
        condition = reachability.customers_where(channel, customer=connection.ops.quote_name(table))
        return self.filter(RawSQL(condition, [], output_field=models.BooleanField()))


class Customer(models.Model):
    """One person, known across every channel."""

    external_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    email = models.EmailField(max_length=254, blank=True, default="")
    phone = models.CharField(max_length=20, blank=True, default="", help_text="E.164, e.g. +14155550123")
    first_name = models.CharField(max_length=150, blank=True, default="")
    last_name = models.CharField(max_length=150, blank=True, default="")
    locale = models.CharField(max_length=35, blank=True, default="")
    timezone = models.CharField(max_length=64, blank=True, default="", help_text="IANA name, e.g. Europe/Paris")
    lifecycle_stage = models.CharField(max_length=64, blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=tz.now, editable=False)
    updated_at = models.DateTimeField(default=tz.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # A visitor known only by the id a Segment or RudderStack SDK gave their browser or app.
    anonymous_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # Set when the visitor turned out to be a known customer: their history moved there, and
    # this row stays behind (hidden) so that later events with the same anonymous id follow.
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="merged_profiles"
    )
    merged_at = models.DateTimeField(null=True, blank=True)

    objects = CustomerQuerySet.as_manager()

    class Meta:
        constraints = [
            # Email identifies a customer as much as external_id does.
            models.UniqueConstraint(
                Lower("email"), condition=~Q(email=""), name="customer_email_unique"
            ),
            # Set from the events' occurred_at.
            in_window("last_seen_at", "customer_last_seen_in_window", nullable=True),
        ]
        indexes = [
            models.Index(fields=["phone"], name="customer_phone_idx", condition=~Q(phone="")),
            # Search by the last digits of a number, however it was typed (see search()).
            models.Index(OpClass(Reverse("phone"), name="text_pattern_ops"), name="customer_phone_suffix_idx"),
            models.Index(fields=["lifecycle_stage"], name="customer_stage_idx"),
            models.Index(fields=["email"], name="customer_email_prefix_idx", opclasses=["varchar_pattern_ops"]),
            models.Index(OpClass(Upper("last_name"), name="text_pattern_ops"), name="customer_last_name_idx"),
            models.Index(OpClass(Upper("first_name"), name="text_pattern_ops"), name="customer_first_name_idx"),
            GinIndex(fields=["attributes"], name="customer_attributes_gin", opclasses=["jsonb_path_ops"]),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    @property
    def is_anonymous(self) -> bool:
        """Known only by an SDK's anonymous id: no external id, no email."""
        return bool(self.anonymous_id) and not self.external_id and not self.email

    @property
    def short_anonymous_id(self) -> str:
        text = self.anonymous_id or ""
        return text if len(text) <= 8 else text[:8] + "…"

    @property
    def display_name(self) -> str:
        name = self.full_name or self.email or self.phone or self.external_id
        if not name and self.anonymous_id:
            return f"Anonymous visitor {self.short_anonymous_id}"
        return name or f"Customer {self.pk}"


class Device(models.Model):
    class Kind(models.TextChoices):
        FCM = "fcm", "Firebase Cloud Messaging"
        WEBPUSH = "webpush", "Web Push"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="devices")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    token = models.TextField(unique=True, help_text="FCM registration token or Web Push subscription JSON")
    platform = models.CharField(max_length=32, blank=True, default="", help_text="ios, android, web …")
    created_at = models.DateTimeField(default=tz.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} device of {self.customer_id}"


class Topic(models.Model):
    """A kind of message. Marketing topics need a subscription; transactional ones do not."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, default="")
    is_transactional = models.BooleanField(
        default=False, help_text="Alerts and receipts: sent without a subscription and never capped."
    )
    created_at = models.DateTimeField(default=tz.now)

    class Meta:
        ordering = ["is_transactional", "name"]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """Customer × topic × channel: the preference matrix."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="subscriptions")
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    subscribed = models.BooleanField()
    source = models.CharField(max_length=64, blank=True, default="")
    updated_at = models.DateTimeField(default=tz.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "topic", "channel"], name="subscription_unique"),
        ]
        indexes = [models.Index(fields=["topic", "channel", "subscribed"], name="subscription_audience_idx")]

    def __str__(self) -> str:
        state = "subscribed" if self.subscribed else "unsubscribed"
        return f"{self.customer_id} {state} to {self.topic_id} by {self.channel}"


class LegalBasis(models.TextChoices):
    CONSENT = "consent", "Consent"
    CONTRACT = "contract", "Contract"
    LEGITIMATE_INTEREST = "legitimate_interest", "Legitimate interest"
    LEGAL_OBLIGATION = "legal_obligation", "Legal obligation"


class Consent(models.Model):
    """Append-only ledger: each row is one grant or revocation, with its proof."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="consents")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    granted = models.BooleanField()
    occurred_at = models.DateTimeField(default=tz.now)
    source = models.CharField(max_length=64)
    legal_basis = models.CharField(max_length=32, choices=LegalBasis.choices, default=LegalBasis.CONSENT)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True, default="")
    wording = models.TextField(blank=True, default="", help_text="The text the customer was shown")
    form_url = models.URLField(max_length=2000, blank=True, default="")
    recorded_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [models.Index(fields=["customer", "channel", "-occurred_at"], name="consent_ledger_idx")]
        constraints = [in_window("occurred_at", "consent_occurred_in_window")]

    def __str__(self) -> str:
        return f"{'granted' if self.granted else 'revoked'} {self.channel} for {self.customer_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("The consent ledger is append-only; record a new entry instead.")
        super().save(*args, **kwargs)


class ConsentState(models.Model):
    """Current consent per customer × channel, derived from the ledger (the latest entry).

    Kept in step by ``customers.services.preferences.consent_record`` so that reachability checks read
    one row instead of scanning the ledger.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="consent_states")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    granted = models.BooleanField()
    updated_at = models.DateTimeField()
    consent = models.ForeignKey(Consent, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "channel"], name="consent_state_unique"),
            in_window("updated_at", "consent_state_updated_in_window"),
        ]


class ChannelStatus(models.Model):
    """Whether a customer's address on a channel can be used at all.

    Set by delivery feedback: a hard bounce makes the address unusable, a complaint or an
    inbound STOP unsubscribes the customer from all marketing on that channel. No row means
    the address is fine.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        BOUNCED = "bounced", "Hard bounced"
        COMPLAINED = "complained", "Complained"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed from the channel"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="channel_statuses")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    reason = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(default=tz.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "channel"], name="channel_status_unique")]
        indexes = [models.Index(fields=["channel", "status"], name="channel_status_idx")]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.channel}: {self.status}"


class EventCategory(models.TextChoices):
    """What a timeline entry is about, for filtering; derived from the event name."""

    EVENT = "event", "Events"
    MESSAGE = "message", "Messages"
    SEGMENT = "segment", "Segments"
    JOURNEY = "journey", "Journeys"
    PREFERENCE = "preference", "Preferences"
    PROFILE = "profile", "Profile"
    NOTE = "note", "Notes"


# Event name prefixes the platform writes itself; the API refuses them from outside.
PLATFORM_PREFIXES = {
    "message.": EventCategory.MESSAGE,
    "segment.": EventCategory.SEGMENT,
    "journey.": EventCategory.JOURNEY,
    "subscription.": EventCategory.PREFERENCE,
    "consent.": EventCategory.PREFERENCE,
    "customer.": EventCategory.PROFILE,
    "device.": EventCategory.PROFILE,
    "support.": EventCategory.NOTE,
}


def category_for(name: str) -> str:
    for prefix, category in PLATFORM_PREFIXES.items():
        if name.startswith(prefix):
            return category
    return EventCategory.EVENT


class Event(models.Model):
    """Everything that happens to or by a customer: the one timeline."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: event_timeline_idx starts with customer_id.
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="events", db_index=False)
    name = models.CharField(max_length=128)
    category = models.CharField(max_length=16, choices=EventCategory.choices, default=EventCategory.EVENT)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices, blank=True, default="")
    properties = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(default=tz.now)
    received_at = models.DateTimeField(default=tz.now)
    source = models.CharField(max_length=64, default="platform")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    actor = models.CharField(max_length=255, blank=True, default="", help_text="Who caused it, when a person did")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="event_idempotency_unique",
            ),
            in_window("occurred_at", "event_occurred_in_window"),
            in_window("received_at", "event_received_in_window"),
        ]
        indexes = [
            models.Index(fields=["customer", "-occurred_at", "-id"], name="event_timeline_idx"),
            models.Index(fields=["name", "occurred_at"], name="event_name_time_idx"),
            # Events arrive roughly in time order: a BRIN index answers "since when" cheaply.
            BrinIndex(fields=["occurred_at"], name="event_time_brin"),
        ]
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} @ {self.occurred_at:%Y-%m-%d %H:%M}"


class IngestCounter(models.Model):
    """Events stored per minute, for the overview's ingestion chart.

    Each ingest transaction adds to one of a few shards of the minute (by backend pid), so
    concurrent batches do not queue behind one counter row; readers sum the shards.
    """

    pk = models.CompositePrimaryKey("minute", "shard")
    minute = models.DateTimeField()
    shard = models.SmallIntegerField()
    events = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.events} events @ {self.minute:%H:%M}"


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A key for the JSON API, or a source's write key. Only its SHA-256 is stored; the key
    is shown once."""

    class Scope(models.TextChoices):
        # Kept apart: a write key ships inside web pages and apps, where anyone can read it,
        # so it must never open the JSON API; and an API key is never sent to browsers.
        API = "api", "JSON API (Bearer key for /api/v1/)"
        SOURCE = "source", "Source write key (Segment-compatible /v1/ only)"

    PREFIX = "sb_"
    SOURCE_PREFIX = "sbw_"

    name = models.CharField(max_length=120)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.API)
    prefix = models.CharField(max_length=16, editable=False, help_text="First characters, to recognise a key")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=tz.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def generate(cls, scope: str = "api") -> str:
        prefix = cls.SOURCE_PREFIX if scope == cls.Scope.SOURCE else cls.PREFIX
        return prefix + secrets.token_urlsafe(32)

    @property
    def source_name(self) -> str:
        """The ``source`` of the events sent with this write key: idempotency keys (Segment's
        messageId) are unique per source, so each key gets its own, stable across renames."""
        return f"source:{self.pk}"


class EmailRequest(models.Model):
    """One request, from a public form, for an email to an address (a password reset, a fresh
    preference-centre link); kept for one limit window so the form cannot flood an inbox
    (see customers/limits.py)."""

    purpose = models.CharField(max_length=40)
    requested_at = models.DateTimeField(default=tz.now, db_index=True)
    # An HMAC of the normalised address, not the address: the table only has to count.
    address_key = models.CharField(max_length=64)
    ip_address = models.CharField(max_length=45, blank=True, default="")
    # Whether the request was within the limits (an email was sent if the address is known).
    allowed = models.BooleanField()

    class Meta:
        indexes = [
            models.Index(fields=["purpose", "address_key", "requested_at"], name="customers_emailreq_address"),
            models.Index(fields=["purpose", "ip_address", "requested_at"], name="customers_emailreq_client"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} {self.requested_at:%Y-%m-%d %H:%M} from {self.ip_address or '?'}"


# Imports live in their own package; Django finds their models through this module.
from .imports.models import CustomerImport, ImportIssue  # noqa: E402, F401
