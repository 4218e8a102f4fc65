"""The webhook deliveries' event store (schema ``alert_webhooks``) and the translation of
its events into ``WebhookDeliveryAttempted`` on ``alert.events``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from tidemark_contracts import Envelope, Topic, event_message_id
from tidemark_contracts.alert import WebhookDeliveryAttempted
from tidemark_contracts.topics import ALERT_EVENTS
from tidemark_platform.eventstore import EventStoreApplication, Fence

from tidemark_alerts.webhooks.domain import Status, WebhookDelivery

PRODUCER = "alerts"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST, as it is recorded."""

    number: int
    status: Status
    response_status: int | None
    error: str | None
    attempted_at: datetime
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class DeliveryRef:
    delivery_id: UUID
    webhook_id: UUID
    organization_id: UUID
    alert_id: UUID
    environment_id: UUID | None
    change: str


class WebhookDeliveryApplication(EventStoreApplication):
    name = "alert_webhooks"

    def record_attempt(self, delivery: DeliveryRef, attempt: Attempt, fence: Fence) -> bool:
        """Record ``attempt`` (blocking: call it in a thread). ``fence`` runs in the same
        transaction and refuses the write when the deliverer no longer holds the delivery.
        False, with nothing written, when that attempt number is already recorded."""
        aggregate: WebhookDelivery
        if attempt.number == 1:
            aggregate = WebhookDelivery(
                delivery_id=delivery.delivery_id,
                webhook_id=delivery.webhook_id,
                organization_id=delivery.organization_id,
                alert_id=delivery.alert_id,
                environment_id=delivery.environment_id,
                change=delivery.change,
                status=attempt.status,
                response_status=attempt.response_status,
                error=attempt.error,
                attempted_at=attempt.attempted_at,
                next_attempt_at=attempt.next_attempt_at,
            )
        else:
            aggregate = self.repository.get(delivery.delivery_id)
            if aggregate.attempts != attempt.number - 1 or not aggregate.is_open:
                return False
            aggregate.attempted(
                status=attempt.status,
                response_status=attempt.response_status,
                error=attempt.error,
                attempted_at=attempt.attempted_at,
                next_attempt_at=attempt.next_attempt_at,
            )
        try:
            self.save(aggregate, fence=fence)
        except IntegrityError:
            return False
        return True

    def get_delivery(self, delivery_id: UUID) -> WebhookDelivery:
        delivery: WebhookDelivery = self.repository.get(delivery_id)
        return delivery

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """Every event of a delivery is one attempt: its version is the attempt number."""
        if isinstance(event, WebhookDelivery.FirstAttempted):
            webhook_id, organization_id = event.webhook_id, event.organization_id
            alert_id, environment_id, change = event.alert_id, event.environment_id, event.change
        elif isinstance(event, WebhookDelivery.Attempted):
            first: WebhookDelivery = self.repository.get(event.originator_id, version=1)
            webhook_id, organization_id = first.webhook_id, first.organization_id
            alert_id, environment_id, change = first.alert_id, first.environment_id, first.change
        else:
            return None
        message = WebhookDeliveryAttempted(
            delivery_id=event.originator_id,
            webhook_id=webhook_id,
            organization_id=organization_id,
            alert_id=alert_id,
            environment_id=environment_id,
            change=change,
            attempt=event.originator_version,
            status=event.status,
            response_status=event.response_status,
            error=event.error,
            attempted_at=event.attempted_at,
            next_attempt_at=event.next_attempt_at,
        )
        return ALERT_EVENTS, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=organization_id,
            environment_id=environment_id,
            message_id=event_message_id(event.originator_id, event.originator_version),
            aggregate_id=event.originator_id,
            aggregate_version=event.originator_version,
            causation_id=alert_id,
            occurred_at=event.timestamp,
        )
