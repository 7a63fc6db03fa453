from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from customers.models import ChannelKind, Customer, Topic
from customers.reachability import Reason
from segments.models import Segment


class Campaign(models.Model):
    """One message to an audience, on the channels each customer allows."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        TESTING = "testing", "Testing (waiting for a winner)"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    class Strategy(models.TextChoices):
        ALL = "all", "Every allowed channel"
        PREFERRED = "preferred", "One preferred channel per customer"

    class Schedule(models.TextChoices):
        NOW = "now", "As soon as it is launched"
        AT = "at", "At a time"
        LOCAL = "local", "At a time in each recipient's own timezone"

    class TestMetric(models.TextChoices):
        OPEN = "open", "Open rate"
        CLICK = "click", "Click rate"
        CONVERSION = "conversion", "Conversion rate"

    name = models.CharField(max_length=200)
    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="campaigns")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    segments = models.ManyToManyField(Segment, related_name="campaigns", blank=True)
    exclude_segments = models.ManyToManyField(Segment, related_name="excluded_from_campaigns", blank=True)
    # In the marketer's order: this is also the fallback order of the "preferred" strategy.
    channels = ArrayField(models.CharField(max_length=16, choices=ChannelKind.choices), default=list)
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.ALL)

    schedule = models.CharField(max_length=8, choices=Schedule.choices, default=Schedule.NOW)
    send_at = models.DateTimeField(null=True, blank=True, help_text="For 'at a time'")
    send_at_local = models.DateTimeField(
        null=True, blank=True,
        help_text="For 'recipient's timezone': the wall-clock date and time, read in each customer's timezone",
    )
    throttle_per_minute = models.PositiveIntegerField(null=True, blank=True)

    goal_event = models.CharField(max_length=128, blank=True, default="")
    goal_within_hours = models.PositiveIntegerField(default=72)

    # Staged send: a test phase to test_percent of the audience, then the winner to the rest.
    test_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    test_metric = models.CharField(max_length=16, choices=TestMetric.choices, default=TestMetric.CLICK)
    test_hours = models.PositiveIntegerField(null=True, blank=True, help_text="Pick the winner by itself after this")
    test_channels = models.BooleanField(
        default=False, help_text="Split customers without a channel preference across channels in the test phase"
    )
    winner_variant = models.ForeignKey("Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    winner_channel = models.CharField(max_length=16, choices=ChannelKind.choices, blank=True, default="")
    winner_decided_at = models.DateTimeField(null=True, blank=True)

    starts_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the audience snapshot is taken and sending starts"
    )
    audience_size = models.PositiveIntegerField(default=0, editable=False)
    launched_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_staged(self) -> bool:
        return bool(self.test_percent)

    @property
    def is_editable(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def is_active(self) -> bool:
        return self.status in {self.Status.SCHEDULED, self.Status.SENDING, self.Status.TESTING}


class Variant(models.Model):
    """One version of a campaign's content (A, B, …), sent to a share of the audience by weight."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    key = models.CharField(max_length=8, help_text="A, B, C …")
    name = models.CharField(max_length=120, blank=True, default="")
    weight = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["campaign", "key"]
        constraints = [models.UniqueConstraint(fields=["campaign", "key"], name="variant_key_unique")]

    def __str__(self) -> str:
        return f"Variant {self.key}" + (f" ({self.name})" if self.name else "")


class Content(models.Model):
    """What one variant says on one channel. ``body`` keys depend on the channel:

    email: subject, preheader, html, text · sms: body · whatsapp: template, variables ·
    voice: text · push: title, body, link
    """

    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="contents")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    body = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["variant", "channel"], name="content_unique")]

    def __str__(self) -> str:
        return f"{self.variant} on {self.channel}"


class DeliveryStatus(models.TextChoices):
    PLANNED = "planned", "Planned"
    HELD = "held", "Held for the winner"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"
    CONVERTED = "converted", "Converted"
    SUPPRESSED = "suppressed", "Suppressed"
    FAILED = "failed", "Failed"
    BOUNCED = "bounced", "Bounced"
    COMPLAINED = "complained", "Complained"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    CANCELLED = "cancelled", "Cancelled"


