"""Campaign fan-out: writing the Delivery rows of a launch to 1,000,000 customers.

1. Generates, set-based (INSERT … SELECT over generate_series), 1,000,000 customers with
   emails for ~95% and phones for ~80%, timezones across several IANA zones (a few empty or
   unknown), subscriptions to the "marketing" topic by email (~70%) and SMS (~35%) and to a
   second topic, bounced (~1%), complained and STOP-ed addresses, consent revocations
   (~1% per channel) next to recorded grants, and a static segment holding everyone.
2. For each strategy ("all", then "preferred"), times in two rounds, alternating the order:
   - ours: ``campaigns.services.lifecycle.campaign_launch`` of a campaign made by ``campaign_create``
     (email and SMS), the whole call: its snapshot is one INSERT … SELECT with routing,
     the send policy and the counters;
   - hand-written: one plain INSERT … SELECT, written for this campaign, that writes the
     same rows (same customers, channels, statuses, reasons, routing and due times).
   Before each timed run the Delivery and Counter tables are emptied, then VACUUM ANALYZE
   and CHECKPOINT, so every run writes into the same empty table with the same indexes.
   Both row sets are compared: counts per (channel, status, reason), and a fingerprint of
   every row (customer, channel, status, reason, routing, test group, due time).
3. bulk_create: the same launch as a person would write it with the ORM: read the audience
   and its subscriptions, channel statuses and consent, decide in Python, and
   ``Delivery.objects.bulk_create`` in batches of 5,000. Measured on the first 100,000
   customers of the audience and extrapolated linearly (it writes rows at a steady rate).

The outbox holds no earlier deliveries, so the frequency cap and the engagement ranking are
computed (by all three) but find nothing. Next to each time the CPU time of the PostgreSQL
backend is printed when the server runs on this machine: on a shared machine it varies far
less than the clock.

Targets: ours/hand-written ≤ 1.3 (the worst strategy) and ours ≥ 5× faster than bulk_create.
``--customers N`` runs it small (e.g. 20000) for a quick look; ``--strategies all`` skips
the second strategy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import common  # noqa: E402

NAME = "fanout"
TARGET_RATIO = 1.3
TARGET_SPEEDUP = 5.0
ROUNDS = 2
ORM_SAMPLE = 100_000
ORM_BATCH = 5_000
CHANNELS = ["email", "sms"]
ZONES = [
    "America/New_York", "America/Chicago", "America/Los_Angeles", "America/Sao_Paulo", "Europe/London",
    "Europe/Paris", "Europe/Berlin", "Africa/Lagos", "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo",
    "Australia/Sydney", "UTC",
]
CONTENT = {
    "email": {"subject": "Spring sale, {{ first_name|default:'friend' }}", "preheader": "Up to 40% off",
              "html": "<p>Hi {{ first_name }},</p><p><a href='https://shop.example.com/sale'>Shop the sale</a></p>",
              "text": "Hi {{ first_name }}, the spring sale is on: https://shop.example.com/sale"},
    "sms": {"body": "Hi {{ first_name }}, the spring sale is on: up to 40% off today"},
}


# --- The audience ---------------------------------------------------------------------------------


def generate(conninfo: str, customers: int) -> None:
    """Customers, topics, preferences and consent, written set-based in a few statements."""
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # random() after setseed() is repeatable within the session: the same data every run.
        conn.execute("SELECT setseed(0.42)")
        conn.execute(
            """
            INSERT INTO customers_customer (external_id, email, phone, first_name, last_name, locale, timezone,
                                            lifecycle_stage, attributes, created_at, updated_at)
            SELECT 'cust-' || i,
                   CASE WHEN r_email < 0.95 THEN 'customer' || i || '@example.com' ELSE '' END,
                   CASE WHEN r_phone < 0.80 THEN '+1555' || lpad(i::text, 7, '0') ELSE '' END,
                   (ARRAY['Ada', 'Bo', 'Chen', 'Dara', 'Eli', 'Femi', 'Gus', 'Hana', 'Ivo', 'Jun'])[1 + i %% 10],
                   (ARRAY['Ng', 'Silva', 'Okafor', 'Martin', 'Kumar', 'Sato', 'Brown'])[1 + i %% 7],
                   (ARRAY['en', 'en', 'fr', 'de', 'pt', 'ja'])[1 + i %% 6],
                   CASE WHEN r_zone < 0.03 THEN ''
                        WHEN r_zone < 0.032 THEN 'Mars/Olympus_Mons'
                        ELSE (%(zones)s::text[])[1 + floor(r_pick * %(zone_count)s)::int] END,
                   (ARRAY['lead', 'prospect', 'customer', 'customer', 'churned'])[1 + i %% 5],
                   jsonb_build_object('plan', (ARRAY['free', 'free', 'pro', 'team'])[1 + i %% 4],
                                      'ltv', (i * 37) %% 2000),
                   now() - make_interval(days => (i %% 700) + 1), now()
            FROM (SELECT i, random() AS r_email, random() AS r_phone, random() AS r_zone, random() AS r_pick
                  FROM generate_series(1, %(n)s) AS i) g
            """,
            {"n": customers, "zones": ZONES, "zone_count": len(ZONES)},
        )
        common.log(f"customers: {customers:,} in {time.perf_counter() - started:.0f} s")
        marketing, news = (
            conn.execute(
                "INSERT INTO customers_topic (key, name, description, is_transactional, created_at) "
                "VALUES (%s, %s, '', false, now()) RETURNING id", [key, name],
            ).fetchone()[0]
            for key, name in (("marketing", "Marketing"), ("product-news", "Product news"))
        )
        # Explicit opt-ins, and some explicit opt-outs, per topic × channel.
        conn.execute(
            """
            INSERT INTO customers_subscription (customer_id, topic_id, channel, subscribed, source, updated_at)
            SELECT c.id, s.topic_id, s.channel, r < s.yes, 'import', now() - interval '30 days'
            FROM customers_customer c
            CROSS JOIN (VALUES (%(marketing)s::bigint, 'email', 0.70, 0.75), (%(marketing)s, 'sms', 0.35, 0.38),
                               (%(news)s, 'email', 0.40, 0.45)) AS s(topic_id, channel, yes, known)
            CROSS JOIN LATERAL (SELECT random() + c.id * 0 AS r) x
            WHERE x.r < s.known
            """,
            {"marketing": marketing, "news": news},
        )
        conn.execute(
            """
            INSERT INTO customers_channelstatus (customer_id, channel, status, reason, updated_at)
            SELECT id, channel, status, reason, now() - interval '10 days'
            FROM (SELECT c.id, s.channel, random() + c.id * 0 AS r, s.cuts
                  FROM customers_customer c
                  CROSS JOIN (VALUES ('email', ARRAY[0.010, 0.012, 0.030]), ('sms', ARRAY[0.002, 0.002, 0.007]))
                       AS s(channel, cuts)) g
            CROSS JOIN LATERAL (SELECT CASE WHEN r < cuts[1] THEN 'bounced' WHEN r < cuts[2] THEN 'complained'
                                            WHEN r < cuts[3] AND channel = 'sms' THEN 'unsubscribed'
                                            WHEN r < cuts[3] THEN 'ok' END AS status,
                                       CASE WHEN r < cuts[1] THEN '550 5.1.1 user unknown' ELSE '' END AS reason) x
            WHERE x.status IS NOT NULL
            """
        )
        # The ledger, and the current state derived from it: ~30% grants, ~1% revocations.
        conn.execute(
            """
            WITH ledger AS (
                INSERT INTO customers_consent (customer_id, channel, granted, occurred_at, source, legal_basis,
                                               ip_address, user_agent, wording, form_url, recorded_by)
                SELECT id, channel, r >= 0.01, now() - make_interval(days => mod(id, 300)::int), 'signup-form',
                       'consent', NULL, 'Mozilla/5.0', 'Send me offers', 'https://shop.example.com/signup', ''
                FROM (SELECT c.id, ch.channel, random() + c.id * 0 AS r
                      FROM customers_customer c CROSS JOIN (VALUES ('email'), ('sms')) AS ch(channel)) g
                WHERE r < 0.31
                RETURNING id, customer_id, channel, granted, occurred_at
            )
            INSERT INTO customers_consentstate (customer_id, channel, granted, updated_at, consent_id)
            SELECT customer_id, channel, granted, occurred_at, id FROM ledger
            """
        )
        conn.execute("VACUUM ANALYZE")
    common.log(f"audience data generated in {time.perf_counter() - started:.0f} s")


def audience_segment(conninfo: str):
    from segments.models import Segment
    from segments.services import segment_create

    segment = segment_create(name="Everyone", static=True, actor="bench")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        size = conn.execute(
            "INSERT INTO segments_segmentmembership (segment_id, customer_id, entered_at) "
            "SELECT %s, id, now() FROM customers_customer", [segment.pk],
        ).rowcount
        conn.execute("UPDATE segments_segment SET member_count = %s WHERE id = %s", [size, segment.pk])
        conn.execute("VACUUM ANALYZE segments_segmentmembership")
    return Segment.objects.get(pk=segment.pk)


def profile_counts(conninfo: str, topic_id: int) -> str:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE email <> ''), count(*) FILTER (WHERE phone <> ''),
                   count(DISTINCT timezone),
                   (SELECT count(*) FROM customers_subscription
                    WHERE topic_id = %(t)s AND channel = 'email' AND subscribed),
                   (SELECT count(*) FROM customers_subscription
                    WHERE topic_id = %(t)s AND channel = 'sms' AND subscribed),
                   (SELECT count(*) FROM customers_channelstatus WHERE status = 'bounced'),
                   (SELECT count(*) FROM customers_consentstate WHERE NOT granted)
            FROM customers_customer
            """,
            {"t": topic_id},
        ).fetchone()
    total, email, phone, zones, sub_email, sub_sms, bounced, revoked = row
    return (f"{total:,} customers: email {email / total:.0%}, phone {phone / total:.0%}, {zones} timezones; "
            f"marketing subscriptions email {sub_email / total:.0%}, sms {sub_sms / total:.0%}; "
            f"{bounced:,} bounced addresses, {revoked:,} consent revocations")


