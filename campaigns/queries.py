"""Reads for campaigns: results from the counters, staged-send statistics, access checks."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db.models import Sum
from django.http import Http404

from customers.roles import can_use_marketing

from .models import Campaign, Counter, Delivery, DeliveryStatus, SandboxMessage

# The counters a campaign's results are read from: one metric per status a delivery moves
# into, suppressions also by reason (``suppressed.<reason>``).
FUNNEL = (DeliveryStatus.PLANNED, DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED,
          DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED)
OUTCOMES = (DeliveryStatus.BOUNCED, DeliveryStatus.FAILED, DeliveryStatus.COMPLAINED, DeliveryStatus.UNSUBSCRIBED,
            DeliveryStatus.CANCELLED)
SUPPRESSED = DeliveryStatus.SUPPRESSED
# The rate each test metric is judged by, and the base it is a share of.
TEST_RATES = {
    Campaign.TestMetric.OPEN: (DeliveryStatus.OPENED, DeliveryStatus.SENT),
    Campaign.TestMetric.CLICK: (DeliveryStatus.CLICKED, DeliveryStatus.SENT),
    Campaign.TestMetric.CONVERSION: (DeliveryStatus.CONVERTED, DeliveryStatus.SENT),
}


def campaign_for(user, pk: int) -> Campaign:
    """The campaign, if ``user`` may work with campaigns; 404 or 403 otherwise."""
    if not can_use_marketing(user):
        raise PermissionDenied
    campaign = Campaign.objects.select_related("topic").filter(pk=pk).first()
    if campaign is None:
        raise Http404("No such campaign")
    return campaign


def campaigns_list(user):
    if not can_use_marketing(user):
        raise PermissionDenied
    return Campaign.objects.select_related("topic").prefetch_related("segments").order_by("-created_at", "-id")


@dataclass
class Results:
    """Counter totals of one campaign: by channel, by variant, and suppressions by reason."""

    totals: dict = field(default_factory=lambda: defaultdict(int))
    by_channel: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    by_variant: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    by_channel_variant: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    suppressed: dict = field(default_factory=lambda: defaultdict(int))

    @property
    def done(self) -> int:
        """Deliveries that reached a final state of sending (sent, failed, suppressed at send, cancelled)."""
        done = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED)
        return sum(self.totals[status] for status in done)

    def rate(self, metric: str, base: str = DeliveryStatus.SENT, channel: str | None = None) -> float | None:
        counts = self.by_channel[channel] if channel else self.totals
        return counts[metric] / counts[base] if counts[base] else None


def campaign_results(campaign_ids: list[int]) -> dict[int, Results]:
    """Totals per campaign from the counters: one grouped query over a handful of rows each."""
    rows = (
        Counter.objects.filter(grain=Counter.Grain.TOTAL, campaign_id__in=campaign_ids, journey_id=0)
        .values("campaign_id", "channel", "variant_id", "metric")
        .annotate(total=Sum("value"))
    )
    results: dict[int, Results] = {pk: Results() for pk in campaign_ids}
    for row in rows:
        result = results[row["campaign_id"]]
        metric, value = row["metric"], row["total"]
        if metric.startswith(f"{SUPPRESSED}."):
            reason = metric.split(".", 1)[1]
            result.suppressed[reason] += value
            result.totals[SUPPRESSED] += value
            result.by_channel[row["channel"]][SUPPRESSED] += value
            result.by_variant[row["variant_id"]][SUPPRESSED] += value
            continue
        result.totals[metric] += value
        result.by_channel[row["channel"]][metric] += value
        result.by_variant[row["variant_id"]][metric] += value
        result.by_channel_variant[(row["channel"], row["variant_id"])][metric] += value
    return results


def campaign_summary(campaign: Campaign) -> dict:
    """Status and counts per channel and variant, as the API returns them."""
    results = campaign_results([campaign.pk])[campaign.pk]
    variants = {v.pk: v.key for v in campaign.variants.all()}

    def counts(source: dict) -> dict:
        data = {metric: source.get(metric, 0) for metric in FUNNEL + OUTCOMES}
        data[SUPPRESSED] = source.get(SUPPRESSED, 0)
        return data

    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "audience_size": campaign.audience_size,
        "launched_at": campaign.launched_at,
        "starts_at": campaign.starts_at,
        "completed_at": campaign.completed_at,
        "totals": counts(results.totals),
        "channels": {channel: counts(results.by_channel.get(channel, {})) for channel in campaign.channels},
        "variants": {variants.get(pk, "-"): counts(data) for pk, data in results.by_variant.items() if pk in variants},
        "suppressed_by_reason": dict(results.suppressed),
        "winner": {
            "variant": variants.get(campaign.winner_variant_id),
            "channel": campaign.winner_channel or None,
            "decided_at": campaign.winner_decided_at,
        } if campaign.winner_decided_at else None,
    }


# --- Staged sends ------------------------------------------------------------------------------


@dataclass
class Arm:
    label: str
    key: object
    successes: int
    trials: int

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None


@dataclass
class StagedResults:
    metric: str
    variants: list[Arm]
    channels: list[Arm]
    variant_winner: int | None
    channel_winner: str | None
    variant_p: float | None
    channel_p: float | None

    @property
    def variant_significant(self) -> bool:
        return self.variant_p is not None and self.variant_p < 0.05

    @property
    def channel_significant(self) -> bool:
        return self.channel_p is not None and self.channel_p < 0.05


def two_proportion_p(a: Arm, b: Arm) -> float | None:
    """Two-sided p-value of a two-proportion z-test; None without data on both sides."""
    if not a.trials or not b.trials:
        return None
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if se == 0:
        return 1.0
    z = abs(a.successes / a.trials - b.successes / b.trials) / se
    return math.erfc(z / math.sqrt(2))


def best_arm(arms: list[Arm]) -> tuple[Arm | None, float | None]:
    """The arm with the best rate and the p-value that it beats every other one (Bonferroni)."""
    scored = [arm for arm in arms if arm.trials]
    if len(scored) < 2:
        return (scored[0] if scored else None), None
    best = max(scored, key=lambda arm: (arm.rate, arm.trials))
    ps = [two_proportion_p(best, other) for other in scored if other is not best]
    p = max(ps) * len(ps)
    return best, min(p, 1.0)


def staged_results(campaign: Campaign) -> StagedResults:
    """Test-phase results by variant and by channel, on the campaign's test metric."""
    success, base = TEST_RATES[campaign.test_metric]
    rows = (
        Counter.objects.filter(grain=Counter.Grain.TOTAL, campaign_id=campaign.pk, metric__in=[success, base])
        .values("variant_id", "channel", "metric")
        .annotate(total=Sum("value"))
    )
    by_variant, by_channel = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for row in rows:
        slot = 0 if row["metric"] == success else 1
        by_variant[row["variant_id"]][slot] += row["total"]
        by_channel[row["channel"]][slot] += row["total"]
    variants = [
        Arm(f"Variant {v.key}", v.pk, *by_variant.get(v.pk, [0, 0])) for v in campaign.variants.all()
    ]
    channels = [Arm(ch, ch, *by_channel.get(ch, [0, 0])) for ch in campaign.channels] if campaign.test_channels else []
    variant_best, variant_p = best_arm(variants)
    channel_best, channel_p = best_arm(channels)
    return StagedResults(
        metric=campaign.test_metric,
        variants=variants,
        channels=channels,
        variant_winner=variant_best.key if variant_best else None,
        channel_winner=channel_best.key if channel_best else None,
        variant_p=variant_p,
        channel_p=channel_p,
    )