# The forward steps of a delivery's story, in order; the statuses on one step rank equal.
# A status on no step (suppressed, failed, bounced, complained, unsubscribed, cancelled)
# ends the story: nothing moves a delivery on from it.
DELIVERY_STEPS: tuple[tuple[DeliveryStatus, ...], ...] = (
    (DeliveryStatus.PLANNED, DeliveryStatus.HELD),
    (DeliveryStatus.SENDING,),
    (DeliveryStatus.SENT,),
    (DeliveryStatus.DELIVERED,),
    (DeliveryStatus.OPENED,),
    (DeliveryStatus.CLICKED,),
    (DeliveryStatus.CONVERTED,),
)


class SuppressionReason(models.TextChoices):
    # Reachability's reasons (customers.reachability), then the policy's own.
    NO_ADDRESS = Reason.NO_ADDRESS.value, Reason.NO_ADDRESS.label
    BOUNCED = Reason.BOUNCED.value, Reason.BOUNCED.label
    COMPLAINED = Reason.COMPLAINED.value, Reason.COMPLAINED.label
    UNSUBSCRIBED = Reason.UNSUBSCRIBED.value, Reason.UNSUBSCRIBED.label
    CONSENT_REVOKED = Reason.CONSENT_REVOKED.value, Reason.CONSENT_REVOKED.label
    NOT_SUBSCRIBED = "not_subscribed", "Not subscribed to the topic on this channel"
    FREQUENCY_CAP = "frequency_cap", "Frequency cap reached"
    NO_CONTENT = "no_content", "No content for this channel"
    EXCLUDED = "excluded", "In an exclusion segment"
    # At send time: the content could not be rendered for this customer (the error follows
    # the code in the delivery's reason, e.g. "render_failed: sms body: …").
    RENDER_FAILED = "render_failed", "Message could not be rendered"


