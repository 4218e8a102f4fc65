"""Webhook deliveries without I/O: the ``WebhookDelivery`` aggregate (one per delivery id:
one alert change for one webhook) recording each attempt, and the retry rule.

Every event of the aggregate is an attempt, so each one is published as a
``WebhookDeliveryAttempted`` and readers see gap-free versions (attempt n is version n).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from eventsourcing.domain import Aggregate, event

Status = Literal["delivered", "retrying", "failed"]


def delivery_id(webhook_id: uuid.UUID, event_id: uuid.UUID) -> uuid.UUID:
    """One per (webhook, alert event), the same however often the event arrives:
    ``uuid5(webhook_id, str(event_id))``, as the issue's interfaces fix it."""
    return uuid.uuid5(webhook_id, str(event_id))


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_delay_seconds: float
    retry_for_seconds: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1-based): the exponential delay
        ``min(max, base * 2^(attempt-1))`` with *equal jitter*: a uniform draw from its
        upper half. Receivers that failed together spread out, and no retry comes
        sooner than half the planned delay."""
        planned = min(self.max_delay_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 62))
        draw: float = (rng or random).uniform(0.5, 1.0)
        return planned * draw

    def after_failure(
        self, attempt: int, created_at: datetime, now: datetime, rng: random.Random | None = None
    ) -> datetime | None:
        """When to try again after failed attempt ``attempt``; None when that would be later
        than ``retry_for`` after the change: the delivery has failed."""
        next_at = now + timedelta(seconds=self.delay(attempt, rng))
        if next_at > created_at + timedelta(seconds=self.retry_for_seconds):
            return None
        return next_at


class WebhookDelivery(Aggregate):
    """The attempts at POSTing one alert change to one webhook (its id is the delivery id)."""

    class FirstAttempted(Aggregate.Created):
        delivery_id: uuid.UUID
        webhook_id: uuid.UUID
        organization_id: uuid.UUID
        alert_id: uuid.UUID
        environment_id: uuid.UUID | None
        change: str
        status: str
        response_status: int | None
        error: str | None
        attempted_at: datetime
        next_attempt_at: datetime | None

    class Attempted(Aggregate.Event):
        status: str
        response_status: int | None
        error: str | None
        attempted_at: datetime
        next_attempt_at: datetime | None

    @staticmethod
    def create_id(delivery_id: uuid.UUID) -> uuid.UUID:
        return delivery_id

    @event(FirstAttempted)
    def __init__(
        self,
        *,
        delivery_id: uuid.UUID,
        webhook_id: uuid.UUID,
        organization_id: uuid.UUID,
        alert_id: uuid.UUID,
        environment_id: uuid.UUID | None,
        change: str,
        status: str,
        response_status: int | None,
        error: str | None,
        attempted_at: datetime,
        next_attempt_at: datetime | None,
    ) -> None:
        self.delivery_id = delivery_id
        self.webhook_id = webhook_id
        self.organization_id = organization_id
        self.alert_id = alert_id
        self.environment_id = environment_id
        self.change = change
        self.status = status

    @property
    def attempts(self) -> int:
        """Attempts made so far: every event of the aggregate is one."""
        return int(self.version)

    @property
    def is_open(self) -> bool:
        return self.status == "retrying"

    def attempted(
        self,
        *,
        status: Status,
        response_status: int | None,
        error: str | None,
        attempted_at: datetime,
        next_attempt_at: datetime | None,
    ) -> None:
        """Record the next attempt; refused once delivered or failed."""
        if not self.is_open:
            raise DeliveryClosed(f"delivery {self.id} is {self.status}: no further attempt")
        self._attempted(
            status=status,
            response_status=response_status,
            error=error,
            attempted_at=attempted_at,
            next_attempt_at=next_attempt_at,
        )

    @event(Attempted)
    def _attempted(
        self,
        *,
        status: str,
        response_status: int | None,
        error: str | None,
        attempted_at: datetime,
        next_attempt_at: datetime | None,
    ) -> None:
        self.status = status


class DeliveryClosed(Exception):
    """An attempt at a delivery that is already delivered or failed."""
