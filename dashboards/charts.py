"""Plotly figures for the dashboards, built with the plotly package.

Pages embed the figure JSON; live updates send the same JSON and the browser applies it
with ``Plotly.react`` on the existing chart element (htmx never swaps a chart).
"""

from __future__ import annotations

import json

import plotly.graph_objects as go

from campaigns.models import DeliveryStatus
from customers.models import ChannelKind

from .queries import SERIES

FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#4a5566"}
OPENED, CLICKED, CONVERTED, SENT = (
    DeliveryStatus.OPENED, DeliveryStatus.CLICKED, DeliveryStatus.CONVERTED, DeliveryStatus.SENT
)
METRIC_COLORS = {OPENED: "#4338ca", CLICKED: "#0e9f6e", CONVERTED: "#d97706", SENT: "#94a3b8"}
CHANNEL_DASH = {"email": "solid", "sms": "dot", "whatsapp": "dash", "push": "dashdot", "voice": "longdash"}
METRIC_LABELS = {OPENED: "Opens", CLICKED: "Clicks", CONVERTED: "Conversions", SENT: "Sent"}


def _layout(height: int, **extra) -> dict:
    layout = dict(
        template="none", height=height, margin={"l": 48, "r": 16, "t": 36, "b": 36},
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=FONT,
        xaxis={"showgrid": False, "linecolor": "#cfd4dc", "ticks": "outside", "tickcolor": "#cfd4dc",
               "tickformat": "%H:%M"},
        yaxis={"gridcolor": "#eef0f3", "tickformat": ",", "zeroline": False,
               "rangemode": "nonnegative"},
        hoverlabel={"bgcolor": "#141a2a", "bordercolor": "#141a2a", "font": {"color": "#fff"}},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        uirevision="keep",  # live updates keep the user's zoom and hidden traces
    )
    layout.update(extra)
    return layout


def figure_dict(figure: go.Figure) -> dict:
    return json.loads(figure.to_json())


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
        x=xs, y=ys, marker={"color": "#4338ca"}, hovertemplate="%{y:,} events at %{x|%H:%M}<extra></extra>",
    ))
    figure.update_layout(**_layout(200, showlegend=False, bargap=0.15, margin={"l": 48, "r": 16, "t": 8, "b": 36}))
    _whole_numbers(figure, max(ys, default=0))
    return figure_dict(figure)


def as_script_json(figure: dict) -> str:
    """Figure JSON safe inside <script type="application/json">."""
    return json.dumps(figure).replace("<", "\\u003c")
