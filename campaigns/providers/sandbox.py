"""Sandbox providers: record what would have been sent, send nothing.

The default for every channel in the demo and the tests. Each message becomes a
:class:`~campaigns.models.SandboxMessage` row keyed by delivery id, which is also how a
delivery left in ``sending`` by a crash is settled exactly: the row is there or it is not.
With ``SANDBOX_SIMULATE`` on (the demo), ``campaigns.simulation`` later plays delivery,
opens, clicks and conversions at plausible rates.
"""

from __future__ import annotations

import json

from django.db import connection

from .base import OutgoingMessage, Provider, SendResult


class SandboxProvider(Provider):
    name = "sandbox"
    supports_lookup = True

    def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        rows = [
            {"delivery_id": m.delivery_id, "channel": m.channel, "to": m.to,
             "rendered": {**m.content, "headers": m.headers} if m.headers else m.content}
            for m in messages
        ]
        # Autocommit: like a real provider, the sandbox has accepted the message once it answers.
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO campaigns_sandboxmessage (delivery_id, channel, "to", rendered, sent_at)
                SELECT r.delivery_id, r.channel, r."to", r.rendered, now()
                FROM jsonb_to_recordset(%s::jsonb) AS r(delivery_id bigint, channel text, "to" text, rendered jsonb)
                ON CONFLICT (delivery_id) DO NOTHING
                """,
                [json.dumps(rows)],
            )
        return [SendResult(m.delivery_id, True, provider_message_id=f"sandbox-{m.delivery_id}") for m in messages]

    def lookup(self, messages: list[OutgoingMessage]) -> dict[int, str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT delivery_id FROM campaigns_sandboxmessage WHERE delivery_id = ANY(%s)",
                [[m.delivery_id for m in messages]],
            )
            return {row[0]: f"sandbox-{row[0]}" for row in cursor.fetchall()}


class SandboxEmail(SandboxProvider):
    channel = "email"


class SandboxSMS(SandboxProvider):
    channel = "sms"


class SandboxWhatsApp(SandboxProvider):
    channel = "whatsapp"


class SandboxVoice(SandboxProvider):
    channel = "voice"


class SandboxPush(SandboxProvider):
    channel = "push"
