"""The live updates: what one render reads, and how few queries it takes."""

import pytest

from campaigns import dispatch
from campaigns.services.compose import VariantInput
from campaigns.services.lifecycle import campaign_launch
from dashboards import live
from tests.campaigns.conftest import make_campaign
from tests.conftest import WAIT_SECONDS

CONTENT = {"subject": "Hi", "html": "<p>Hi</p>", "text": ""}


def launch(campaign):
    campaign_launch(campaign=campaign, actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    return campaign


def test_a_campaign_update_takes_the_same_few_queries_whatever_the_campaign(audience, django_assert_num_queries):
    plain = launch(make_campaign(audience))
    # A/B test: test results per variant as well, from the same variants.
    staged = launch(make_campaign(audience, name="Tested", channels=("email",), test_percent=50, variants=[
        VariantInput(key="A", content={"email": CONTENT}), VariantInput(key="B", content={"email": CONTENT}),
    ]))
    # The campaign, its variants, its totals, its minutes.
    with django_assert_num_queries(4):
        update = live.campaign_update(plain.pk)
    assert 'data-stat="opened">0 · 0<' in update.fragments["campaign-stat-opened"]
    # …and the test phase's totals.
    with django_assert_num_queries(5):
        update = live.campaign_update(staged.pk)
    assert "Variant B" in update.fragments["campaign-side"]


def test_a_campaign_that_is_gone_has_no_update(db, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert live.campaign_update(987654) is None


def test_the_overview_is_read_once_for_both_versions(audience, django_assert_num_queries):
    launch(make_campaign(audience))
    with django_assert_num_queries(8):
        updates = live.overview_update()
    for_support, for_marketing = updates[False], updates[True]
    # Only the lists differ: they link to marketing pages for marketers alone.
    assert [k for k in for_support.fragments if for_support.fragments[k] != for_marketing.fragments[k]] == [
        "overview-lists"
    ]
    assert for_support.figures is for_marketing.figures


@pytest.mark.parametrize("since_nothing", [True, False])
def test_frames_are_worked_out_once_for_every_socket_that_last_sent_the_same_update(audience, since_nothing):
    campaign = launch(make_campaign(audience))
    before, after = live.campaign_update(campaign.pk), live.campaign_update(campaign.pk)
    since = None if since_nothing else before
    frames = after.frames(since=since)
    assert after.frames(since=since) is frames
    if since_nothing:
        assert len(frames) == 2 and frames[1].startswith('{"charts":')
    else:
        assert frames == []  # nothing changed between the two renders
    assert after.frames(since=after) == []
