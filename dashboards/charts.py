"""Plotly figures for the dashboards, built with the plotly package.

Pages embed the figure JSON (``core.charts.as_script_json``); live updates send the same
JSON and the browser applies it with ``Plotly.react`` on the existing chart element (htmx
never swaps a chart). The look comes from ``core.charts``.
"""

from __future__ import annotations

import plotly.graph_objects as go

from campaigns.models import DeliveryStatus
from core.charts import PRIMARY, figure_dict, layout
from customers.models import ChannelKind

from .queries import SERIES

OPENED, CLICKED, CONVERTED, SENT = (
    DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED, DeliveryStatus.SENT
)
METRIC_COLORS = {OPENED: PRIMARY, CLICKED: "#0e9f6e", CONVERTED: "#d97706", SENT: "#94a3b8"}
CHANNEL_DASH = {"email": "solid", "sms": "dot", "whatsapp": "dash", "push": "dashdot", "voice": "longdash"}
METRIC_LABELS = {OPENED: "Opens", CLICKED: "Clicks", CONVERTED: "Conversions", SENT: "Sent"}


def _layout(height: int, *, margin: dict | None = None, **extra) -> dict:
    """The dashboards' time charts: minutes along the bottom, a legend on top."""
    return layout(
        height=height, margin=margin or {"l": 48, "r": 16, "t": 36, "b": 36},
        xaxis={"tickformat": "%H:%M"}, yaxis={"rangemode": "nonnegative"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        uirevision="keep",  # live updates keep the user's zoom and hidden traces
        **extra,
    )


def _whole_numbers(figure: go.Figure, peak: int) -> None:
    # Counts are whole: small ones get a tick per unit instead of 0.5 steps.
    if peak < 8:
        figure.update_yaxes(dtick=1, range=[0, max(peak, 1) + 0.5])


def campaign_series(dashboard) -> dict:
    """Opens, clicks and conversions per minute, one line per channel and metric."""
    figure = go.Figure()
    peak = 0
    # Lines need two points; the first minutes of a campaign show markers too.
    mode = "lines+markers" if len(dashboard.series_x) <= 30 else "lines"
    for channel, metrics in dashboard.series.items():
        for metric in SERIES:
            values = metrics[metric]
            if channel in ("sms", "voice") and metric == OPENED and not any(values):
                continue  # SMS has no opens; a flat zero line would only mislead
            peak = max([peak, *values])
            figure.add_trace(go.Scatter(
                x=dashboard.series_x, y=values, mode=mode, marker={"size": 5},
                name=f"{METRIC_LABELS[metric]} · {ChannelKind(channel).label}",
                line={"color": METRIC_COLORS[metric], "dash": CHANNEL_DASH.get(channel, "solid"), "width": 2},
                hovertemplate="%{y:,} at %{x|%H:%M}<extra>%{fullData.name}</extra>",
            ))
    figure.update_layout(**_layout(300))
    _whole_numbers(figure, peak)
    return figure_dict(figure)


def ingest_series(xs, ys) -> dict:
    figure = go.Figure(go.Bar(
        x=xs, y=ys, marker={"color": PRIMARY}, hovertemplate="%{y:,} events at %{x|%H:%M}<extra></extra>",
    ))
    figure.update_layout(**_layout(200, showlegend=False, bargap=0.15, margin={"l": 48, "r": 16, "t": 8, "b": 36}))
    _whole_numbers(figure, max(ys, default=0))
    return figure_dict(figure)

