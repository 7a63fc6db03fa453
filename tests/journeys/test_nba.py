"""Next best action: eligibility, validity, contact policy, ranking, holdout, the decision log,
idempotent retries, learning from outcomes; the catalog pages, "why this action", and the API."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEntry
from journeys import nba
from journeys.models import Action, Decision
from tests.factories import CustomerFactory, EventFactory
from tests.journeys.factories import (
    ActionFactory,
    EnrollmentFactory,
    JourneyFactory,
    JourneyVersionFactory,
    batch_for,
    nba_graph,
)

pytestmark = pytest.mark.django_db

EXPERTS = {"attr": "lifecycle_stage", "op": "eq", "value": "expert"}
FAILED_DELIVERY = {"event": "delivery_failed", "within_days": 7}


def version_with(keys: list[str], *, holdout: int = 0):
    journey = JourneyFactory(draft=nba_graph(keys, holdout=holdout))
    return JourneyVersionFactory(journey=journey)


def enroll(version, customers, *, seq: int = 1, test: bool = False):
    return [EnrollmentFactory(version=version, customer=customer, seq=seq, test=test) for customer in customers]


def decide(enrollments, *, now=None) -> dict[str, set[int]]:
    """The ports, as sets of customer ids (what a reader of a test cares about)."""
    ports = nba.decide(batch_for(enrollments, now=now))
    customer_of = {e.pk: e.customer_id for e in enrollments}
    return {port: {customer_of[pk] for pk in ids} for port, ids in ports.items()}


def decision_of(enrollment) -> Decision:
    return Decision.objects.get(enrollment=enrollment)


def candidate(decision: Decision, key: str) -> dict:
    return next(c for c in decision.candidates if c["action"] == key)


def best_first(decision: Decision) -> list[dict]:
    return nba.candidates_in_order(decision.candidates)


def offer_before(customer, action, *, days_ago: float, outcome=Decision.Outcome.PENDING, answered_days_ago=None):
    """An earlier decision that offered ``action`` to ``customer``."""
    now = timezone.now()
    return Decision.objects.create(
        customer=customer, action=action, node="earlier", decided_at=now - timedelta(days=days_ago),
        outcome=outcome, outcome_at=None if answered_days_ago is None else now - timedelta(days=answered_days_ago),
        idempotency_key=f"earlier:{customer.pk}:{action.pk}:{days_ago}",
    )


# --- Eligibility and validity -----------------------------------------------------------------


def test_each_customer_gets_the_best_action_their_rules_allow(db):
    coupon = ActionFactory(key="coupon", eligibility=EXPERTS, priority=3, value=10)
    callback = ActionFactory(key="callback", eligibility=FAILED_DELIVERY, priority=2, value=10)
    ActionFactory(key="tip", priority=1, value=1)
    expert = CustomerFactory(lifecycle_stage="expert")
    failed = CustomerFactory(lifecycle_stage="lead")
    EventFactory(customer=failed, name="delivery_failed", occurred_at=timezone.now() - timedelta(days=2))
    stale = CustomerFactory(lifecycle_stage="lead")
    EventFactory(customer=stale, name="delivery_failed", occurred_at=timezone.now() - timedelta(days=20))
    version = version_with(["coupon", "callback", "tip"])
    enrollments = enroll(version, [expert, failed, stale])

    ports = decide(enrollments)

    assert ports == {"coupon": {expert.pk}, "callback": {failed.pk}, "tip": {stale.pk}, "none": set()}
    lead_decision = decision_of(enrollments[2])
    assert lead_decision.action_id == Action.objects.get(key="tip").pk
    assert candidate(lead_decision, "coupon")["eligible"] is False
    assert candidate(lead_decision, "coupon")["reasons"] == ["not eligible: lifecycle_stage is 'expert'"]
    assert candidate(lead_decision, "callback")["reasons"] == [
        "not eligible: delivery_failed happened at least once in the last 7 days"
    ]
    assert decision_of(enrollments[0]).action == coupon
    assert decision_of(enrollments[1]).action == callback


def test_nobody_eligible_leaves_by_none(db):
    ActionFactory(key="coupon", eligibility=EXPERTS)
    lead = CustomerFactory(lifecycle_stage="lead")
    [enrollment] = enroll(version_with(["coupon"]), [lead])

    assert decide([enrollment])["none"] == {lead.pk}
    decision = decision_of(enrollment)
    assert decision.action is None and decision.holdout is False
    assert candidate(decision, "coupon")["rank"] is None


def test_validity_dates_and_inactive_actions_keep_an_action_out(db):
    now = timezone.now()
    ActionFactory(key="upcoming", priority=9, valid_from=now + timedelta(days=2))
    ActionFactory(key="expired", priority=9, valid_until=now - timedelta(hours=1))
    ActionFactory(key="retired", priority=9, active=False)
    ActionFactory(key="current", priority=1, valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=1))
    customer = CustomerFactory()
    [enrollment] = enroll(version_with(["upcoming", "expired", "retired", "current"]), [customer])

    assert decide([enrollment], now=now)["current"] == {customer.pk}
    decision = decision_of(enrollment)
    assert candidate(decision, "upcoming")["reasons"][0].startswith("not valid until ")
    assert candidate(decision, "expired")["reasons"][0].startswith("expired on ")
    assert candidate(decision, "retired")["reasons"] == ["inactive"]
    assert [c["action"] for c in best_first(decision)] == ["current", "upcoming", "expired", "retired"]


def test_an_action_removed_from_the_catalog_is_a_candidate_that_cannot_win(db):
    ActionFactory(key="coupon")
    customer = CustomerFactory()
    [enrollment] = enroll(version_with(["gone", "coupon"]), [customer])

    assert decide([enrollment])["coupon"] == {customer.pk}
    assert candidate(decision_of(enrollment), "gone") == {
        "action": "gone", "name": None, "eligible": False, "reasons": ["not in the catalog any more"], "score": None,
        "rank": None, "position": 1, "priority": None, "value": None, "rate": None, "offers_in_window": 0,
    }


# --- Contact policy -----------------------------------------------------------------------------


def test_at_most_max_offers_in_the_window(db):
    coupon = ActionFactory(key="coupon", priority=5, max_offers=2, window_days=30)
    ActionFactory(key="tip", priority=1)
    capped, old_offers = CustomerFactory(), CustomerFactory()
    offer_before(capped, coupon, days_ago=3)
    offer_before(capped, coupon, days_ago=20)
    offer_before(old_offers, coupon, days_ago=3)
    offer_before(old_offers, coupon, days_ago=45)  # outside the window
    enrollments = enroll(version_with(["coupon", "tip"]), [capped, old_offers])

    ports = decide(enrollments)

    assert ports["tip"] == {capped.pk} and ports["coupon"] == {old_offers.pk}
    reason = candidate(decision_of(enrollments[0]), "coupon")["reasons"]
    assert reason == ["contact policy: offered 2 times in 30 days (at most 2)"]
    assert candidate(decision_of(enrollments[1]), "coupon")["offers_in_window"] == 1


def test_a_cooldown_after_acceptance_and_after_rejection(db):
    coupon = ActionFactory(key="coupon", priority=5, cooldown_after_accept_days=30, cooldown_after_reject_days=7,
                           reject_event="coupon_dismissed")
    ActionFactory(key="tip", priority=1)
    accepted, rejected, rejected_long_ago = CustomerFactory(), CustomerFactory(), CustomerFactory()
    offer_before(accepted, coupon, days_ago=40, outcome=Decision.Outcome.ACCEPTED, answered_days_ago=10)
    offer_before(rejected, coupon, days_ago=40, outcome=Decision.Outcome.REJECTED, answered_days_ago=3)
    offer_before(rejected_long_ago, coupon, days_ago=40, outcome=Decision.Outcome.REJECTED, answered_days_ago=8)
    enrollments = enroll(version_with(["coupon", "tip"]), [accepted, rejected, rejected_long_ago])

    ports = decide(enrollments)

    assert ports["tip"] == {accepted.pk, rejected.pk}
    assert ports["coupon"] == {rejected_long_ago.pk}
    [accept_reason] = candidate(decision_of(enrollments[0]), "coupon")["reasons"]
    until = (timezone.now() + timedelta(days=20)).strftime("%Y-%m-%d")
    assert accept_reason.startswith(f"cooldown after acceptance until {until}") and accept_reason.endswith(" UTC")
    [reject_reason] = candidate(decision_of(enrollments[1]), "coupon")["reasons"]
    assert reject_reason.startswith("cooldown after rejection until ")


def test_test_runs_do_not_count_as_offers(db):
    coupon = ActionFactory(key="coupon", max_offers=1)
    customer = CustomerFactory()
    version = version_with(["coupon"])
    [trial] = enroll(version, [customer], test=True)
    assert decide([trial])["coupon"] == {customer.pk}
    coupon.refresh_from_db()
    assert coupon.offered == 0
    # The real run that follows is not capped by the trial.
    [real] = enroll(version, [customer])
    assert decide([real])["coupon"] == {customer.pk}
    coupon.refresh_from_db()
    assert coupon.offered == 1


# --- Ranking ------------------------------------------------------------------------------------


def test_ranking_by_priority_value_and_smoothed_acceptance_rate(db):
    # Scores: 2 × 10 × 1/2 = 10;  1 × 30 × (5+1)/(10+2) = 15;  3 × 10 × (0+1)/(8+2) = 3.
    ActionFactory(key="apology", priority=2, value=10)
    ActionFactory(key="voucher", priority=1, value=30, offered=10, accepted=5)
    ActionFactory(key="upgrade", priority=3, value=10, offered=8, accepted=0)
    customer = CustomerFactory()
    [enrollment] = enroll(version_with(["apology", "voucher", "upgrade"]), [customer])

    assert decide([enrollment])["voucher"] == {customer.pk}
    decision = decision_of(enrollment)
    assert [(c["action"], c["rank"], c["score"]) for c in best_first(decision)] == [
        ("voucher", 1, 15.0), ("apology", 2, 10.0), ("upgrade", 3, 3.0),
    ]
    assert candidate(decision, "voucher")["rate"] == 0.5 and candidate(decision, "voucher")["value"] == 30.0


def test_ties_go_to_the_first_key_whatever_the_node_order(db):
    ActionFactory(key="beta", priority=2, value=5)
    ActionFactory(key="alpha", priority=5, value=2)
    customers = CustomerFactory.create_batch(5)
    enrollments = enroll(version_with(["beta", "alpha"]), customers)

    assert decide(enrollments)["alpha"] == {c.pk for c in customers}
    assert [(c["action"], c["rank"]) for c in best_first(decision_of(enrollments[0]))] == [("alpha", 1), ("beta", 2)]


def test_one_batch_is_decided_with_a_fixed_number_of_queries(db, django_assert_num_queries):
    ActionFactory(key="coupon", eligibility=EXPERTS, priority=3)
    ActionFactory(key="callback", eligibility=FAILED_DELIVERY, priority=2)
    ActionFactory(key="tip")
    customers = CustomerFactory.create_batch(40, lifecycle_stage="expert") + CustomerFactory.create_batch(40)
    enrollments = enroll(version_with(["coupon", "callback", "tip"]), customers)
    batch = batch_for(enrollments)
    # The catalog, then one statement that decides, logs and counts for everyone.
    with django_assert_num_queries(2):
        ports = nba.decide(batch)
    assert len(ports["coupon"]) == 40 and len(ports["tip"]) == 40
    assert Decision.objects.count() == 80
    assert Action.objects.get(key="coupon").offered == 40


# --- Holdout ------------------------------------------------------------------------------------


def test_the_holdout_is_a_stable_share_of_customers(db):
    ActionFactory(key="coupon")
    customers = CustomerFactory.create_batch(200)
    version = version_with(["coupon"], holdout=20)

    first = decide(enroll(version, customers, seq=1))
    second = decide(enroll(JourneyVersionFactory(journey=version.journey), customers, seq=5))

    held = first["none"]
    assert 20 <= len(held) <= 60  # 20% of 200, give or take chance
    assert second["none"] == held and first["coupon"] == second["coupon"]
    decision = Decision.objects.filter(customer_id=next(iter(held))).first()
    assert decision.holdout is True and decision.action is None
    # The would-be winner is still on record.
    assert [(c["action"], c["rank"]) for c in decision.candidates] == [("coupon", 1)]
    assert Action.objects.get(key="coupon").offered == 2 * (200 - len(held))


# --- The decision log and retries ---------------------------------------------------------------


def test_every_decision_is_logged_with_its_candidates(db):
    coupon = ActionFactory(key="coupon", eligibility=EXPERTS, priority=2, value=10)
    ActionFactory(key="tip", priority=1, value=1)
    customer = CustomerFactory(lifecycle_stage="expert")
    [enrollment] = enroll(version_with(["coupon", "tip"]), [customer], seq=4)
    now = timezone.now()

    decide([enrollment], now=now)

    decision = decision_of(enrollment)
    assert decision.idempotency_key == f"{enrollment.pk}:offer:4"
    assert (decision.journey_id, decision.node, decision.customer_id) == (enrollment.journey_id, "offer", customer.pk)
    assert decision.action == coupon and decision.decided_at == now and decision.outcome == "pending"
    assert best_first(decision) == [
        {"action": "coupon", "name": coupon.name, "eligible": True, "reasons": [], "score": 10.0, "rank": 1,
         "position": 1, "priority": 2.0, "value": 10.0, "rate": 0.5, "offers_in_window": 0},
        {"action": "tip", "name": "Tip", "eligible": True, "reasons": [], "score": 0.5, "rank": 2,
         "position": 2, "priority": 1.0, "value": 1.0, "rate": 0.5, "offers_in_window": 0},
    ]
    assert [Action.objects.get(key=key).offered for key in ("coupon", "tip")] == [1, 0]


def test_deciding_again_for_the_same_step_returns_the_recorded_port(db):
    coupon = ActionFactory(key="coupon", priority=2)
    ActionFactory(key="tip", priority=1)
    customers = CustomerFactory.create_batch(3)
    enrollments = enroll(version_with(["coupon", "tip"]), customers)
    batch = batch_for(enrollments)
    first = nba.decide(batch)
    # Whatever changed since (the winner is retired), a retried step leaves as it did.
    Action.objects.filter(pk=coupon.pk).update(active=False)
    again = nba.decide(batch)

    assert again == first == {"coupon": [e.pk for e in enrollments], "tip": [], "none": []}
    assert Decision.objects.count() == 3
    assert Action.objects.get(pk=coupon.pk).offered == 3
    # The next step (a new seq) decides anew.
    for enrollment in enrollments:
        enrollment.seq = 2
    assert decide(enrollments)["tip"] == {c.pk for c in customers}
    assert Decision.objects.count() == 6


# --- Learning from outcomes ---------------------------------------------------------------------


def test_acceptances_mark_the_latest_decision_and_change_the_next_ranking(db):
    ActionFactory(key="apology", priority=1, value=10, accept_event="apology_used")
    voucher = ActionFactory(key="voucher", priority=1, value=10, accept_event="voucher_used",
                            reject_event="voucher_dismissed", max_offers=10)
    version = version_with(["apology", "voucher"])
    customers = CustomerFactory.create_batch(4)
    # Equal scores: the tie goes to "apology". Make voucher the winner for the first three.
    first = enroll(version, customers[:3])
    assert decide(first)["apology"] == {c.pk for c in customers[:3]}
    for enrollment in first:
        Decision.objects.filter(enrollment=enrollment).update(action=voucher)
    Action.objects.filter(pk=voucher.pk).update(offered=3)

    marked = nba.outcomes_record(
        customer_ids={c.pk for c in customers},
        by_name={"voucher_used": frozenset({customers[0].pk, customers[1].pk, customers[3].pk}),
                 "voucher_dismissed": frozenset({customers[2].pk}), "page_viewed": frozenset({customers[0].pk})},
        now=timezone.now(),
    )

    assert marked == 3  # customers[3] had no decision for it
    outcomes = {d.customer_id: d.outcome for d in Decision.objects.filter(action=voucher)}
    assert outcomes == {customers[0].pk: "accepted", customers[1].pk: "accepted", customers[2].pk: "rejected"}
    assert all(d.outcome_at for d in Decision.objects.filter(action=voucher))
    voucher.refresh_from_db()
    assert (voucher.offered, voucher.accepted) == (3, 2)
    # (2 + 1) / (3 + 2) = 0.6 beats apology's 1 / 2: the next customer gets the voucher.
    [later] = enroll(version, [customers[3]])
    assert decide([later])["voucher"] == {customers[3].pk}
    # An answer counts once: the same event again finds no pending decision.
    assert nba.outcomes_record(customer_ids={customers[0].pk}, by_name={"voucher_used": frozenset({customers[0].pk})},
                               now=timezone.now()) == 0


def test_only_the_latest_pending_decision_is_answered(db):
    coupon = ActionFactory(key="coupon", accept_event="coupon_used")
    customer = CustomerFactory()
    older = offer_before(customer, coupon, days_ago=5)
    newer = offer_before(customer, coupon, days_ago=1)
    assert nba.outcomes_record(customer_ids={customer.pk}, by_name={"coupon_used": frozenset({customer.pk})},
                               now=timezone.now()) == 1
    older.refresh_from_db()
    newer.refresh_from_db()
    assert (older.outcome, newer.outcome) == ("pending", "accepted")
    assert Action.objects.get(pk=coupon.pk).accepted == 1


# --- The catalog pages --------------------------------------------------------------------------

VALID_FORM = {
    "key": "apology-coupon", "name": "Apology coupon", "kind": "offer", "description": "10% off the next order",
    "value": "12.50", "priority": "2", "valid_from": "", "valid_until": "", "max_offers": "2", "window_days": "30",
    "cooldown_after_accept_days": "30", "cooldown_after_reject_days": "7", "accept_event": "coupon_redeemed",
    "reject_event": "", "eligibility": json.dumps(EXPERTS), "active": "on",
}


def test_outsiders_and_support_may_not_use_the_catalog(client, outsider, support):
    action = ActionFactory(key="coupon")
    audited = AuditEntry.objects.filter(object_type="action")
    for user in (outsider, support):
        client.force_login(user)
        for url in (reverse("journeys:action_list"), reverse("journeys:action_new"),
                    reverse("journeys:action_edit", args=[action.pk])):
            assert client.get(url).status_code == 403
            assert client.post(url, {**VALID_FORM, "key": "other"}).status_code == 403
    assert list(Action.objects.values_list("key", flat=True)) == ["coupon"]
    assert not audited.exists()


def test_the_catalog_lists_each_action_with_its_figures(client, marketer, django_assert_num_queries):
    ActionFactory(key="coupon", name="Apology coupon", value=Decimal("12.50"), priority=2, offered=8, accepted=2,
                  max_offers=3, window_days=30, valid_until=timezone.now() - timedelta(days=1))
    ActionFactory(key="callback", name="Call back", kind="human", eligibility=EXPERTS)
    client.force_login(marketer)
    # session, user, roles, the catalog
    with django_assert_num_queries(4):
        page = client.get(reverse("journeys:action_list")).content.decode()
    coupon_row = page.split('data-action="coupon"')[1].split("</tr>")[0]
    assert "Apology coupon" in coupon_row and "12.50" in coupon_row and "Expired" in coupon_row
    assert "at most 3 in 30 days" in coupon_row and "25%" in coupon_row and "Ranked with 30%" in coupon_row
    callback_row = page.split('data-action="callback"')[1].split("</tr>")[0]
    assert "Human follow-up" in callback_row and "with an eligibility rule" in callback_row and "—" in callback_row


def test_a_marketer_adds_an_action(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("journeys:action_new"), VALID_FORM)
    assert response.status_code == 302 and response["Location"] == reverse("journeys:action_list")
    action = Action.objects.get(key="apology-coupon")
    assert (action.value, action.priority, action.max_offers, action.accept_event) == (Decimal("12.50"), 2, 2,
                                                                                       "coupon_redeemed")
    assert action.eligibility == EXPERTS and action.eligibility_compiled["attr"] == "lifecycle_stage"
    entry = AuditEntry.objects.get(action="action.created")
    assert (entry.actor, entry.object_id) == ("marketer", str(action.pk))


def test_bad_input_is_shown_beside_each_field_and_rule_problems_by_path(client, marketer):
    ActionFactory(key="coupon")
    client.force_login(marketer)
    bad_rule = {"all": [{"attr": "lifecycle_stage", "op": "bigger", "value": "x"}, {"segment": 999}]}
    # The form refuses the name and the value; the key, dates, events and rule are checked too,
    # so one attempt shows every problem.
    response = client.post(reverse("journeys:action_new"), {
        **VALID_FORM, "key": "coupon", "name": "", "value": "-3", "valid_from": "2030-01-02T10:00",
        "valid_until": "2030-01-01T10:00", "accept_event": "used", "reject_event": "used",
        "eligibility": json.dumps(bad_rule),
    })
    assert response.status_code == 422
    page = response.content.decode()
    assert "Give the action a name." in page and "greater than or equal to 0" in page
    assert "An action with the key &#x27;coupon&#x27; already exists." in page
    assert "Must be after valid_from." in page and "Must differ from accept_event." in page
    assert "<code>eligibility.all[0].op</code>" in page and "<code>eligibility.all[1].segment</code>" in page
    assert page.count('class="field-error"') == 5  # name, value, key, valid_until, reject_event

    response = client.post(reverse("journeys:action_new"), {**VALID_FORM, "key": "Bad Key"})
    assert response.status_code == 422
    assert "Must be lower-case letters, digits, &#x27;_&#x27; or &#x27;-&#x27; (and not &#x27;none&#x27;)." in (
        response.content.decode())
    assert Action.objects.count() == 1 and not AuditEntry.objects.filter(object_type="action").exists()


def test_broken_json_is_refused_inline(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("journeys:action_new"), {**VALID_FORM, "eligibility": "{not json"})
    assert response.status_code == 422
    assert "The eligibility rule is not valid JSON" in response.content.decode()
    assert not Action.objects.exists()


def test_nul_characters_are_inline_errors(client, marketer):
    client.force_login(marketer)
    response = client.post(reverse("journeys:action_new"), {
        **VALID_FORM, "name": "Coupon\u0000",
        "eligibility": json.dumps({"attr": "email", "op": "eq", "value": "a\u0000"}),
    })
    assert response.status_code == 422
    page = response.content.decode()
    assert "Null characters are not allowed." in page and "<code>eligibility.value</code>" in page
    assert not Action.objects.exists()


def test_a_marketer_edits_an_action_but_not_its_key(client, marketer):
    action = ActionFactory(key="coupon", name="Coupon", eligibility=EXPERTS)
    client.force_login(marketer)
    page = client.get(reverse("journeys:action_edit", args=[action.pk])).content.decode()
    assert 'name="key"' not in page and "lifecycle_stage" in page and 'value="Coupon"' in page

    response = client.post(reverse("journeys:action_edit", args=[action.pk]), {
        **VALID_FORM, "key": "renamed", "name": "Apology coupon", "eligibility": "", "active": "",
        "valid_until": "2031-05-01T09:30",
    })
    assert response.status_code == 302
    action.refresh_from_db()
    assert (action.key, action.name, action.eligibility, action.eligibility_compiled, action.active) == (
        "coupon", "Apology coupon", None, None, False)
    assert action.valid_until.isoformat() == "2031-05-01T09:30:00+00:00"
    assert AuditEntry.objects.get(action="action.updated").details["key"] == "coupon"

    response = client.post(reverse("journeys:action_edit", args=[action.pk]), {
        **VALID_FORM, "eligibility": json.dumps({"attr": "nope", "op": "eq", "value": 1}), "max_offers": "0",
    })
    assert response.status_code == 422
    page = response.content.decode()
    assert "<code>eligibility.attr</code>" in page and "greater than or equal to 1" in page
    action.refresh_from_db()
    assert action.name == "Apology coupon" and action.eligibility is None


# --- Why this action ----------------------------------------------------------------------------


@pytest.fixture
def decided(db):
    ActionFactory(key="coupon", name="Apology coupon", eligibility=EXPERTS, priority=3)
    ActionFactory(key="callback", name="Call back", priority=1)
    customer = CustomerFactory(first_name="Ada", last_name="Lovelace", lifecycle_stage="lead")
    version = version_with(["coupon", "callback"])
    version.journey.name = "Service recovery"
    version.journey.save()
    [enrollment] = enroll(version, [customer])
    decide([enrollment])
    return decision_of(enrollment)


def test_why_this_action_lists_every_candidate_with_its_reasons(client, marketer, support, decided):
    for user in (marketer, support):
        client.force_login(user)
        response = client.get(reverse("journeys:decision", args=[decided.pk]))
        assert response.status_code == 200
        page = response.content.decode()
        assert "Why “Call back” for Ada Lovelace" in page
        assert "Service recovery" in page and "Make it right" in page
        winner = page.split('data-candidate="callback"')[1].split("</tr>")[0]
        assert winner.startswith(' class="winner"')
        assert "Eligible" in winner and "0.5000" in winner
        loser = page.split('data-candidate="coupon"')[1].split("</tr>")[0]
        assert "Not eligible" in loser and "not eligible: lifecycle_stage is &#x27;expert&#x27;" in loser
        # The journey and the catalog are linked for those who may open them.
        journey_link = reverse("journeys:detail", args=[decided.journey_id])
        assert (journey_link in page) is (user == marketer)


def test_why_shows_a_holdout_and_its_would_be_winner(client, support):
    ActionFactory(key="coupon", name="Apology coupon")
    version = version_with(["coupon"], holdout=50)
    customers = CustomerFactory.create_batch(30)
    decide(enroll(version, customers))
    held = Decision.objects.filter(holdout=True).first()
    client.force_login(support)
    page = client.get(reverse("journeys:decision", args=[held.pk])).content.decode()
    assert "held out" in page and "Holdout" in page
    assert "“Apology coupon” would have been chosen" in page


def test_outsiders_may_not_see_a_decision_and_unknown_ids_are_404(client, outsider, marketer, decided):
    client.force_login(outsider)
    assert client.get(reverse("journeys:decision", args=[decided.pk])).status_code == 403
    client.force_login(marketer)
    assert client.get(reverse("journeys:decision", args=[decided.pk + 1000])).status_code == 404


# --- The API ------------------------------------------------------------------------------------

API_ACTION = {
    "key": "apology-coupon", "name": "Apology coupon", "value": 12.5, "priority": 2, "max_offers": 2,
    "accept_event": "coupon_redeemed", "eligibility": EXPERTS, "valid_until": "2031-01-01T00:00:00+01:00",
}


def test_the_api_creates_reads_and_lists_actions(api):
    created = api.post("/actions", API_ACTION)
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["key"] == "apology-coupon" and body["value"] == 12.5 and body["acceptance_rate"] == 0.5
    assert body["valid_until"].startswith("2030-12-31T23:00:00") and body["window_days"] == 30
    assert api.get(f"/actions/{body['id']}").json()["eligibility"] == EXPERTS
    api.post("/actions", {"key": "callback", "name": "Call back", "kind": "human", "accept_event": "call_answered"})
    assert [a["key"] for a in api.get("/actions").json()] == ["apology-coupon", "callback"]
    assert AuditEntry.objects.get(action="action.created", object_id=str(body["id"])).actor == "api:tests"


def test_the_api_names_each_bad_field(api):
    ActionFactory(key="taken")
    response = api.post("/actions", {
        "key": "Taken Key", "name": "", "kind": "gift", "value": -1, "priority": 1.234, "max_offers": 0,
        "accept_event": "1bad", "eligibility": {"any": [{"attr": "email", "op": "within_days", "value": 3}]},
    })
    assert response.status_code == 400
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"key", "name", "kind", "value", "priority", "max_offers", "accept_event", "eligibility.any[0].op"}
    missing = api.post("/actions", {"name": "No key"})
    assert missing.status_code == 400
    assert {e["field"] for e in missing.json()["errors"]} == {"key", "accept_event"}
    naive = api.post("/actions", {**API_ACTION, "valid_from": "2030-01-01T00:00:00"})
    assert naive.status_code == 400 and naive.json()["errors"][0]["field"] == "valid_from"
    assert list(Action.objects.values_list("key", flat=True)) == ["taken"]


def test_the_api_changes_only_what_is_sent_and_never_the_key(api):
    action = api.post("/actions", API_ACTION).json()
    changed = api.put(f"/actions/{action['id']}", {"priority": 5, "valid_until": None, "eligibility": None})
    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert (body["priority"], body["valid_until"], body["eligibility"], body["name"]) == (5.0, None, None,
                                                                                        "Apology coupon")
    refused = api.put(f"/actions/{action['id']}", {"key": "other", "name": None})
    assert refused.status_code == 400
    assert {e["field"] for e in refused.json()["errors"]} == {"name"}
    refused = api.put(f"/actions/{action['id']}", {"key": "other"})
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "key"
    assert api.put("/actions/999999", {"priority": 1}).status_code == 404


def test_deleting_an_action_with_history_deactivates_it(api):
    used = ActionFactory(key="used")
    Decision.objects.create(customer=CustomerFactory(), action=used, idempotency_key="x")
    drafted = ActionFactory(key="drafted")
    JourneyFactory(draft=nba_graph(["other", "drafted"]))
    unused = ActionFactory(key="unused")
    response = api.delete(f"/actions/{used.pk}")
    assert response.status_code == 200 and response.json()["active"] is False
    assert api.delete(f"/actions/{drafted.pk}").status_code == 200
    assert api.delete(f"/actions/{unused.pk}").status_code == 204
    assert list(Action.objects.values_list("key", "active")) == [("drafted", False), ("used", False)]
    assert list(AuditEntry.objects.filter(object_type="action").values_list("action", flat=True).order_by("id")) == [
        "action.deactivated", "action.deactivated", "action.deleted"]


# --- Through the executor -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_live_journey_leaves_its_nba_node_by_the_decided_port():
    from journeys.models import Enrollment, Step
    from journeys.services import journey_create, journey_enroll, journey_publish

    ActionFactory(key="coupon", eligibility=EXPERTS, priority=2)
    ActionFactory(key="tip")
    journey = journey_create(name="Service recovery", graph=nba_graph(["coupon", "tip"]), actor="test")
    journey_publish(journey=journey, actor="test")
    expert, lead = CustomerFactory(lifecycle_stage="expert"), CustomerFactory(lifecycle_stage="lead")
    for customer in (expert, lead):
        journey_enroll(journey=journey, customer=customer, context={}, actor="test")

    ended_at = dict(Enrollment.objects.values_list("customer_id", "node"))
    assert ended_at == {expert.pk: "after-coupon", lead.pk: "after-tip"}
    ports = dict(Step.objects.filter(node="offer").values_list("enrollment__customer_id", "port"))
    assert ports == {expert.pk: "coupon", lead.pk: "tip"}
    decision = Decision.objects.get(customer=expert)
    assert decision.node == "offer" and decision.journey_id == journey.pk and decision.action.key == "coupon"
