"""The house style of every plotly chart, and figure JSON that pages can embed.

The colours are those of ``static/css/app.css`` (``--primary``, ``--border-strong``,
``--sidebar``), so a chart looks like the page around it.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go

FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#4a5566"}
PRIMARY = "#4338ca"
AXIS_LINE = "#cfd4dc"
GRID_LINE = "#eef0f3"
TOOLTIP = "#141a2a"
TRANSPARENT = "rgba(0,0,0,0)"


def plain_layout(*, height: int, margin: dict, xaxis: dict | None = None, yaxis: dict | None = None, **extra) -> dict:
    """A figure layout in the house style, as plain figure JSON for plotly.js.

    For figures built as plain data (see ``figure``), which is cheap enough to do on every
    live push. ``xaxis`` and ``yaxis`` add to (or override) the styled axes; ``extra`` adds
    any other layout property (legend, showlegend, bargap, …).
    """
    return dict(
        height=height, margin=margin,
        paper_bgcolor=TRANSPARENT, plot_bgcolor=TRANSPARENT, font=FONT,
        xaxis={"showgrid": False, "linecolor": AXIS_LINE, "ticks": "outside", "tickcolor": AXIS_LINE, **(xaxis or {})},
        yaxis={"gridcolor": GRID_LINE, "tickformat": ",", "zeroline": False, **(yaxis or {})},
        hoverlabel={"bgcolor": TOOLTIP, "bordercolor": TOOLTIP, "font": {"color": "#fff"}},
        **extra,
    )


def layout(*, height: int, margin: dict, xaxis: dict | None = None, yaxis: dict | None = None, **extra) -> dict:
    """The same layout for ``Figure.update_layout(**layout(...))`` on a plotly Figure.

    plotly.py applies a default template of its own unless told "none"; plotly.js has none,
    so a plain figure (``plain_layout``) looks the same without one.
    """
    return {"template": "none", **plain_layout(height=height, margin=margin, xaxis=xaxis, yaxis=yaxis, **extra)}


def figure(data: list[dict], layout: dict) -> dict:
    """Figure JSON built from plain data: traces as dicts (``{"type": "scatter", …}``, dates
    as ISO strings) and a ``plain_layout``. No plotly objects, no validation: a test checks
    each builder's output against plotly's schema instead."""
    return {"data": data, "layout": layout}


def figure_dict(figure: go.Figure) -> dict:
    """The figure as plain JSON data (dates as ISO strings), ready for ``json.dumps``."""
    return json.loads(figure.to_json())


def as_script_json(figure: go.Figure | dict) -> str:
    """Figure JSON safe inside ``<script type="application/json">``.

    A Figure is written as plotly writes it, a figure dict (see ``figure_dict``) as
    ``json.dumps`` does.
    """
    text = figure.to_json() if isinstance(figure, go.Figure) else json.dumps(figure)
    return text.replace("<", "\\u003c")