# --- The three ways of writing the rows ---------------------------------------------------------


def make_campaign(segment, strategy: str, label: str):
    from campaigns.services.compose import CampaignInput, VariantInput, campaign_create

    data = CampaignInput(
        name=f"Spring sale ({strategy}, {label})", topic="marketing", channels=list(CHANNELS),
        segment_ids=[segment.pk], strategy=strategy,
        variants=[VariantInput(key="A", content={c: CONTENT[c] for c in CHANNELS})],
    )
    return campaign_create(data=data, actor="bench")


def prepare(conninfo: str) -> None:
    """Every timed run starts from the same place: empty outbox, fresh statistics, no dirty pages."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE campaigns_delivery, campaigns_counter")
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error:
            pass


def run_ours(segment, strategy: str, label: str) -> tuple[float, object]:
    from campaigns.services.lifecycle import campaign_launch

    campaign = make_campaign(segment, strategy, label)
    started = time.perf_counter()
    launched = campaign_launch(campaign=campaign, actor="bench")
    return time.perf_counter() - started, launched


# The hand-written launch: the policy and routing as a person would write them for this one
# campaign (a marketing topic, one segment, email and SMS, no staged test).
HAND_JUDGED = """
    SELECT m.customer_id, ch.channel, ch.pos, coalesce(z.name, %(default_tz)s) AS zone,
           sub.subscribed IS TRUE AS explicit, coalesce(e.score, 0) AS score,
           CASE WHEN (ch.channel = 'email' AND c.email = '') OR (ch.channel = 'sms' AND c.phone = '') THEN 'no_address'
                WHEN cs.status IN ('bounced', 'complained', 'unsubscribed') THEN cs.status
                WHEN st.granted = false THEN 'consent_revoked'
                WHEN sub.subscribed IS NOT TRUE THEN 'not_subscribed'
                WHEN coalesce(cap.sent, 0) >= %(cap_messages)s THEN 'frequency_cap'
           END AS reason
    FROM segments_segmentmembership m
    CROSS JOIN (VALUES ('email', 1), ('sms', 2)) AS ch(channel, pos)
    JOIN customers_customer c ON c.id = m.customer_id
    LEFT JOIN (SELECT name FROM pg_timezone_names) z ON z.name = c.timezone
    LEFT JOIN customers_channelstatus cs ON cs.customer_id = m.customer_id AND cs.channel = ch.channel
    LEFT JOIN customers_consentstate st ON st.customer_id = m.customer_id AND st.channel = ch.channel
    LEFT JOIN customers_subscription sub
        ON sub.customer_id = m.customer_id AND sub.topic_id = %(topic)s AND sub.channel = ch.channel
    LEFT JOIN (SELECT d.customer_id, count(*) AS sent FROM campaigns_delivery d
               JOIN customers_topic t ON t.id = d.topic_id AND NOT t.is_transactional
               WHERE (d.sent_at > %(now)s - make_interval(hours => %(cap_hours)s)
                      AND d.status IN ('sent', 'delivered', 'opened', 'clicked', 'converted', 'bounced',
                                       'complained', 'unsubscribed'))
                  OR d.status = 'sending'
               GROUP BY 1) cap ON cap.customer_id = m.customer_id
    LEFT JOIN (SELECT customer_id, channel, count(opened_at) + count(clicked_at) AS score FROM campaigns_delivery
               WHERE opened_at IS NOT NULL AND created_at > %(now)s - interval '180 days'
               GROUP BY 1, 2) e ON e.customer_id = m.customer_id AND e.channel = ch.channel
    WHERE m.segment_id = %(segment)s
