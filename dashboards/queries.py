"""What the dashboards show, read from the counters: a handful of rows per page, never a
count(*) over deliveries or events."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import BigIntegerField, Func, Sum
from django.utils import timezone

from campaigns.models import Campaign, Counter, DeliveryStatus
from campaigns.queries import FUNNEL, campaign_results, staged_results
from customers.models import ChannelKind, Customer, IngestCounter
from segments.models import Segment, SegmentSize

SENT = DeliveryStatus.SENT
METRICS = (SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED)
SERIES = (DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED)
SERIES_MINUTES = 120


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class ChannelRow:
    channel: str
    label: str
    counts: dict

    def rate(self, metric: str) -> float | None:
        return rate(self.counts.get(metric, 0), self.counts.get(SENT, 0))


@dataclass
class Period:
    label: str
    totals: dict
    channels: list[ChannelRow]

    def rate(self, metric: str) -> float | None:
        return rate(self.totals.get(metric, 0), self.totals.get(SENT, 0))


def _periods(now: datetime) -> list[Period]:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = today - timedelta(days=6)
    rows = (
        Counter.objects.filter(grain=Counter.Grain.DAY, bucket__gte=week, metric__in=METRICS)
        .values("bucket", "channel", "metric").annotate(total=Sum("value"))
    )
    data = {"today": defaultdict(lambda: defaultdict(int)), "week": defaultdict(lambda: defaultdict(int))}
    for row in rows:
        data["week"][row["channel"]][row["metric"]] += row["total"]
        if row["bucket"] >= today:
            data["today"][row["channel"]][row["metric"]] += row["total"]
    periods = []
    for key, label in (("today", "Today"), ("week", "Last 7 days")):
        totals = defaultdict(int)
        for counts in data[key].values():
            for metric, value in counts.items():
                totals[metric] += value
        channels = [
            ChannelRow(channel, ChannelKind(channel).label, dict(data[key][channel]))
            for channel in ChannelKind.values if channel in data[key]
        ]
        periods.append(Period(label, dict(totals), channels))
    return periods


@dataclass
class CampaignProgress:
    campaign: Campaign
    planned: int
    done: int
    sent: int
    opened: int
    converted: int

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.planned) if self.planned else 0


def _active_campaigns() -> list[CampaignProgress]:
    campaigns = list(
        Campaign.objects.filter(status__in=[
            Campaign.Status.SCHEDULED, Campaign.Status.SENDING, Campaign.Status.TESTING, Campaign.Status.PAUSED,
        ]).order_by("-launched_at")[:6]
    )
    results = campaign_results([c.pk for c in campaigns])
    progress = []
    for campaign in campaigns:
        totals = results[campaign.pk].totals
        progress.append(CampaignProgress(
            campaign, totals.get(DeliveryStatus.PLANNED, 0), results[campaign.pk].done, totals.get(SENT, 0),
            totals.get(DeliveryStatus.OPENED, 0), totals.get(DeliveryStatus.CONVERTED, 0),
        ))
    return progress


@dataclass
class SegmentTrend:
    segment: Segment
    day_ago: int | None

    @property
    def change(self) -> int | None:
        return None if self.day_ago is None else self.segment.member_count - self.day_ago


def _largest_segments(now: datetime) -> list[SegmentTrend]:
    segments = list(Segment.objects.order_by("-member_count")[:5])
    day_ago = {}
    for sample in (
        SegmentSize.objects.filter(segment__in=segments, at__lte=now - timedelta(days=1))
        .order_by("segment_id", "-at").distinct("segment_id")
    ):
        day_ago[sample.segment_id] = sample.size
    return [SegmentTrend(segment, day_ago.get(segment.pk)) for segment in segments]


def ingest_series(now: datetime, minutes: int = 60) -> tuple[list[datetime], list[int]]:
    start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    counts = dict(
        IngestCounter.objects.filter(minute__gte=start).values("minute").annotate(total=Sum("events"))
        .values_list("minute", "total")
    )
    xs = [start + timedelta(minutes=i) for i in range(minutes)]
    return xs, [counts.get(x, 0) for x in xs]


@dataclass
class Overview:
    now: datetime
    customers: int
    periods: list[Period]
    campaigns: list[CampaignProgress]
    segments: list[SegmentTrend]
    ingest_x: list[datetime]
    ingest_y: list[int]

    @property
    def events_last_hour(self) -> int:
        return sum(self.ingest_y)

    @property
    def today(self) -> Period:
        return self.periods[0]


def overview(*, now: datetime | None = None) -> Overview:
    """The home page's figures: a constant number of small queries."""
    now = now or timezone.now()
    xs, ys = ingest_series(now)
    return Overview(
        now=now,
        # The planner's estimate: exact counts of a million rows are not worth a scan per view.
        customers=_customer_estimate(),
        periods=_periods(now),
        campaigns=_active_campaigns(),
        segments=_largest_segments(now),
        ingest_x=xs,
        ingest_y=ys,
    )


