"""Messages of the alerts context: the events of the ``Alert`` aggregate (owned by the
alerts service), the commands that mark an alert read or dismissed, and the record of each
webhook delivery attempt.

An alert is one *episode* of a condition on a subject (a failing environment's backups, a
destination that cannot be reached, ...): raised once, repeated while it stays open
(``occurrences``, ``lastSeenAt``), resolved by a later success of the same kind on the same
subject. A condition that returns after its alert was resolved opens a new alert.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from tidemark_contracts.base import Message, UtcDatetime

AlertKind = Literal[
    "backup_failed",
    "restore_failed",
    "schedule_missed",
    "wal_archiving_stalled",
    "backup_cleanup_failed",
    "destination_unreachable",
]
ALERT_KINDS: tuple[str, ...] = (
    "backup_failed",
    "restore_failed",
    "schedule_missed",
    "wal_archiving_stalled",
    "backup_cleanup_failed",
    "destination_unreachable",
)
AlertSeverity = Literal["info", "warning", "critical"]
DeliveryStatus = Literal["delivered", "retrying", "failed"]


class AlertRaised(Message):
    """Event: a condition opened a new alert. ``subject`` names what the alert is about
    (``environment:<id>``, ``backup:<id>``, ``destination:<id>``), so a repetition finds
    the open alert. The links (environment, backup, restore, destination) are those of
    the occurrence that raised it; ``title`` and ``message`` say what happened and what
    to do, never with a credential or a path of a runner's machine."""

    message_type: ClassVar[str] = "alert.AlertRaised"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID | None = None
    environment_id: uuid.UUID | None = None
    backup_id: uuid.UUID | None = None
    restore_id: uuid.UUID | None = None
    destination_id: uuid.UUID | None = None
    kind: AlertKind
    severity: AlertSeverity
    subject: str
    title: str
    message: str
    raised_at: UtcDatetime


class AlertRepeated(Message):
    """Event: the condition of an open alert happened again. ``occurrences`` is the new
    total; the links, title and message are those of the latest occurrence."""

    message_type: ClassVar[str] = "alert.AlertRepeated"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    backup_id: uuid.UUID | None = None
    restore_id: uuid.UUID | None = None
    title: str
    message: str
    occurrences: int = Field(ge=2)
    last_seen_at: UtcDatetime


class AlertResolved(Message):
    """Event: a later success of the same kind on the same subject ended the alert; it
    stays listed, with ``resolvedAt``. ``reason`` says what succeeded."""

    message_type: ClassVar[str] = "alert.AlertResolved"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    reason: str
    resolved_at: UtcDatetime


class AlertRead(Message):
    """Event: a user marked the alert read (the first time only; marking it again has
    no effect)."""

    message_type: ClassVar[str] = "alert.AlertRead"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    read_by: str
    read_at: UtcDatetime


class AlertDismissed(Message):
    """Event: a user dismissed the alert (the first time only)."""

    message_type: ClassVar[str] = "alert.AlertDismissed"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    dismissed_by: str
    dismissed_at: UtcDatetime


class MarkAlertRead(Message):
    """Command: mark the alert read. ``requestedAt`` becomes ``readAt`` when it is the
    first time, so the gateway's answer and the recorded event agree."""

    message_type: ClassVar[str] = "alert.MarkAlertRead"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    requested_by: str
    requested_at: UtcDatetime


class DismissAlert(Message):
    """Command: dismiss the alert; ``requestedAt`` becomes ``dismissedAt`` the first time."""

    message_type: ClassVar[str] = "alert.DismissAlert"
    version: Literal[1] = 1
    alert_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    requested_by: str
    requested_at: UtcDatetime


class WebhookDeliveryAttempted(Message):
    """Event: one attempt at POSTing an alert change to a webhook. ``deliveryId`` is the
    same for every attempt at one change (receivers deduplicate by it); ``status`` is
    ``delivered`` (a 2xx answer), ``retrying`` (failed, another attempt at
    ``nextAttemptAt``) or ``failed`` (failed, and no further attempt). ``error`` says why,
    never with the signing secret."""

    message_type: ClassVar[str] = "alert.WebhookDeliveryAttempted"
    version: Literal[1] = 1
    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    organization_id: uuid.UUID
    alert_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    change: str
    attempt: int = Field(ge=1)
    status: DeliveryStatus
    response_status: int | None = None
    error: str | None = None
    attempted_at: UtcDatetime
    next_attempt_at: UtcDatetime | None = None