"""

HAND_DUE = """
    CASE WHEN (%(start)s AT TIME ZONE x.zone)::time >= %(quiet_start)s
              AND (%(start)s AT TIME ZONE x.zone)::time < %(quiet_end)s THEN %(start)s
         WHEN (%(start)s AT TIME ZONE x.zone)::time < %(quiet_start)s
              THEN ((%(start)s AT TIME ZONE x.zone)::date + %(quiet_start)s) AT TIME ZONE x.zone
         ELSE ((%(start)s AT TIME ZONE x.zone)::date + 1 + %(quiet_start)s) AT TIME ZONE x.zone
    END
"""

HAND_SQL = {
    "all": f"""
    INSERT INTO campaigns_delivery
        (campaign_id, variant_id, customer_id, topic_id, channel, status, reason, test_group, routed_by, due_at)
    SELECT %(campaign)s, %(variant)s, x.customer_id, %(topic)s, x.channel,
           CASE WHEN x.reason IS NULL THEN 'planned' ELSE 'suppressed' END, coalesce(x.reason, ''), false, 'all',
           {HAND_DUE}
    FROM ({HAND_JUDGED}) x
    """,
    # One channel per customer: sendable first, then an explicit subscription, engagement,
    # and the campaign's channel order.
    "preferred": f"""
    INSERT INTO campaigns_delivery
        (campaign_id, variant_id, customer_id, topic_id, channel, status, reason, test_group, routed_by, due_at)
    SELECT %(campaign)s, %(variant)s, x.customer_id, %(topic)s, x.channel,
           CASE WHEN x.reason IS NULL THEN 'planned' ELSE 'suppressed' END, coalesce(x.reason, ''), false,
           CASE WHEN x.reason IS NOT NULL THEN 'fallback'
                WHEN x.explicit AND x.explicit_ok = 1 THEN 'explicit'
                WHEN x.score > 0 THEN 'engagement'
                ELSE 'fallback' END,
           {HAND_DUE}
    FROM (SELECT DISTINCT ON (customer_id) j.*,
                 count(*) FILTER (WHERE explicit AND reason IS NULL) OVER (PARTITION BY customer_id) AS explicit_ok
          FROM ({HAND_JUDGED}) j
          ORDER BY customer_id, reason IS NULL DESC, explicit DESC, score DESC, pos) x
    """,
}


def hand_params(campaign, segment, moment: datetime) -> dict:
    from campaigns.policy import PolicySettings

    return {
        **PolicySettings.current().params(), "campaign": campaign.pk, "variant": campaign.variants.get().pk,
        "topic": campaign.topic_id, "segment": segment.pk, "now": moment, "start": moment,
    }


def run_hand(segment, strategy: str, label: str, moment: datetime) -> tuple[float, object]:
    from django.db import connection, transaction

    campaign = make_campaign(segment, strategy, label)
    params = hand_params(campaign, segment, moment)
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        # The same memory for sorts and hashes that the snapshot gives itself.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(HAND_SQL[strategy], params)
    return time.perf_counter() - started, campaign


def run_orm(segment, campaign, moment: datetime, limit: int) -> tuple[float, float, int, int]:
    """The launch with the ORM for the first ``limit`` customers of the audience.

    Returns (seconds to read and decide, seconds to bulk_create, rows, last customer id).
    """
    from django.conf import settings
    from django.db import transaction
    from django.db.models import Count

    from campaigns.models import Delivery
    from campaigns.policy import SENT_STATUSES
    from customers.models import ChannelStatus, ConsentState, Customer, Subscription
    from segments.models import SegmentMembership

    quiet_start, quiet_end = settings.QUIET_HOURS
    default_zone = ZoneInfo(settings.TIME_ZONE)
    known_zones: dict[str, ZoneInfo] = {}

    def zone_of(name: str) -> ZoneInfo:
        if name not in known_zones:
            try:
                known_zones[name] = ZoneInfo(name) if name else default_zone
            except (ValueError, KeyError):
                known_zones[name] = default_zone
        return known_zones[name]

    def due(zone: ZoneInfo) -> datetime:
        local = moment.astimezone(zone)
        if quiet_start <= local.time() < quiet_end:
            return moment
        day = local.date() if local.time() < quiet_start else local.date() + timedelta(days=1)
        return datetime.combine(day, quiet_start, tzinfo=zone)

    variant_id = campaign.variants.get().pk
    started = time.perf_counter()
    with transaction.atomic():
        ids = list(SegmentMembership.objects.filter(segment=segment).order_by("customer_id")
                   .values_list("customer_id", flat=True)[:limit])
        last = ids[-1]
        in_audience = {"customer__segment_memberships__segment": segment, "customer_id__lte": last}
        people = Customer.objects.filter(segment_memberships__segment=segment, pk__lte=last).values_list(
            "pk", "email", "phone", "timezone")
        subscribed = {(c, ch): s for c, ch, s in Subscription.objects.filter(topic_id=campaign.topic_id, **in_audience)
                      .values_list("customer_id", "channel", "subscribed")}
        statuses = {(c, ch): s for c, ch, s in ChannelStatus.objects.filter(**in_audience)
                    .values_list("customer_id", "channel", "status")}
        revoked = set(ConsentState.objects.filter(granted=False, **in_audience).values_list("customer_id", "channel"))
        window = moment - timedelta(hours=settings.FREQUENCY_CAP_HOURS)
        sent = dict(Delivery.objects.filter(sent_at__gt=window, status__in=SENT_STATUSES, topic__is_transactional=False,
                                            **in_audience)
                    .values_list("customer_id").annotate(n=Count("id")).values_list("customer_id", "n"))
        rows = []
        for customer_id, email, phone, zone_name in people.iterator(chunk_size=ORM_BATCH):
            due_at = due(zone_of(zone_name))
            for channel in CHANNELS:
                status = statuses.get((customer_id, channel))
                if not (email if channel == "email" else phone):
                    reason = "no_address"
                elif status in ("bounced", "complained", "unsubscribed"):
                    reason = status
                elif (customer_id, channel) in revoked:
                    reason = "consent_revoked"
                elif subscribed.get((customer_id, channel)) is not True:
                    reason = "not_subscribed"
                elif sent.get(customer_id, 0) >= settings.FREQUENCY_CAP_MESSAGES:
                    reason = "frequency_cap"
                else:
                    reason = ""
                rows.append(Delivery(
                    campaign_id=campaign.pk, variant_id=variant_id, customer_id=customer_id,
                    topic_id=campaign.topic_id, channel=channel, status="suppressed" if reason else "planned",
                    reason=reason, test_group=False, routed_by="all", due_at=due_at,
                ))
        decided = time.perf_counter()
        Delivery.objects.bulk_create(rows, batch_size=ORM_BATCH)
    written = time.perf_counter()
    return decided - started, written - decided, len(rows), last


# --- Checking that the rows are the same -------------------------------------------------------


def fingerprint(conninfo: str, campaign_id: int, *, upto: int | None = None) -> dict:
    """What a launch wrote, independent of ids: counts by (channel, status, reason) and a hash
    over every row, without and with its due time."""
    where = "campaign_id = %(c)s" + (" AND customer_id <= %(upto)s" if upto else "")
    params = {"c": campaign_id, "upto": upto}
    with psycopg.connect(conninfo) as conn:
        counts = {f"{ch}/{st}/{re or '-'}": n for ch, st, re, n in conn.execute(
            f"SELECT channel, status, reason, count(*) FROM campaigns_delivery WHERE {where} "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", params)}
        rows, routed, timed = conn.execute(
            f"""
            SELECT count(*),
                   sum(hashtextextended(concat_ws('|', customer_id, channel, status, reason, routed_by, test_group,
                                                  variant_id IS NOT NULL), 0)::numeric),
                   sum(hashtextextended(concat_ws('|', customer_id, channel, status, reason, routed_by, test_group,
                                                  variant_id IS NOT NULL, extract(epoch FROM due_at)), 0)::numeric)
            FROM campaigns_delivery WHERE {where}
            """,
            params,
        ).fetchone()
    return {"counts": counts, "rows": rows, "routed": routed, "timed": timed}


def same(a: dict, b: dict, *, with_due: bool) -> bool:
    return a["counts"] == b["counts"] and a["routed"] == b["routed"] and (not with_due or a["timed"] == b["timed"])


def counters_total(conninfo: str, campaign_id: int) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT coalesce(sum(value), 0) FROM campaigns_counter "
                            "WHERE grain = 'total' AND campaign_id = %s", [campaign_id]).fetchone()[0]


# --- The benchmark -------------------------------------------------------------------------------


def backend_cpu() -> tuple[int, float] | None:
    """(pid, CPU seconds used so far) of the PostgreSQL backend of Django's connection, when the
    server runs on this machine (``make bench``): on a machine shared with others it varies
    much less than the time on the clock, so it is printed next to it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(before: tuple[int, float] | None) -> float | None:
    after = backend_cpu()
    if before is None or after is None or before[0] != after[0]:
        return None
    return after[1] - before[1]


