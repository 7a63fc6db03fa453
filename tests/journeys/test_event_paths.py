"""Journeys hear events the way they happen: an email opened through the open pixel starts
a run, and an SMS reply ends a wait, before the request that carried it returns."""

import pytest
from django.test import Client

from journeys.models import Enrollment, Step
from journeys.services import journey_create, journey_enroll, journey_publish
from tests.campaigns.test_tracking import PIXEL_SRC, found
from tests.campaigns.test_twilio import INBOUND_PATH, inbound, post_signed
from tests.test_event_stream import readers, send_email, twilio  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def publish(name, graph):
    journey = journey_create(name=name, graph=graph, actor="test")
    journey_publish(journey=journey, actor="test")
    journey.refresh_from_db()
    return journey


def test_opening_an_email_starts_a_journey_before_the_pixel_returns(readers):  # noqa: F811
    journey = publish("Opened the newsletter", {
        "nodes": [
            {"id": "opened", "type": "trigger", "label": "Opened an email",
             "config": {"kind": "event", "event": "message.opened",
                        "where": [{"prop": "channel", "op": "eq", "value": "email"}]}},
            {"id": "wait", "type": "wait", "label": "Wait a day", "config": {"kind": "duration", "minutes": 1440}},
            {"id": "end", "type": "exit", "label": "End"},
        ],
        "edges": [{"from": "opened", "port": "out", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"}],
        "settings": {"reentry": {"mode": "once"}},
    })
    html = send_email(readers, to_segment=readers["segment"])
    ada = readers["people"]["ada"]
    assert not Enrollment.objects.filter(journey=journey).exists()

    response = Client().get(found(PIXEL_SRC, html))

    assert response.status_code == 200
    run = Enrollment.objects.get(journey=journey)
    assert (run.customer_id, run.node, run.status) == (ada.pk, "wait", "waiting")
    assert run.context["entry"]["channel"] == "email"


def test_a_stop_reply_ends_a_wait_for_it_and_the_unsubscribe_exit_rule(readers, twilio):  # noqa: F811
    ada, bob = readers["people"]["ada"], readers["people"]["bob"]
    ada.phone, bob.phone = "+14155550111", "+14155550112"
    ada.save(), bob.save()
    waits_for_reply = publish("Waits for a reply", {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "API", "config": {"kind": "api"}},
            {"id": "reply", "type": "wait", "label": "Wait for a reply",
             "config": {"kind": "event", "event": "customer.channel_status", "timeout_minutes": 60}},
            {"id": "replied", "type": "exit", "label": "Replied"},
            {"id": "silent", "type": "exit", "label": "Silent"},
        ],
        "edges": [{"from": "start", "port": "out", "to": "reply"},
                  {"from": "reply", "port": "event", "to": "replied"},
                  {"from": "reply", "port": "timeout", "to": "silent"}],
        "settings": {"reentry": {"mode": "once"}},
    })
    newsletter = publish("Newsletter nurture", {
        "nodes": [
            {"id": "start", "type": "trigger", "label": "API", "config": {"kind": "api"}},
            {"id": "wait", "type": "wait", "label": "Wait a week", "config": {"kind": "duration", "minutes": 10080}},
            {"id": "end", "type": "exit", "label": "End"},
        ],
        "edges": [{"from": "start", "port": "out", "to": "wait"}, {"from": "wait", "port": "out", "to": "end"}],
        "settings": {"reentry": {"mode": "once"}, "exits": [{"unsubscribed": "newsletter"}]},
    })
    runs = {(j.pk, c.pk): journey_enroll(journey=j, customer=c, context={}, actor="test")
            for j in (waits_for_reply, newsletter) for c in (ada, bob)}

    response = post_signed(Client(), twilio, INBOUND_PATH, inbound(ada.phone, "STOP"))

    assert response.status_code == 200
    status = {key: Enrollment.objects.get(pk=run.pk) for key, run in runs.items()}
    assert (status[(waits_for_reply.pk, ada.pk)].status, status[(waits_for_reply.pk, ada.pk)].node) == (
        "completed", "replied")
    assert Step.objects.get(enrollment=runs[(waits_for_reply.pk, ada.pk)], node="reply").port == "event"
    # Ada still gets the newsletter by email: she only stopped SMS.
    assert status[(newsletter.pk, ada.pk)].status == "waiting"
    assert status[(waits_for_reply.pk, bob.pk)].status == "waiting"
    post_signed(Client(), twilio, INBOUND_PATH, inbound(ada.phone, "START"))
