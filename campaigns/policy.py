"""The send policy: one definition, used by every sender.

For each candidate (customer, channel) of a topic it decides: send now, defer until a
moment (quiet hours), or suppress with a named reason. It is written once, as SQL, so that
a launch applies it to a million candidates in one statement, the dispatcher re-checks a
claimed batch with it just before sending, and a one-off API send runs it for one row.

Rules, in the order the first failing one names the reason:

1-4. reachability, as ``customers.reachability`` defines it: ``no_address``, ``bounced``,
                        ``complained`` / ``unsubscribed`` (marketing topics only: receipts
                        and alerts still go out), ``consent_revoked``
5. ``not_subscribed``   marketing topics need an explicit subscription for topic × channel;
                        transactional topics go out unless the customer explicitly opted out
6. ``frequency_cap``    marketing only: at most FREQUENCY_CAP_MESSAGES marketing messages
                        per customer in FREQUENCY_CAP_HOURS, across every channel, campaign
                        and journey; messages a worker is sending right now count too, and
                        workers re-check a customer one at a time (``CAP_LOCK_SQL``)
7. quiet hours          marketing only: outside QUIET_HOURS in the customer's timezone the
                        delivery is deferred to the next allowed local time, never dropped
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from django.conf import settings
from django.db import connection

from customers import reachability

from .models import DeliveryStatus

# Statuses that mean "a message reached the provider": they count towards the cap.
SENT_STATUSES = tuple(
    status.value
    for status in (
        DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED,
        DeliveryStatus.CONVERTED, DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED, DeliveryStatus.UNSUBSCRIBED,
    )
)


@dataclass(frozen=True)
class PolicySettings:
    cap_messages: int
    cap_hours: int
    quiet_start: time
    quiet_end: time
    default_timezone: str

    @classmethod
    def current(cls) -> "PolicySettings":
        return cls(
            cap_messages=settings.FREQUENCY_CAP_MESSAGES,
            cap_hours=settings.FREQUENCY_CAP_HOURS,
            quiet_start=settings.QUIET_HOURS[0],
            quiet_end=settings.QUIET_HOURS[1],
            default_timezone=settings.TIME_ZONE,
        )

    def params(self) -> dict:
        return {
            "cap_messages": self.cap_messages,
            "cap_hours": self.cap_hours,
            "quiet_start": self.quiet_start,
            "quiet_end": self.quiet_end,
            "default_tz": self.default_timezone,
            # Deliveries being re-checked: in flight, but not yet against themselves.
            "rechecking": [],
        }


def reason_sql(*, cap_counts: str = "cap.sent") -> str:
    """A CASE expression naming the first rule a candidate fails, or NULL to send.

    Expects in scope: ``cand`` (customer_id, channel), ``c`` (the customer), ``t`` (the
    topic), ``cs`` (the channel status row, left-joined), ``st`` (the consent state,
    left-joined), ``sub`` (the subscription row, left-joined) and ``cap_counts`` (marketing
    messages sent in the window or being sent, NULL when none).
    """
    return f"""
    CASE
        {reachability.reason_cases(
            channel="cand.channel", status="cs.status", granted="st.granted", transactional="t.is_transactional")}
        WHEN NOT t.is_transactional AND sub.subscribed IS NOT true THEN 'not_subscribed'
        WHEN t.is_transactional AND sub.subscribed = false THEN 'not_subscribed'
        WHEN NOT t.is_transactional AND coalesce({cap_counts}, 0) >= %(cap_messages)s THEN 'frequency_cap'
    END
    """


def joins_sql(*, topic: str = "cand.topic_id") -> str:
    """The joins ``reason_sql`` reads, for a relation ``cand(customer_id, channel, …)``."""
    return f"""
    JOIN customers_customer c ON c.id = cand.customer_id
    JOIN customers_topic t ON t.id = {topic}
    LEFT JOIN customers_channelstatus cs ON cs.customer_id = cand.customer_id AND cs.channel = cand.channel
    LEFT JOIN customers_consentstate st ON st.customer_id = cand.customer_id AND st.channel = cand.channel
    LEFT JOIN customers_subscription sub
        ON sub.customer_id = cand.customer_id AND sub.topic_id = t.id AND sub.channel = cand.channel
    """


# Marketing messages per customer that count towards the cap: a CTE named "recent". Those
# sent in the window, and those a worker is sending now (they passed the re-check and may
# reach the customer any moment), except the ones being re-checked themselves.
RECENT_SQL = f"""
    recent AS (
        SELECT d.customer_id, count(*) AS sent
        FROM campaigns_delivery d JOIN customers_topic rt ON rt.id = d.topic_id
        WHERE ((d.sent_at > %(now)s - make_interval(hours => %(cap_hours)s) AND d.status IN {SENT_STATUSES!r})
               OR (d.status = '{DeliveryStatus.SENDING.value}' AND d.id <> ALL(%(rechecking)s::bigint[])))
          AND NOT rt.is_transactional
        GROUP BY d.customer_id
    )