def seconds_text(wall: float, cpu: float | None) -> str:
    return f"{wall:7.2f} s" + (f" (server CPU {cpu:6.2f} s)" if cpu is not None else "")


def measure(conninfo: str, segment, strategy: str, *, sample_upto: int | None = None) -> dict:
    """Ours and the hand-written INSERT … SELECT, ROUNDS rounds in alternating order.

    With ``sample_upto``, also keeps the fingerprint of the first launch's rows for customers
    up to that id, and its moment, for the ORM run to compare with.
    """
    ours_times, hand_times, ours_cpu, hand_cpu, checks = [], [], [], [], []
    reference = moment = sample = None
    for round_no in range(ROUNDS):
        order = ("ours", "hand") if round_no % 2 == 0 else ("hand", "ours")
        for who in order:
            label = f"{who} {round_no + 1}"
            prepare(conninfo)
            before = backend_cpu()
            if who == "ours":
                seconds, campaign = run_ours(segment, strategy, label)
                cpu = cpu_used(before)
                ours_times.append(seconds)
                ours_cpu.append(cpu)
                found = fingerprint(conninfo, campaign.pk)
                counted = counters_total(conninfo, campaign.pk)
                checks.append(counted == found["rows"])
                if reference is None:
                    reference = found
                    # The hand-written runs are given this launch's moment, so due times compare exactly.
                    moment = campaign.launched_at
                    if sample_upto:
                        sample = fingerprint(conninfo, campaign.pk, upto=sample_upto)
                else:
                    # A later launch has its own moment: quiet hours may defer differently.
                    checks.append(same(found, reference, with_due=False))
                common.log(f"  {strategy:9} ours         round {round_no + 1}: {seconds_text(seconds, cpu)}  "
                           f"{found['rows']:,} rows, counters {counted:,}")
            else:
                if moment is None:
                    raise RuntimeError("the first round launches ours first")
                seconds, hand_campaign = run_hand(segment, strategy, label, moment)
                cpu = cpu_used(before)
                hand_times.append(seconds)
                hand_cpu.append(cpu)
                found = fingerprint(conninfo, hand_campaign.pk)
                matches = same(found, reference, with_due=True)
                checks.append(matches)
                common.log(f"  {strategy:9} hand-written round {round_no + 1}: {seconds_text(seconds, cpu)}  "
                           f"{found['rows']:,} rows, same rows as ours: {matches}")
                if not matches:
                    common.log(f"    ours: {reference['counts']}\n    hand: {found['counts']}")
    ours, hand = min(ours_times), min(hand_times)
    result = {"ours_s": round(ours, 2), "hand_s": round(hand, 2), "ratio": round(ours / hand, 3),
              "rows": reference["rows"], "same_rows": all(checks),
              "by_channel_status_reason": reference["counts"], "ours_runs_s": [round(t, 2) for t in ours_times],
              "hand_runs_s": [round(t, 2) for t in hand_times]}
    if None not in ours_cpu + hand_cpu:
        result.update(ours_cpu_s=round(min(ours_cpu), 2), hand_cpu_s=round(min(hand_cpu), 2),
                      cpu_ratio=round(min(ours_cpu) / min(hand_cpu), 3))
    return result, moment, sample


