"""The dashboard pages: who may see them, what they show, and how few queries they take."""

import pytest
from django.utils import timezone

from campaigns import dispatch
from campaigns.services.delivery_events import delivery_events_apply
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Delivery
from campaigns.providers import DeliveryEvent
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS


@pytest.fixture
def launched(audience):
    campaign = make_campaign(audience, goal_event="order_completed")
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    sent = list(Delivery.objects.filter(campaign=campaign, status="sent", channel="email"))
    delivery_events_apply(events=[DeliveryEvent("opened", timezone.now(), delivery_id=d.pk) for d in sent[:2]])
    delivery_events_apply(events=[DeliveryEvent("clicked", timezone.now(), delivery_id=sent[0].pk)])
    return campaign


def test_campaign_dashboard_shows_funnels_per_channel_and_suppressions(client, marketer, launched):
    client.force_login(marketer)
    response = client.get(f"/dashboards/campaigns/{launched.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-stat="opened">2 · 1<' in html
    assert "Not subscribed to the topic on this channel" in html
    assert 'ws-connect="/ws/dashboards/campaigns/' in html
    assert 'id="series-chart"' in html


def test_overview_shows_todays_messages_by_channel(client, marketer, launched):
    client.force_login(marketer)
    html = client.get("/").content.decode()
    assert 'data-stat="sent-today">5<' in html
    assert launched.name in html


def test_dashboard_query_counts_do_not_grow_with_the_data(client, marketer, launched, django_assert_max_num_queries, audience):
    client.force_login(marketer)
    client.get("/")  # warm caches (content types, sessions)
    with django_assert_max_num_queries(16):
        assert client.get("/").status_code == 200
    with django_assert_max_num_queries(16):
        assert client.get(f"/dashboards/campaigns/{launched.pk}/").status_code == 200
    # Twice the deliveries and events: the same number of queries.
    second = make_campaign(audience, name="Second")
    campaign_launch(campaign=second, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as first:
        client.get(f"/dashboards/campaigns/{launched.pk}/")
    with CaptureQueriesContext(connection) as again:
        client.get(f"/dashboards/campaigns/{second.pk}/")
    assert len(first) == len(again)


def test_who_may_see_the_dashboards(client, support, outsider, launched):
    client.force_login(support)
    assert client.get("/").status_code == 200
    assert client.get(f"/dashboards/campaigns/{launched.pk}/").status_code == 403
    client.force_login(outsider)
    assert client.get("/").status_code == 403
