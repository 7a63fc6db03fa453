"""Template filters of the journey pages."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

from campaigns.models import SuppressionReason

register = template.Library()


@register.filter
def relative(moment: datetime | None, now: datetime | None = None) -> str:
    """A moment as a short distance from now: "in 3 h", "in 12 min", "in 2 d", "in 5 s", "now",
    "5 min ago"."""
    if moment is None:
        return ""
    seconds = (moment - (now or timezone.now())).total_seconds()
    ahead = seconds >= 0
    seconds = abs(seconds)
    if seconds < 1:
        return "now"
    if seconds < 60:
        amount = f"{round(seconds)} s"
    elif seconds < 3600:
        amount = f"{max(1, round(seconds / 60))} min"
    elif seconds < 86400:
        amount = f"{round(seconds / 3600)} h"
    else:
        amount = f"{round(seconds / 86400)} d"
    return f"in {amount}" if ahead else f"{amount} ago"


@register.filter
def percent(rate: float | None) -> str:
    """A rate (0..1) as a percentage with one decimal under 10 %: "4.2%", "37%"; "—" for none."""
    if rate is None:
        return "—"
    value = rate * 100
    return f"{value:.1f}%" if 0 < value < 10 else f"{value:.0f}%"


@register.filter
def suppression_label(reason: str) -> str:
    """A delivery's reason code as people read it ("no_address" → "No address for this channel");
    a code followed by details ("render_failed: …") keeps them."""
    code, _, rest = (reason or "").partition(":")
    label = dict(SuppressionReason.choices).get(code.strip())
    if label is None:
        return reason
    return f"{label}:{rest}" if rest else label
