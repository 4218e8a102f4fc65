"""Tracked consumption: Kafka in, at-least-once, with no doubled effects.

FastStream acknowledges before processing unless told otherwise, which is at-most-once.
Every subscriber made here has a consumer group, acknowledges only after the handler
returns, and seeks back (NACK) when it raises, so a failure is retried rather than lost.
The handler gets the message's tracking position; writing it in the same transaction as
its effect is what makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from eventsourcing.persistence import Tracking
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import ValidationError
from tidemark_contracts import Envelope, Topic

from tidemark_platform.logging import get_logger

log = get_logger(__name__)

CONSUMED = Counter(
    "tidemark_messages_consumed_total",
    "Messages handled by a tracked consumer, by outcome",
    ["topic", "group", "outcome"],
)

Handler = Callable[[Envelope, Tracking], Awaitable[None]]


def tracking_of(message: KafkaMessage) -> Tracking:
    """The position of a Kafka record as a tracking record: ("topic:partition", offset+1).

    Offset + 1 is "the next offset to read", matching Kafka's own committed offsets.
    """
    record: Any = message.raw_message  # aiokafka's ConsumerRecord
    return Tracking(f"{record.topic}:{record.partition}", record.offset + 1)


def decode_envelope(raw: bytes) -> Envelope | None:
    try:
        return Envelope.from_bytes(raw)
    except ValidationError as exc:
        log.error("undecodable_message", error=str(exc)[:500])
        return None


def subscribe_tracked(
    broker: KafkaBroker,
    topic: Topic,
    group_id: str,
    handler: Handler,
    *,
    retry_delay_seconds: float = 1.0,
    max_poll_interval_ms: int = 300_000,
) -> None:
    """Register ``handler`` for ``topic`` in consumer group ``group_id``.

    A message that is not an envelope cannot become valid by retrying: it is logged,
    counted and skipped. Any other failure is retried after ``retry_delay_seconds``.
    """

    @broker.subscriber(
        topic.name,
        group_id=group_id,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll_interval_ms,
        title=f"{group_id}:{topic.name}",
        description=topic.description,
    )
    async def consume(message: KafkaMessage) -> None:
        envelope = decode_envelope(message.body)
        if envelope is None:
            CONSUMED.labels(topic.name, group_id, "undecodable").inc()
            return
        try:
            await handler(envelope, tracking_of(message))
        except Exception:
            CONSUMED.labels(topic.name, group_id, "failed").inc()
            log.exception("message_failed", topic=topic.name, message_type=envelope.message_type)
            await asyncio.sleep(retry_delay_seconds)
            raise
        CONSUMED.labels(topic.name, group_id, "handled").inc()
