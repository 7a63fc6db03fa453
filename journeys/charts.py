"""Plotly figures for the journey pages, in the house style of ``core.charts``."""

from __future__ import annotations

import plotly.graph_objects as go

from core.charts import PRIMARY, figure_dict, layout

from .queries import NodePanel

# The ports a node leaves by, one colour each after "entered" (the primary colour).
PORT_COLORS = ["#0e9f6e", "#d97706", "#7c3aed", "#0e7490", "#be185d", "#475569", "#c2410c", "#15803d"]


def node_series(panel: NodePanel) -> dict:
    """Customers who entered the node and who left it by each port, per minute."""
    figure = go.Figure()
    figure.add_trace(go.Bar(
        x=panel.minutes, y=panel.entered, name="Entered", marker={"color": PRIMARY},
        hovertemplate="%{y:,} entered at %{x|%H:%M}<extra></extra>",
    ))
    for index, (port, values) in enumerate(panel.passed.items()):
        figure.add_trace(go.Scatter(
            x=panel.minutes, y=values, name=f"Left by {port}", mode="lines",
            line={"color": PORT_COLORS[index % len(PORT_COLORS)], "width": 2, "shape": "hv"},
            hovertemplate=f"%{{y:,}} left by {port} at %{{x|%H:%M}}<extra></extra>",
        ))
    peak = max([0, *panel.entered, *(v for values in panel.passed.values() for v in values)])
    figure.update_layout(**layout(
        height=220, margin={"l": 40, "r": 12, "t": 30, "b": 32},
        xaxis={"tickformat": "%H:%M"}, yaxis={"rangemode": "nonnegative"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}, bargap=0.1,
    ))
    if peak < 8:
        figure.update_yaxes(dtick=1, range=[0, max(peak, 1) + 0.5])
    return figure_dict(figure)