"""

# Advisory-lock namespace of the frequency cap ("fcap" in ASCII).
CAP_LOCK_SPACE = 0x66636170

# Serialises the cap re-check per customer. Taken by the dispatcher, in the transaction that
# claims deliveries, for every customer with a marketing delivery among %(ids)s, before it
# counts what is in flight: a second worker with the same customer waits until the first
# committed its decision, then counts the first one's deliveries as being sent. The locks
# are taken in key order, so two workers locking overlapping customers never deadlock;
# ids past 2**31 - 1 wrap around (two customers sharing a lock only wait for each other). Run it
# as its own statement: the counting statement after it must see what the other committed.
# One lock per customer in the batch: PostgreSQL's shared lock table (max_locks_per_transaction
# × max_connections entries) must hold DELIVERY_BATCH_SIZE per concurrent worker.
CAP_LOCK_SQL = f"""
    SELECT count(pg_advisory_xact_lock({CAP_LOCK_SPACE}, k.key)) FROM (
        SELECT DISTINCT (d.customer_id %% 2147483647)::int AS key
        FROM campaigns_delivery d JOIN customers_topic t ON t.id = d.topic_id
        WHERE d.id = ANY(%(ids)s) AND NOT t.is_transactional
        ORDER BY 1
    ) k
"""


def local_zone_sql(customer: str = "c") -> str:
    """The customer's timezone, or the default when it is empty or unknown to PostgreSQL."""
    return (
        f"coalesce((SELECT z.name FROM policy_zones z WHERE z.name = {customer}.timezone), %(default_tz)s)"
    )


# Zone names PostgreSQL knows (copied from pg_timezone_names by a migration, which is slow
# to read): an unknown name must fall back to the default, not abort a launch.
ZONES_SQL = "policy_zones AS (SELECT name FROM campaigns_timezone)"


def defer_sql(at: str, zone: str) -> str:
    """The first moment at or after ``at`` inside quiet hours' allowed window, in ``zone``."""
    local = f"({at} AT TIME ZONE {zone})"
    return f"""
    CASE
        WHEN {local}::time >= %(quiet_start)s AND {local}::time < %(quiet_end)s THEN {at}
        WHEN {local}::time < %(quiet_start)s THEN ({local}::date + %(quiet_start)s) AT TIME ZONE {zone}
        ELSE ({local}::date + 1 + %(quiet_start)s) AT TIME ZONE {zone}
    END
    """


@dataclass
class Decision:
    channel: str
    action: str  # "send", "defer" or "suppress"
    reason: str = ""
    until: datetime | None = None


def decide(*, customer_id: int, topic_id: int, channels: list[str], at: datetime) -> list[Decision]:
    """The policy for one customer and topic on each of ``channels`` at moment ``at``.

    The same SQL a launch and the dispatcher use, for one candidate row per channel.
    """
    policy = PolicySettings.current()
    params = {**policy.params(), "now": at, "customer_id": customer_id, "topic_id": topic_id, "channels": channels}
    sql = f"""
    WITH {ZONES_SQL}, {RECENT_SQL},
    cand AS (SELECT %(customer_id)s::bigint AS customer_id, ch AS channel, %(topic_id)s::bigint AS topic_id
             FROM unnest(%(channels)s::text[]) AS ch)
    SELECT cand.channel, {reason_sql(cap_counts="recent.sent")} AS reason,
           CASE WHEN t.is_transactional THEN %(now)s ELSE {defer_sql("%(now)s", local_zone_sql())} END AS due_at
    FROM cand {joins_sql()}
    LEFT JOIN recent ON recent.customer_id = cand.customer_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = {channel: (reason, due) for channel, reason, due in cursor.fetchall()}
    decisions = []
    for channel in channels:
        reason, due = rows[channel]
        if reason:
            decisions.append(Decision(channel, "suppress", reason=reason))
        elif due > at:
            decisions.append(Decision(channel, "defer", until=due))
        else:
            decisions.append(Decision(channel, "send"))
    return decisions
