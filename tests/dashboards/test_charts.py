"""The dashboards' figures: built as plain data, held to plotly's schema and the house style."""

import copy
import json
from datetime import timedelta

import plotly.graph_objects as go
import pytest
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from campaigns.providers import DeliveryEvent
from core.charts import FONT, PRIMARY
from dashboards import charts, queries
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS


def as_plotly_writes_it(figure: dict) -> dict:
    """``figure`` after plotly has validated every property (an unknown or invalid one raises)
    and written it out again."""
    written = json.loads(go.Figure(figure).to_json())
    # plotly.py's own default template: pages draw with plotly.js, which has none.
    written["layout"].pop("template")
    return written


@pytest.fixture
def dashboard(audience):
    campaign = make_campaign(audience, channels=("email", "sms"))
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    email = Delivery.objects.filter(campaign=campaign, status="sent", channel="email").first()
    delivery_events_apply(events=[DeliveryEvent("clicked", timezone.now(), delivery_id=email.pk)])
    campaign.refresh_from_db()
    return queries.campaign_dashboard(campaign)


def test_the_campaign_chart_is_a_plotly_figure_in_the_house_style(dashboard):
    figure = charts.campaign_series(dashboard)
    assert as_plotly_writes_it(figure) == json.loads(json.dumps(figure))
    # SMS has no opens, so no flat line for them.
    assert [trace["name"] for trace in figure["data"]] == [
        "Opens · Email", "Clicks · Email", "Conversions · Email", "Clicks · SMS", "Conversions · SMS",
    ]
    opens = figure["data"][0]
    assert opens["line"]["color"] == PRIMARY and opens["y"][-1] == 1 and opens["mode"] == "lines+markers"
    layout = figure["layout"]
    assert layout["font"] == FONT and layout["uirevision"] == "keep"
    # Small counts get a tick per unit.
    assert layout["yaxis"]["dtick"] == 1 and layout["yaxis"]["range"] == [0, 1.5]


def test_a_long_busy_campaign_is_drawn_in_lines_with_plotlys_own_ticks(dashboard):
    minutes = 45
    dashboard.series_x = [dashboard.now - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    dashboard.series = {
        channel: {metric: [i % 13 for i in range(minutes)] for metric in metrics}
        for channel, metrics in dashboard.series.items()
    }
    figure = charts.campaign_series(dashboard)
    assert as_plotly_writes_it(figure) == json.loads(json.dumps(figure))
    assert {trace["mode"] for trace in figure["data"]} == {"lines"}
    assert "dtick" not in figure["layout"]["yaxis"] and "range" not in figure["layout"]["yaxis"]


def test_the_ingest_chart_is_a_plotly_figure_in_the_house_style(db):
    overview = queries.overview()
    figure = charts.ingest_series(overview.ingest_x, overview.ingest_y)
    assert as_plotly_writes_it(figure) == json.loads(json.dumps(figure))
    assert figure["data"][0]["type"] == "bar" and len(figure["data"][0]["x"]) == 60
    assert figure["layout"]["showlegend"] is False


def test_changed_points_are_the_values_that_moved_and_nothing_else(dashboard):
    def drawn():
        # A copy: the figure holds the dashboard's lists, which this test changes.
        return copy.deepcopy(charts.campaign_series(dashboard))

    before = drawn()
    assert charts.changed_points(before, drawn()) == []

    dashboard.series["email"]["converted"][-1] += 1
    moved = drawn()
    last = len(dashboard.series_x) - 1
    assert charts.changed_points(before, moved) == [[2, last, 1]]

    # The clicks line reaches 2: the y range of small counts grows, so the figure goes whole.
    dashboard.series["email"]["clicked"][-1] += 1
    assert charts.changed_points(moved, drawn()) is None

    # A new minute joins the chart: the figure goes whole too.
    before = drawn()
    dashboard.series_x.append(dashboard.series_x[-1] + timedelta(minutes=1))
    for metrics in dashboard.series.values():
        for values in metrics.values():
            values.append(0)
    assert charts.changed_points(before, drawn()) is None