def _customer_estimate() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'customers_customer'")
        row = cursor.fetchone()
    estimate = row[0] if row else -1
    if estimate < 0 or estimate < 100_000:
        # Never analysed, or small enough to count exactly.
        return Customer.objects.count()
    return estimate


# --- Campaign dashboard ---------------------------------------------------------------------------


@dataclass
class FunnelRow:
    label: str
    counts: dict

    def rate(self, metric: str, base: str = SENT) -> float | None:
        return rate(self.counts.get(metric, 0), self.counts.get(base, 0))

    @property
    def failed(self) -> int:
        return self.counts.get(DeliveryStatus.FAILED, 0) + self.counts.get(DeliveryStatus.BOUNCED, 0)


@dataclass
class CampaignDashboard:
    campaign: Campaign
    now: datetime
    totals: dict
    channels: list[FunnelRow]
    variants: list[FunnelRow]
    suppressed: list[tuple[str, str, int]]
    series: dict = field(default_factory=dict)  # channel -> metric -> list of per-minute values
    series_x: list[datetime] = field(default_factory=list)
    staged: object = None
    finish_eta: datetime | None = None
    send_rate: float = 0.0
    done: int = 0

    @property
    def planned(self) -> int:
        return self.totals.get(DeliveryStatus.PLANNED, 0)

    @property
    def percent(self) -> int:
        return min(100, int(100 * self.done / self.planned)) if self.planned else 0


class EpochMinute(Func):
    """A timestamp as whole minutes since the epoch."""

    template = "(EXTRACT(EPOCH FROM %(expressions)s)::bigint / 60)"
    output_field = BigIntegerField()


def campaign_dashboard(campaign: Campaign, *, now: datetime | None = None) -> CampaignDashboard:
    """Funnels per channel and variant, suppressions, per-minute series and progress: three small queries."""
    from campaigns.models import SuppressionReason

    now = now or timezone.now()
    results = campaign_results([campaign.pk])[campaign.pk]
    variants = {v.pk: v for v in campaign.variants.all()}
    totals = dict(results.totals)
    channels = [FunnelRow(ChannelKind(ch).label, dict(results.by_channel.get(ch, {}))) for ch in campaign.channels]
    variant_rows = [
        FunnelRow(f"Variant {variants[pk].key}" + (f" · {variants[pk].name}" if variants[pk].name else ""), dict(counts))
        for pk, counts in sorted(results.by_variant.items(), key=lambda item: variants[item[0]].key if item[0] in variants else "")
        if pk in variants
    ]
    labels = dict(SuppressionReason.choices)
    suppressed = sorted(
        ((reason, labels.get(reason, reason.replace("_", " ")), count) for reason, count in results.suppressed.items()),
        key=lambda item: -item[2],
    )
    start = (now - timedelta(minutes=SERIES_MINUTES - 1)).replace(second=0, microsecond=0)
    if campaign.launched_at and campaign.launched_at > start:
        start = campaign.launched_at.replace(second=0, microsecond=0)
    minutes = max(1, int((now - start).total_seconds() // 60) + 1)
    xs = [start + timedelta(minutes=i) for i in range(minutes)]
    first = int(start.timestamp()) // 60
    series = {ch: {m: [0] * minutes for m in SERIES + (SENT,)} for ch in campaign.channels}
    # Summed over the shards in SQL, and minutes as numbers: this runs on every live push, and
    # up to eight shards' rows of parsed timestamps cost more than everything else it does.
    for minute, channel, metric, value in (
        Counter.objects.filter(
            grain=Counter.Grain.MINUTE, campaign_id=campaign.pk, journey_id=0, bucket__gte=start,
            metric__in=SERIES + (SENT,),
        )
        .values_list(EpochMinute("bucket"), "channel", "metric")
        .annotate(total=Sum("value"))
    ):
        if channel in series and 0 <= minute - first < minutes:
            series[channel][metric][minute - first] += value
    # Sending rate over the last five minutes, for the finish estimate.
    recent = sum(sum(values[SENT][-5:]) for values in series.values())
    send_rate = recent / min(5, minutes)
    remaining = max(0, totals.get(DeliveryStatus.PLANNED, 0) - results.done)
    eta = now + timedelta(minutes=remaining / send_rate) if send_rate and remaining else None
    staged = staged_results(campaign) if campaign.is_staged else None
    return CampaignDashboard(
        campaign=campaign, now=now, totals=totals, channels=channels, variants=variant_rows, suppressed=suppressed,
        series=series, series_x=xs, staged=staged, finish_eta=eta, send_rate=send_rate, done=results.done,
    )


FUNNEL_STEPS = FUNNEL