def deliveries_page(campaign: Campaign, *, after: int | None, limit: int = 100, status: str = ""):
    """One page of a campaign's deliveries, newest id first, continuing below ``after``."""
    rows = Delivery.objects.filter(campaign=campaign).select_related("customer", "variant").order_by("-id")
    if after:
        rows = rows.filter(id__lt=after)
    if status:
        rows = rows.filter(status=status)
    page = list(rows[: limit + 1])
    return page[:limit], (page[limit - 1].id if len(page) > limit else None)


def sandbox_messages_page(user, *, channel: str, campaign_id: int | None, before: int | None, limit: int):
    """The newest sandbox messages, optionally of one channel or campaign, below id ``before``."""
    if not can_use_marketing(user):
        raise PermissionDenied
    rows = SandboxMessage.objects.order_by("-id")
    if channel:
        rows = rows.filter(channel=channel)
    if campaign_id:
        rows = rows.filter(delivery_id__in=Delivery.objects.filter(campaign_id=campaign_id).values("id"))
    if before:
        rows = rows.filter(id__lt=before)
    page = list(rows[: limit + 1])
    return page[:limit], (page[limit - 1].id if len(page) > limit else None)


def sandbox_message_for(user, pk: int) -> SandboxMessage:
    if not can_use_marketing(user):
        raise PermissionDenied
    message = SandboxMessage.objects.filter(pk=pk).first()
    if message is None:
        raise Http404("No such message")
    return message
