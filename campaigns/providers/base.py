"""The contract every provider implements.

The dispatcher saves a Delivery in ``sending`` before it calls a provider, then records
the outcome. A provider:

- sends a batch of :class:`OutgoingMessage` and returns one :class:`SendResult` per message,
  classifying each failure as permanent (the delivery fails with the provider's reason) or
  temporary (retried with backoff), either at once (``send_batch``) or in the background,
  answering when asked (``start_batch``);
- can say which messages of a batch it already accepted (``lookup``), so a delivery left in
  ``sending`` by a crashed worker is settled instead of sent twice;
- turns its webhooks into :class:`DeliveryEvent` objects, the one event type the delivery
  handler understands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class OutgoingMessage:
    delivery_id: int
    customer_id: int
    channel: str
    # email address, E.164 number, or for push the customer id (devices carry the tokens)
    to: str
    # Rendered content. email: subject, preheader, html, text · sms: body ·
    # whatsapp: template, variables, body · voice: text · push: title, body, link
    content: dict
    # Sent as the provider's idempotency key where it has one; stable across retries.
    idempotency_key: str
    headers: dict = field(default_factory=dict)
    # push only: (device id, device kind, token)
    devices: list[tuple[int, str, str]] = field(default_factory=list)
    marketing: bool = True
    # When the delivery was first claimed: lookups look no further back than this.
    claimed_at: datetime | None = None
    # A provider this delivery must go through (a journey's test mode pins the sandbox),
    # or "" for the channel's configured one.
    provider: str = ""


@dataclass
class SendResult:
    delivery_id: int
    ok: bool
    provider_message_id: str = ""
    error: str = ""
    permanent: bool = False
    # push: device ids whose tokens the push service says are dead
    dead_devices: list[int] = field(default_factory=list)
    # Seconds the provider asked us to wait (rate limiting), for a temporary error.
    retry_after: float | None = None


@dataclass
class DeliveryEvent:
    """Something a provider or a tracking endpoint reports about a delivery."""

    kind: str  # delivered, opened, clicked, bounced, complained, unsubscribed, failed
    occurred_at: datetime
    delivery_id: int | None = None
    provider: str = ""
    provider_message_id: str = ""
    # The provider's own event id: the same id twice is applied once.
    event_id: str = ""
    reason: str = ""
    url: str = ""


class ProviderError(Exception):
    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class Provider:
    """Base class. Subclasses set ``name`` and ``channel`` and implement ``send_one`` or ``send_batch``."""

    name = ""
    channel = ""
    # True when ``lookup`` can tell whether a message was already accepted.
    supports_lookup = False
    # True when ``start_batch`` returns before the provider answered (it sends from threads
    # of its own) and ``lookup`` finds every message it sent: the dispatcher then prepares
    # and records other batches meanwhile, and may die with two batches sent and unrecorded.
    sends_in_background = False

    def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        results = []
        for message in messages:
            try:
                provider_id = self.send_one(message)
            except ProviderError as exc:
                results.append(SendResult(message.delivery_id, False, error=str(exc), permanent=exc.permanent))
            else:
                results.append(SendResult(message.delivery_id, True, provider_message_id=provider_id))
        return results

    def start_batch(self, messages: list[OutgoingMessage]) -> Callable[[], list[SendResult]]:
        """Start sending ``messages``; returns a function that waits for their results.

        The default sends them at once, on the caller's thread (the sandbox writes through
        the caller's database connection). A provider that ``sends_in_background`` returns
        before the answers are in.
        """
        results = self.send_batch(messages)
        return lambda: results

    def send_one(self, message: OutgoingMessage) -> str:
        """Send one message; return the provider's message id or raise :class:`ProviderError`."""
        raise NotImplementedError

    def lookup(self, messages: list[OutgoingMessage]) -> dict[int, str]:
        """Delivery id → provider message id, for the messages the provider already accepted."""
        return {}

    def close(self) -> None:
        """Release connections; called when a dispatcher is done with the provider."""
