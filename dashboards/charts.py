"""Plotly figures for the dashboards, built as plain data.

Pages embed the figure JSON (``core.charts.as_script_json``); live updates send the same
JSON, or only the values that changed since the socket's last figure (``changed_points``),
and the browser applies it on the existing chart element (htmx never swaps a chart). The
look comes from ``core.charts``.

No plotly objects here: building a ``go.Figure`` (validating every property) cost about
15 ms per campaign dashboard, and live dashboards build one per push; these dicts are what
plotly would have written. tests/dashboards/test_charts.py holds them to plotly's schema.
"""

from __future__ import annotations

from campaigns.models import DeliveryStatus
from core.charts import PRIMARY, figure, plain_layout
from customers.models import ChannelKind

from .queries import SERIES

OPENED, CLICKED, CONVERTED, SENT = (
    DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED, DeliveryStatus.SENT
)
METRIC_COLORS = {OPENED: PRIMARY, CLICKED: "#0e9f6e", CONVERTED: "#d97706", SENT: "#94a3b8"}
CHANNEL_DASH = {"email": "solid", "sms": "dot", "whatsapp": "dash", "push": "dashdot", "voice": "longdash"}
METRIC_LABELS = {OPENED: "Opens", CLICKED: "Clicks", CONVERTED: "Conversions", SENT: "Sent"}


def _layout(height: int, peak: int, *, margin: dict | None = None, **extra) -> dict:
    """The dashboards' time charts: minutes along the bottom, a legend on top."""
    yaxis = {"rangemode": "nonnegative"}
    if peak < 8:
        # Counts are whole: small ones get a tick per unit instead of 0.5 steps.
        yaxis.update(dtick=1, range=[0, max(peak, 1) + 0.5])
    return plain_layout(
        height=height, margin=margin or {"l": 48, "r": 16, "t": 36, "b": 36},
        xaxis={"tickformat": "%H:%M"}, yaxis=yaxis,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        uirevision="keep",  # live updates keep the user's zoom and hidden traces
        **extra,
    )


def _minutes(xs) -> list[str]:
    return [x.isoformat() for x in xs]


def campaign_series(dashboard) -> dict:
    """Opens, clicks and conversions per minute, one line per channel and metric."""
    xs = _minutes(dashboard.series_x)
    traces = []
    peak = 0
    # Lines need two points; the first minutes of a campaign show markers too.
    mode = "lines+markers" if len(xs) <= 30 else "lines"
    for channel, metrics in dashboard.series.items():
        for metric in SERIES:
            values = metrics[metric]
            if channel in ("sms", "voice") and metric == OPENED and not any(values):
                continue  # SMS has no opens; a flat zero line would only mislead
            peak = max(peak, max(values, default=0))
            traces.append({
                "type": "scatter", "x": xs, "y": values, "mode": mode, "marker": {"size": 5},
                "name": f"{METRIC_LABELS[metric]} · {ChannelKind(channel).label}",
                "line": {"color": METRIC_COLORS[metric], "dash": CHANNEL_DASH.get(channel, "solid"), "width": 2},
                "hovertemplate": "%{y:,} at %{x|%H:%M}<extra>%{fullData.name}</extra>",
            })
    return figure(traces, _layout(300, peak))


def ingest_series(xs, ys) -> dict:
    trace = {
        "type": "bar", "x": _minutes(xs), "y": ys, "marker": {"color": PRIMARY},
        "hovertemplate": "%{y:,} events at %{x|%H:%M}<extra></extra>",
    }
    layout = _layout(
        200, max(ys, default=0), showlegend=False, bargap=0.15, margin={"l": 48, "r": 16, "t": 8, "b": 36},
    )
    return figure([trace], layout)


def changed_points(before: dict, after: dict) -> list[list] | None:
    """The y values that differ from figure ``before`` to ``after``, as ``[trace, point, value]``.

    None when anything else differs (the layout, the traces, the minutes along the bottom:
    a new minute every minute), so the whole figure must go; ``[]`` when nothing changed.
    The browser applies the points to the figure it drew last (``static/js/dashboard.js``).
    """
    if before["layout"] != after["layout"] or len(before["data"]) != len(after["data"]):
        return None
    points = []
    for index, (old, new) in enumerate(zip(before["data"], after["data"])):
        old_y, new_y = old["y"], new["y"]
        if len(old_y) != len(new_y) or {**old, "y": None} != {**new, "y": None}:
            return None
        points.extend([index, point, value] for point, (was, value) in enumerate(zip(old_y, new_y)) if was != value)
    return points