class Delivery(models.Model):
    """The outbox: one message to one customer on one channel.

    Written before anything is sent; its status only moves forward. The unique key per
    (campaign, customer, channel) makes relaunching, retried tasks and crash recovery
    unable to create a second delivery.
    """

    id = models.BigAutoField(primary_key=True)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries")
    variant = models.ForeignKey(Variant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Journeys write their deliveries here too; journeys depend on campaigns, not the reverse.
    journey_id = models.BigIntegerField(null=True, blank=True)
    journey_step = models.CharField(max_length=64, blank=True, default="", db_default="")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    topic = models.ForeignKey(Topic, on_delete=models.PROTECT, related_name="+")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PLANNED, db_default=DeliveryStatus.PLANNED
    )
    reason = models.CharField(max_length=255, blank=True, default="", db_default="", help_text="Why suppressed or failed")
    # Content for sends that have no campaign variant (one-off API messages, journey steps).
    payload = models.JSONField(null=True, blank=True)
    test_group = models.BooleanField(default=False, db_default=False, help_text="Sent in the test phase of a staged send")
    routed_by = models.CharField(
        max_length=16, blank=True, default="", db_default="",
        help_text="How the channel was chosen: explicit, engagement, fallback, test, winner",
    )
    due_at = models.DateTimeField(default=timezone.now, db_default=Now(), help_text="Not sent before this moment")
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0)
    provider = models.CharField(max_length=32, blank=True, default="", db_default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="", db_default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    converted_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "customer", "channel"],
                condition=Q(campaign__isnull=False),
                name="delivery_campaign_unique",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"], condition=Q(idempotency_key__isnull=False), name="delivery_idempotency_unique"
            ),
        ]
        indexes = [
            # The dispatcher's queue: only rows still to be sent.
            models.Index(fields=["due_at"], name="delivery_queue_idx", condition=Q(status=DeliveryStatus.PLANNED)),
            models.Index(
                fields=["lease_until"], name="delivery_inflight_idx", condition=Q(status=DeliveryStatus.SENDING)
            ),
            models.Index(fields=["customer", "-created_at"], name="delivery_customer_idx"),
            # The frequency cap counts recent sends.
            models.Index(fields=["sent_at"], name="delivery_sent_idx", condition=Q(sent_at__isnull=False)),
            models.Index(fields=["provider", "provider_message_id"], name="delivery_provider_id_idx",
                         condition=~Q(provider_message_id="")),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Delivery {self.pk} ({self.channel}, {self.status})"


class Counter(models.Model):
    """Metric counters that dashboards read: a handful of rows, never a count(*).

    Three grains, all kept by the same upsert as deliveries change state:

    - ``total``: per campaign or journey × channel × variant × metric (funnels, API counts)
    - ``minute``: per campaign or journey × channel × metric and minute (time series)
    - ``day``: per channel × metric and day, across everything (the overview)

    ``campaign_id``, ``journey_id`` and ``variant_id`` are 0 when not applicable, so the
    unique key works for upserts without NULL semantics.
    """

    class Grain(models.TextChoices):
        TOTAL = "total", "Total"
        MINUTE = "minute", "Minute"
        DAY = "day", "Day"

    id = models.BigAutoField(primary_key=True)
    grain = models.CharField(max_length=8, choices=Grain.choices)
    bucket = models.DateTimeField(help_text="Start of the minute or day; the epoch for totals")
    campaign_id = models.BigIntegerField(default=0)
    journey_id = models.BigIntegerField(default=0)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    variant_id = models.BigIntegerField(default=0)
    metric = models.CharField(max_length=48, help_text="planned, sent, delivered, … or suppressed.<reason>")
    # Concurrent transactions add to different shards of the same figure (by backend pid),
    # so a thousand opens a second do not queue behind one row lock; readers sum them.
    shard = models.SmallIntegerField(default=0)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["grain", "campaign_id", "journey_id", "bucket", "channel", "variant_id", "metric", "shard"],
                name="counter_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.grain} {self.metric} {self.channel} @ {self.bucket:%Y-%m-%d %H:%M}: {self.value}"


class Link(models.Model):
    """A click destination, stored server-side so tracked links cannot redirect anywhere else."""

    url = models.URLField(max_length=2000)
    url_hash = models.CharField(max_length=64, unique=True)

    def __str__(self) -> str:
        return self.url


class TrackingReceipt(models.Model):
    """Dedupe for engagement: one row per (delivery, kind[, link]) or per provider event id."""

    key = models.CharField(max_length=255, primary_key=True)
    received_at = models.DateTimeField(default=timezone.now)


class EngagementHit(models.Model):
    """An open or a click the tracking endpoints accepted and answered, waiting to be applied.

    Written only by ``campaigns.engagement``: web processes append hits in batches and answer
    once the batch has committed; its drainer claims them (``FOR UPDATE SKIP LOCKED``) and
    applies them through the transitions path in the transaction that deletes them, so a
    process that dies between the two leaves its hits here for the next drain. No foreign
    key: the hot path pays for no check, and a hit for a delivery since deleted is dropped.
    """

    id = models.BigAutoField(primary_key=True)
    delivery_id = models.BigIntegerField()
    kind = models.CharField(max_length=16, choices=[(s.value, s.label) for s in (DeliveryStatus.OPENED, DeliveryStatus.CLICKED)])
    at = models.DateTimeField(db_default=Now())


class SandboxMessage(models.Model):
    """What the sandbox provider would have sent: viewable in the UI, and the record that
    lets a crashed send be settled without sending twice."""

    id = models.BigAutoField(primary_key=True)
    delivery_id = models.BigIntegerField(unique=True)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    to = models.CharField(max_length=2000)
    rendered = models.JSONField(default=dict)
    sent_at = models.DateTimeField(default=timezone.now)
    simulated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["sent_at"], name="sandbox_pending_idx", condition=Q(simulated_at__isnull=True))]
