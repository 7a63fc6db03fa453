"""Whether a customer can be reached on a channel: the one definition.

A customer is **reachable** on a channel when, in this order (the first failing rule names
the reason):

1. ``no_address``      they have an address for it: an email, a phone number (SMS, WhatsApp,
                       voice), a registered device (push);
2. ``bounced``         that address has not hard-bounced;
3. ``complained`` / ``unsubscribed``  they have not complained about, or replied STOP to,
                       marketing on that channel;
4. ``consent_revoked`` their latest consent entry for the channel is not a revocation.

Transactional messages (receipts, alerts) skip rule 3: a customer who replied STOP to
promotions still gets their receipts. So "reachable" is what marketing needs; a customer
who fails only rule 3 is "reachable for transactional messages only".

The send policy (``campaigns.policy``) builds its first rules from ``reason_cases``, the
segments compiler's ``{"reachable": channel}`` from ``customers_where``, the customer list's
filter from ``CustomerQuerySet.reachable_on`` (which reads ``customers_where``), and the
profile page from ``overview``: all four read the constants below and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, models

from .models import ChannelKind, ChannelStatus

# Whether customer ``c`` has an address on a channel, as SQL.
ADDRESS_SQL = {
    ChannelKind.EMAIL: "{c}.email <> ''",
    ChannelKind.SMS: "{c}.phone <> ''",
    ChannelKind.WHATSAPP: "{c}.phone <> ''",
    ChannelKind.VOICE: "{c}.phone <> ''",
    ChannelKind.PUSH: "EXISTS (SELECT 1 FROM customers_device dv WHERE dv.customer_id = {c}.id)",
}

# Channel statuses that stop every message, and those that stop marketing only.
STOPS_EVERYTHING = (ChannelStatus.Status.BOUNCED.value,)
STOPS_MARKETING = (ChannelStatus.Status.COMPLAINED.value, ChannelStatus.Status.UNSUBSCRIBED.value)



class Reason(models.TextChoices):
    """Why a channel cannot reach a customer; the send policy suppresses with the same codes."""

    NO_ADDRESS = "no_address", "No address for this channel"
    BOUNCED = ChannelStatus.Status.BOUNCED.value, "Address bounced"
    COMPLAINED = ChannelStatus.Status.COMPLAINED.value, "Complained"
    UNSUBSCRIBED = ChannelStatus.Status.UNSUBSCRIBED.value, "Unsubscribed from the channel"
    CONSENT_REVOKED = "consent_revoked", "Consent revoked"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


def address_sql(channel: str, *, customer: str = "c") -> str:
    """SQL that is true when ``customer`` has an address for ``channel``.

    ``channel`` is either a channel name or a SQL expression holding one (a column).
    """
    if channel in ChannelKind.values:
        return ADDRESS_SQL[ChannelKind(channel)].format(c=customer)
    cases = " ".join(
        f"WHEN '{kind.value}' THEN {ADDRESS_SQL[kind].format(c=customer)}" for kind in ChannelKind
    )
    return f"(CASE {channel} {cases} ELSE false END)"


def reason_cases(*, channel: str, status: str, granted: str, transactional: str = "false", customer: str = "c") -> str:
    """``WHEN … THEN '<reason>'`` clauses naming the first rule a customer fails.

    For a ``CASE`` expression; ``status`` and ``granted`` are the channel status and the
    consent state's ``granted`` (either NULL when there is no row); ``transactional`` is a
    SQL boolean: true skips the marketing-only rule.
    """
    return f"""
        WHEN NOT {address_sql(channel, customer=customer)} THEN '{Reason.NO_ADDRESS.value}'
        WHEN {status} IN {_in(STOPS_EVERYTHING)} THEN {status}
        WHEN NOT {transactional} AND {status} IN {_in(STOPS_MARKETING)} THEN {status}
        WHEN {granted} = false THEN '{Reason.CONSENT_REVOKED.value}'
    """


def customers_where(channel: str, *, customer: str = "c") -> str:
    """A condition on ``customer`` (a customers_customer row) that holds when it is reachable.

    Set-based (anti-joins), for a segment over a million customers. ``channel`` must be a
    channel name: it is written into the SQL as a literal.
    """
    kind = ChannelKind(channel)
    stops = STOPS_EVERYTHING + STOPS_MARKETING
    return (
        f"({address_sql(kind.value, customer=customer)}"
        f" AND {customer}.id NOT IN (SELECT a.customer_id FROM customers_channelstatus a"
        f" WHERE a.channel = '{kind.value}' AND a.status IN {_in(stops)})"
        f" AND {customer}.id NOT IN (SELECT s.customer_id FROM customers_consentstate s"
        f" WHERE s.channel = '{kind.value}' AND NOT s.granted))"
    )


@dataclass(frozen=True)
class Reach:
    """One channel of one customer, as the profile page shows it."""

    channel: str
    label: str
    reason: str | None  # why marketing cannot reach them; None when it can
    transactional_reason: str | None  # the same for receipts and alerts

    @property
    def reachable(self) -> bool:
        return self.reason is None

    @property
    def transactional_only(self) -> bool:
        return self.reason is not None and self.transactional_reason is None

    @property
    def reason_label(self) -> str:
        return Reason(self.reason).label if self.reason else ""


def overview(customer_id: int) -> list[Reach]:
    """Each channel's reachability for one customer, in one query."""
    sql = f"""
        SELECT ch.channel,
               CASE {reason_cases(channel="ch.channel", status="cs.status", granted="st.granted")} END,
               CASE {reason_cases(channel="ch.channel", status="cs.status", granted="st.granted", transactional="true")} END
        FROM customers_customer c
        CROSS JOIN unnest(%s::text[]) WITH ORDINALITY AS ch(channel, position)
        LEFT JOIN customers_channelstatus cs ON cs.customer_id = c.id AND cs.channel = ch.channel
        LEFT JOIN customers_consentstate st ON st.customer_id = c.id AND st.channel = ch.channel
        WHERE c.id = %s
        ORDER BY ch.position
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(ChannelKind.values), customer_id])
        rows = cursor.fetchall()
    return [Reach(channel, ChannelKind(channel).label, reason, transactional) for channel, reason, transactional in rows]