def sample_bound(conninfo: str, segment, limit: int) -> int:
    """The id of the last of the first ``limit`` customers of the audience."""
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT max(customer_id) FROM (SELECT customer_id FROM segments_segmentmembership WHERE segment_id = %s "
            "ORDER BY customer_id LIMIT %s) s", [segment.pk, limit]).fetchone()[0]


def measure_orm(conninfo: str, segment, customers: int, moment: datetime, reference: dict) -> dict:
    """The ORM launch on a sample, at the moment of ours' first launch, checked against its rows
    for the same customers, and extrapolated to the whole audience."""
    limit = min(ORM_SAMPLE, customers)
    campaign = make_campaign(segment, "all", "ORM")
    prepare(conninfo)
    before, client_before = backend_cpu(), time.process_time()
    read_s, write_s, rows, _ = run_orm(segment, campaign, moment, limit)
    server_cpu, client_cpu = cpu_used(before), time.process_time() - client_before
    found = fingerprint(conninfo, campaign.pk)
    matches = same(found, reference, with_due=True)
    seconds = read_s + write_s
    scale = customers / limit
    result = {"sample_customers": limit, "sample_rows": rows, "read_decide_s": round(read_s, 2),
              "bulk_create_s": round(write_s, 2), "sample_s": round(seconds, 2), "scale": scale,
              "extrapolated_s": round(seconds * scale, 1), "same_rows": matches}
    if server_cpu is not None:
        result.update(sample_cpu_s=round(server_cpu + client_cpu, 2), sample_server_cpu_s=round(server_cpu, 2),
                      sample_client_cpu_s=round(client_cpu, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--strategies", default="all,preferred", help="comma-separated: all, preferred")
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    # One connection for the whole run, so that each launch's server CPU is read from the
    # backend that did the work: after a launch commits, django-q closes connections older
    # than CONN_MAX_AGE, and a full-size launch takes longer than the default minute.
    os.environ["DATABASE_CONN_MAX_AGE"] = str(24 * 3600)
    with common.bench_database("switchboard_bench_fanout") as conninfo:
        common.migrate(conninfo)
        common.setup_django(conninfo)
        generate(conninfo, args.customers)
        segment = audience_segment(conninfo)
        from customers.models import Topic

        common.log(profile_counts(conninfo, Topic.objects.get(key="marketing").pk))
        common.log(f"launch to {segment.member_count:,} customers on email and sms; best of {ROUNDS} rounds, "
                   "alternating order; outbox emptied, VACUUM ANALYZE and CHECKPOINT before each run")
        upto = sample_bound(conninfo, segment, min(ORM_SAMPLE, args.customers))
        results, moment, sample = {}, None, None
        for strategy in strategies:
            results[strategy], first_moment, first_sample = measure(
                conninfo, segment, strategy, sample_upto=upto if strategy == "all" else None)
            if strategy == "all":
                moment, sample = first_moment, first_sample
        orm = measure_orm(conninfo, segment, args.customers, moment, sample) if moment else None

    if orm is None:
        sys.exit("bulk_create is compared with the 'all' strategy: include it in --strategies")
    figures = {"customers": args.customers}
    for strategy, result in results.items():
        cpu = (f"; server CPU ours {result['ours_cpu_s']:.2f} s, hand-written {result['hand_cpu_s']:.2f} s, "
               f"ratio {result['cpu_ratio']:.2f}") if "cpu_ratio" in result else ""
        common.log(f"{strategy}: ours {result['ours_s']:.2f} s, hand-written INSERT … SELECT {result['hand_s']:.2f} s, "
                   f"ratio {result['ratio']:.2f} (best of {ROUNDS}){cpu}; {result['rows']:,} rows, "
                   f"same rows: {result['same_rows']}")
        common.log(f"  rows by channel/status/reason: {result['by_channel_status_reason']}")
        figures[strategy] = result
    extrapolated = orm["scale"] > 1
    speedup = orm["extrapolated_s"] / results["all"]["ours_s"]
    hand_speedup = orm["extrapolated_s"] / results["all"]["hand_s"]
    cpu = (f"; CPU {orm['sample_cpu_s']:.2f} s (server {orm['sample_server_cpu_s']:.2f} s, "
           f"Python {orm['sample_client_cpu_s']:.2f} s)") if "sample_cpu_s" in orm else ""
    common.log(
        f"bulk_create (ORM read + Python policy + bulk_create in batches of {ORM_BATCH:,}), strategy 'all': "
        f"{orm['sample_customers']:,} customers ({orm['sample_rows']:,} rows) in {orm['sample_s']:.2f} s "
        f"(read and decide {orm['read_decide_s']:.2f} s, bulk_create {orm['bulk_create_s']:.2f} s){cpu}"
        + (f"; measured on the first {orm['sample_customers']:,} customers and extrapolated linearly "
           f"×{orm['scale']:g} to {args.customers:,}: {orm['extrapolated_s']:.1f} s" if extrapolated else "")
        + f"; same rows as ours: {orm['same_rows']}"
    )
    common.log(f"ours ('all') vs bulk_create: {speedup:.1f}× faster (the hand-written INSERT … SELECT: "
               f"{hand_speedup:.1f}× faster)")
    orm.pop("scale")
    figures["bulk_create"] = {**orm, "extrapolated": extrapolated, "speedup": round(speedup, 1),
                              "hand_written_speedup": round(hand_speedup, 1)}
    ratio = max(result["ratio"] for result in results.values())
    correct = all(result["same_rows"] for result in results.values()) and orm["same_rows"]
    met = correct and ratio <= TARGET_RATIO and speedup >= TARGET_SPEEDUP
    common.report(NAME, figures, ratio, "≤ 1.3 vs INSERT … SELECT and ≥ 5× faster than bulk_create", met)


if __name__ == "__main__":
    main()
