"""The webhook contract: what a receiver gets, and how it checks that Tidemark sent it.

Each alert change is POSTed as JSON (``WebhookPayload``) with these headers:

- ``Tidemark-Signature: t=<unix seconds>,v1=<hex>``: ``v1`` is HMAC-SHA256, keyed with the
  webhook's signing secret, over ``f"{t}.".encode() + body`` (the raw body bytes). A
  receiver recomputes it, compares in constant time, and refuses a ``t`` more than
  ``REPLAY_WINDOW_SECONDS`` away from its own clock, so a captured request cannot be
  replayed later. ``verify_signature`` does all of that.
- ``Tidemark-Delivery``: the delivery id, the same on every retry of one change (a receiver
  deduplicates by it); ``Tidemark-Event``: the change (``alert.raised`` ...).

Any 2xx answer is a delivery; anything else (or no answer within the timeout) is retried
with exponential backoff and jitter for a bounded time. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import ClassVar, Literal

from tidemark_contracts.alert import AlertKind, AlertSeverity
from tidemark_contracts.base import UtcDatetime, WireModel

SIGNATURE_HEADER = "Tidemark-Signature"
DELIVERY_HEADER = "Tidemark-Delivery"
EVENT_HEADER = "Tidemark-Event"
REPLAY_WINDOW_SECONDS = 300

WebhookEvent = Literal[
    "alert.raised", "alert.repeated", "alert.resolved", "alert.read", "alert.dismissed"
]


class AlertResource(WireModel):
    """The Alert as API.md shapes it (plus ``destinationId``), as it stands after the change."""

    id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID | None = None
    environment_id: uuid.UUID | None = None
    backup_id: uuid.UUID | None = None
    restore_id: uuid.UUID | None = None
    destination_id: uuid.UUID | None = None
    kind: AlertKind
    severity: AlertSeverity
    title: str
    message: str
    occurrences: int
    created_at: UtcDatetime
    last_seen_at: UtcDatetime
    read_at: UtcDatetime | None = None
    dismissed_at: UtcDatetime | None = None
    resolved_at: UtcDatetime | None = None


class WebhookPayload(WireModel):
    """The body of one webhook POST."""

    schema_version: ClassVar[int] = 1
    id: uuid.UUID  # the delivery id (also in the Tidemark-Delivery header)
    type: WebhookEvent
    version: Literal[1] = 1
    webhook_id: uuid.UUID
    occurred_at: UtcDatetime
    alert: AlertResource


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Tidemark-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class SignatureError(ValueError):
    """The request was not signed by the holder of the secret, or not recently."""


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = REPLAY_WINDOW_SECONDS,
) -> int:
    """Check a ``Tidemark-Signature`` header; answers its timestamp, or raises
    ``SignatureError``. Every ``v1=`` given is tried (several appear while a secret is
    rotated)."""
    if not header:
        raise SignatureError("no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("the signature header has no t= or no v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("the signature's timestamp is outside the replay window")
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match")
    return timestamp
