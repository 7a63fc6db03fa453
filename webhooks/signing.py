"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

``webhook-signature`` is ``v1,`` and the base64 of HMAC-SHA256, keyed with the base64-decoded
secret (without its ``whsec_`` prefix), of ``"{webhook-id}.{webhook-timestamp}.{body}"``;
several signatures are separated by spaces, one per secret in use, so that a receiver
holding either the new or the previous secret during a rotation verifies the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

PREFIX = "whsec_"


def key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key(secret), signed, hashlib.sha256).digest()).decode()


def signatures(secrets: list[str], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one signature per secret, space-separated."""
    return " ".join(signature(secret, msg_id=msg_id, timestamp=timestamp, body=body) for secret in secrets)


def encode(payload) -> bytes:
    """The body as sent (and signed): compact JSON, UTF-8."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
