"""The envelope that carries every message on Kafka, and its (de)serialisation."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import Field

from tidemark_contracts.base import Message, UtcDatetime, WireModel, utc_now


class Envelope(WireModel):
    """Routing and audit metadata around one message.

    ``messageId`` is unique per message and stable across redelivery and re-publication
    (for domain events it is derived from the aggregate id and version), so any consumer
    can recognise a message it has already seen.
    """

    envelope_version: Literal[1] = 1
    message_id: uuid.UUID
    message_type: str
    message_version: int
    occurred_at: UtcDatetime = Field(default_factory=utc_now)
    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    aggregate_id: uuid.UUID | None = None
    aggregate_version: int | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    producer: str
    payload: dict[str, Any]

    @property
    def key(self) -> bytes:
        """The Kafka key: the environment id, so one environment's work stays ordered."""
        partition_key = self.environment_id or self.organization_id
        return str(partition_key).encode()

    def to_bytes(self) -> bytes:
        return json.dumps(
            self.model_dump(mode="json", by_alias=True), separators=(",", ":")
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)

    @classmethod
    def wrap(
        cls,
        message: Message,
        *,
        producer: str,
        organization_id: uuid.UUID,
        environment_id: uuid.UUID | None,
        message_id: uuid.UUID | None = None,
        aggregate_id: uuid.UUID | None = None,
        aggregate_version: int | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        occurred_at: Any = None,
    ) -> Envelope:
        return cls(
            message_id=message_id or uuid.uuid4(),
            message_type=message.message_type,
            message_version=message.version,
            occurred_at=occurred_at or utc_now(),
            organization_id=organization_id,
            environment_id=environment_id,
            aggregate_id=aggregate_id,
            aggregate_version=aggregate_version,
            correlation_id=correlation_id,
            causation_id=causation_id,
            producer=producer,
            payload=message.to_payload(),
        )


EVENT_ID_NAMESPACE = uuid.UUID("5b0f6f56-4a63-4a8e-9b1e-7d0c3f8f8d10")


def event_message_id(aggregate_id: uuid.UUID, aggregate_version: int) -> uuid.UUID:
    """A domain event's message id: the same every time the event is (re)published."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{aggregate_id}:{aggregate_version}")
