"""Tracked, typed consumption: Kafka in, at-least-once, no doubled effects, no blocked partition.

A service registers plain functions per message type (``{RequestBackup: on_request_backup}``);
the platform decodes the envelope, validates the payload with the class the topic registry
names for its ``messageType``, and calls the function with the message and a ``Delivery``
(the envelope, the tracking position and the attempt). No handler looks at
``message_type`` itself.

FastStream acknowledges before processing unless told otherwise, which is at-most-once.
Every subscriber made here has a consumer group, acknowledges only after the handler
returns, and seeks back (NACK) when it raises, so a failure is retried rather than lost.
Writing ``Delivery.tracking`` in the same transaction as the effect is what makes
redelivery harmless.

A handler that raises ``NotYet`` (an event before its predecessor, say) is waited for, not
counted: it is retried with a capped back-off for as long as it takes and never parked.

Nothing blocks a partition forever: a record that is not an envelope, an envelope of a type
the topic does not carry, a payload that fails validation, or a message whose handler still
raises on its ``max_attempts``-th attempt is parked on ``<topic>.dlq`` (see
``dead_letters``) and then acknowledged. A service may instead *reject* an invalid payload
of a type it names (``rejecters``): a command whose body fails the contract but which says
enough to record its refusal (the backup it would have created ends ``failed``, saying why)
is recorded and acknowledged; what says too little is still parked, at once. A type the
topic carries but the service has no handler for is acknowledged and counted as ``ignored``.

Tracking names carry the Kafka cluster id: ``"<cluster id>/<topic>:<partition>"``. Offsets
mean something only within one cluster; a recreated cluster starts them at 0 again, and a
position recorded under the old cluster (say 5000) would make a tracking store reject, as
"already processed", every new message below it. Under a name of its own the new cluster's
positions start afresh. When the service's store holds positions for the same topic and
partition under another cluster id and none yet under this one (``positions``), the
consumer reports ``kafka_cluster_changed`` (an error log and
``tidemark_kafka_cluster_changes_total``) on assignment, so an operator learns that what
the old cluster held beyond those positions was never consumed. Once the partition is
consumed on the new cluster, the old positions are history and no longer reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from eventsourcing.persistence import Tracking
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import ValidationError
from tidemark_contracts import Envelope, Message, Topic

from tidemark_platform.dead_letters import (
    DEAD_LETTERS,
    Reason,
    dead_letter_headers,
    describe_error,
)
from tidemark_platform.kafka import cluster_id_of, send_record
from tidemark_platform.logging import get_logger

log = get_logger(__name__)

CONSUMED = Counter(
    "tidemark_messages_consumed_total",
    "Messages taken by a tracked consumer, by outcome "
    "(handled, rejected = an invalid payload whose refusal was recorded, ignored, "
    "failed = one failed attempt, dead_lettered)",
    ["topic", "group", "outcome"],
)
CLUSTER_CHANGES = Counter(
    "tidemark_kafka_cluster_changes_total",
    "Partitions whose stored positions belong to another Kafka cluster than the current one",
    ["topic", "group"],
)


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message to a handler."""

    envelope: Envelope
    tracking: Tracking  # the position to write in the same transaction as the effect
    attempt: int  # 1 on first delivery in this process


MessageHandler = Callable[[Any, Delivery], Awaitable[None]]
"""A handler: ``async def on_x(message: X, delivery: Delivery) -> None``."""

Rejecter = Callable[[Mapping[str, Any], str, Delivery], Awaitable[bool]]
"""Records the refusal of a payload that failed validation:
``async def on_invalid_x(payload, error, delivery) -> bool``, given the raw payload and the
validation error (described without the rejected values). True: recorded (with
``delivery.tracking``), the record is acknowledged; False: too little can be read to record
anything, the record is parked at once. Raising is a failed attempt, retried like a
handler's."""

PartitionsChanged = Callable[[list[int]], Awaitable[None]]
"""Told the partitions of the subscribed topic that this consumer was just assigned, or
that were just revoked from it (a service that owns work by partition follows them)."""

PositionLookup = Callable[[str], Awaitable[Mapping[str, int]]]
"""Given ``"<topic>:<partition>"``, the tracking names the service's store holds for it
(``"<cluster id>/<topic>:<partition>"``, or a bare legacy ``"<topic>:<partition>"``) with
their positions."""


def tracking_name(cluster_id: str, topic: str, partition: int) -> str:
    return f"{cluster_id}/{topic}:{partition}"


def split_tracking_name(name: str) -> tuple[str | None, str]:
    """``(cluster id, "<topic>:<partition>")``; the cluster id is None for legacy names."""
    cluster_id, slash, rest = name.rpartition("/")
    return (cluster_id, rest) if slash else (None, name)


def decode_envelope(raw: bytes) -> Envelope | None:
    """The envelope in ``raw``, or None (logged) when it is not one."""
    try:
        return Envelope.from_bytes(raw)
    except ValidationError as exc:
        log.error("undecodable_message", error=describe_error(exc))
        return None


def decode_message(topic: Topic, raw: bytes) -> Message | None:
    """The message in ``raw`` validated by the class ``topic`` names for its type, or None
    (logged) when it is none of the topic's: for subscribers that keep no position, where
    a bad record is skipped rather than parked (heartbeats, superseded by the next)."""
    envelope = decode_envelope(raw)
    message_class = topic.message_class(envelope.message_type) if envelope else None
    if envelope is None or message_class is None:
        return None
    try:
        return message_class.model_validate(envelope.payload)
    except ValidationError as exc:
        log.error("invalid_message", topic=topic.name, error=describe_error(exc))
        return None


class NotYet(Exception):
    """A handler's message cannot be handled yet: an earlier one it depends on has not
    arrived. The consumer retries it (capped back-off) however long it takes, and never
    parks it, since a dead letter would skip it for good."""


class _TrackedSubscription:
    """Decode, validate, dispatch, retry and park the records of one topic in one group."""

    def __init__(
        self,
        broker: KafkaBroker,
        topic: Topic,
        group_id: str,
        handlers: Mapping[type[Message], MessageHandler],
        *,
        service: str,
        max_attempts: int,
        retry_delay_seconds: float,
        positions: PositionLookup | None,
        cluster_id: str | None,
        rejecters: Mapping[type[Message], Rejecter] | None = None,
    ) -> None:
        unknown = [
            cls.__name__ for cls in [*handlers, *(rejecters or {})] if cls not in topic.messages
        ]
        if unknown:
            raise ValueError(f"{topic.name} carries no {', '.join(unknown)}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.broker = broker
        self.topic = topic
        self.group_id = group_id
        self.handlers = dict(handlers)
        self.rejecters = dict(rejecters or {})
        self.service = service
        self.max_attempts = max_attempts
        self.retry_delay_seconds = retry_delay_seconds
        self._positions = positions
        self._fixed_cluster_id = cluster_id
        self._cluster_id: str | None = cluster_id
        self._checked: set[tuple[str, int]] = set()
        # (partition, offset) -> (failed attempts, last error), for this process only.
        self._failures: dict[tuple[int, int], tuple[int, str]] = {}
        self._waits: dict[tuple[int, int], int] = {}

    # -- assignment ------------------------------------------------------------------

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._refresh_cluster_id()
            for tp in assigned:
                await self._check_positions(tp.topic, tp.partition)
        except Exception as exc:
            # Checked again on the partition's first record; never stop the consumer here.
            log.warning("position_check_failed", topic=self.topic.name, error=repr(exc))

    def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Another consumer may take these partitions: attempts start over there.
        gone = {tp.partition for tp in revoked if tp.topic == self.topic.name}
        for key in [k for k in self._failures if k[0] in gone]:
            del self._failures[key]
        for key in [k for k in self._waits if k[0] in gone]:
            del self._waits[key]
        self._checked -= {(self.topic.name, partition) for partition in gone}

    async def _refresh_cluster_id(self) -> str:
        if self._fixed_cluster_id is None:
            self._cluster_id = await cluster_id_of(self.broker)
        assert self._cluster_id is not None
        return self._cluster_id

    async def _check_positions(self, topic: str, partition: int) -> None:
        if (topic, partition) in self._checked:
            return
        cluster_id = self._cluster_id or await self._refresh_cluster_id()
        suffix = f"{topic}:{partition}"
        stored = await self._positions(suffix) if self._positions is not None else {}
        clusters = {split_tracking_name(name) for name in stored}
        if (cluster_id, suffix) in clusters:
            # Already consumed here on this cluster: a change, if any, was reported then.
            self._checked.add((topic, partition))
            return
        for name, position in stored.items():
            previous, rest = split_tracking_name(name)
            if rest != suffix:
                continue
            if previous is None:
                log.warning(
                    "kafka_position_without_cluster_id",
                    topic=topic,
                    partition=partition,
                    tracking_name=name,
                    position=position,
                )
                continue
            CLUSTER_CHANGES.labels(topic, self.group_id).inc()
            log.error(
                "kafka_cluster_changed",
                topic=topic,
                partition=partition,
                group=self.group_id,
                cluster_id=cluster_id,
                previous_cluster_id=previous,
                previous_position=position,
                detail="positions of this partition were recorded on another Kafka cluster; "
                "consuming the new cluster from its own positions; records the old "
                "cluster held beyond the previous position were not consumed here",
            )
        self._checked.add((topic, partition))

    # -- one record ------------------------------------------------------------------

    async def consume(self, message: KafkaMessage) -> None:
        record: Any = message.raw_message  # aiokafka's ConsumerRecord
        try:
            await self._check_positions(record.topic, record.partition)
        except Exception as exc:
            # A diagnosis, not a condition of handling: tried again on the next record.
            log.warning("position_check_failed", topic=record.topic, error=repr(exc))
        cluster_id = self._cluster_id or await self._refresh_cluster_id()
        tracking = Tracking(
            tracking_name(cluster_id, record.topic, record.partition), record.offset + 1
        )
        context = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            envelope = Envelope.from_bytes(record.value if record.value is not None else b"")
        except ValidationError as exc:
            with structlog.contextvars.bound_contextvars(**context):
                await self._park(record, Reason.UNDECODABLE, describe_error(exc), attempts=1)
            return
        with structlog.contextvars.bound_contextvars(
            **context,
            correlation_id=str(envelope.correlation_id) if envelope.correlation_id else None,
            message_id=str(envelope.message_id),
            message_type=envelope.message_type,
        ):
            await self._dispatch(record, envelope, tracking)

    async def _dispatch(self, record: Any, envelope: Envelope, tracking: Tracking) -> None:
        message_class = self.topic.message_class(envelope.message_type)
        if message_class is None:
            error = f"{self.topic.name} carries no message type {envelope.message_type!r}"
            await self._park(record, Reason.UNKNOWN_TYPE, describe_error(error), attempts=1)
            return
        handler = self.handlers.get(message_class)
        if handler is None:
            CONSUMED.labels(self.topic.name, self.group_id, "ignored").inc()
            log.debug("message_ignored")
            return
        run: Callable[[Delivery], Awaitable[bool]]
        invalid: str | None = None
        try:
            payload = message_class.model_validate(envelope.payload)
        except ValidationError as exc:
            invalid = describe_error(exc)
            rejecter = self.rejecters.get(message_class)
            if rejecter is None:
                await self._park(record, Reason.INVALID_PAYLOAD, invalid, attempts=1)
                return

            async def run(delivery: Delivery) -> bool:
                assert rejecter is not None
                assert invalid is not None
                return await rejecter(envelope.payload, invalid, delivery)
        else:

            async def run(delivery: Delivery) -> bool:
                await handler(payload, delivery)
                return True

        key = (record.partition, record.offset)
        failed, last_error = self._failures.get(key, (0, ""))
        if failed >= self.max_attempts:
            # Exhausted earlier; only parking it failed (Kafka away). Park, don't rerun.
            await self._park(record, Reason.HANDLER_FAILED, last_error, attempts=failed)
            del self._failures[key]
            return
        attempt = failed + 1
        try:
            recorded = await run(Delivery(envelope, tracking, attempt))
        except NotYet as exc:
            # Waiting for an earlier message (a gap a relay will fill): parking this one
            # would skip it for good, so it is retried for as long as the gap lasts.
            CONSUMED.labels(self.topic.name, self.group_id, "waiting").inc()
            waited = self._waits.get(key, 0) + 1
            self._waits[key] = waited
            log.warning("message_waits_for_an_earlier_one", waited=waited, error=str(exc))
            await asyncio.sleep(min(self.retry_delay_seconds * 2 ** min(waited - 1, 5), 30.0))
            raise  # NACK: FastStream seeks back to this record
        except Exception as exc:
            CONSUMED.labels(self.topic.name, self.group_id, "failed").inc()
            error = describe_error(exc)
            self._failures[key] = (attempt, error)
            if attempt >= self.max_attempts:
                log.exception("message_failed", attempt=attempt, max_attempts=self.max_attempts)
                await self._park(record, Reason.HANDLER_FAILED, error, attempts=attempt)
                del self._failures[key]
                return
            log.warning(
                "message_failed_will_retry",
                attempt=attempt,
                max_attempts=self.max_attempts,
                error=error,
            )
            # Doubling delays: an outage of the handler's database gets time to pass
            # before the message is parked (1 + 2 + 4 + 8 s with the defaults).
            await asyncio.sleep(min(self.retry_delay_seconds * 2 ** (attempt - 1), 30.0))
            raise  # NACK: FastStream seeks back to this record
        self._failures.pop(key, None)
        self._waits.pop(key, None)
        if not recorded:
            # A rejecter that could not read enough of the payload to record its refusal.
            await self._park(record, Reason.INVALID_PAYLOAD, invalid or "", attempts=attempt)
            return
        outcome = "handled" if invalid is None else "rejected"
        CONSUMED.labels(self.topic.name, self.group_id, outcome).inc()

    async def _park(self, record: Any, reason: Reason, error: str, *, attempts: int) -> None:
        """Publish ``record`` to the dead-letter topic; raises (so NACK) if Kafka refuses."""
        headers = dead_letter_headers(
            record.headers or (),
            reason=reason,
            error=error,
            service=self.service,
            group=self.group_id,
            attempts=attempts,
            original_topic=record.topic,
            original_partition=record.partition,
            original_offset=record.offset,
        )
        try:
            await send_record(self.broker, self.topic.dlq_name, record.key, record.value, headers)
        except Exception as exc:
            log.warning("dead_letter_failed", dlq=self.topic.dlq_name, error=repr(exc))
            await asyncio.sleep(self.retry_delay_seconds)
            raise  # NACK: the record comes again and is parked then
        DEAD_LETTERS.labels(self.topic.name, self.service, reason.value).inc()
        CONSUMED.labels(self.topic.name, self.group_id, "dead_lettered").inc()
        log.error(
            "message_dead_lettered",
            reason=reason.value,
            error=error,
            attempts=attempts,
            dlq=self.topic.dlq_name,
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        subscription: _TrackedSubscription,
        on_assigned: PartitionsChanged | None = None,
        on_revoked: PartitionsChanged | None = None,
    ) -> None:
        self._subscription = subscription
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._subscription.on_revoked(revoked)
        await self._tell(self._on_revoked, revoked, "revoked")

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._subscription.on_assigned(assigned)
        await self._tell(self._on_assigned, assigned, "assigned")

    async def _tell(
        self, callback: PartitionsChanged | None, partitions: list[TopicPartition], what: str
    ) -> None:
        if callback is None:
            return
        topic = self._subscription.topic.name
        try:
            await callback(sorted(tp.partition for tp in partitions if tp.topic == topic))
        except Exception:
            # A rebalance must go on: the service's callback logs and retries its own work.
            log.exception("partitions_callback_failed", topic=topic, change=what)


def subscribe_tracked(
    broker: KafkaBroker,
    topic: Topic,
    group_id: str,
    handlers: Mapping[type[Message], MessageHandler],
    *,
    service: str,
    max_attempts: int = 5,
    retry_delay_seconds: float = 1.0,
    max_poll_interval_ms: int = 300_000,
    positions: PositionLookup | None = None,
    cluster_id: str | None = None,
    rejecters: Mapping[type[Message], Rejecter] | None = None,
    on_assigned: PartitionsChanged | None = None,
    on_revoked: PartitionsChanged | None = None,
) -> None:
    """Consume ``topic`` in consumer group ``group_id``, calling ``handlers`` by message type.

    A handler that raises is retried after ``retry_delay_seconds``, doubling each time (at
    most 30 s), up to ``max_attempts`` attempts in all; then its message is parked on
    ``<topic>.dlq``. ``positions`` lets the
    consumer find positions its store recorded under another Kafka cluster (see the module
    docstring). ``cluster_id`` pins the cluster id instead of asking Kafka (for FastStream's
    in-memory test broker, which has none). ``rejecters`` record the refusal of invalid
    payloads of the types they name instead of parking them (see ``Rejecter``).
    ``on_assigned``/``on_revoked`` are told the topic's partitions this consumer gained or
    lost at each rebalance (after the consumer's own bookkeeping; an error is logged).
    """
    subscription = _TrackedSubscription(
        broker,
        topic,
        group_id,
        handlers,
        service=service,
        max_attempts=max_attempts,
        retry_delay_seconds=retry_delay_seconds,
        positions=positions,
        cluster_id=cluster_id,
        rejecters=rejecters,
    )

    @broker.subscriber(
        topic.name,
        group_id=group_id,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll_interval_ms,
        listener=_Listener(subscription, on_assigned, on_revoked),
        title=f"{group_id}:{topic.name}",
        description=topic.description,
    )
    async def consume(message: KafkaMessage) -> None:
        await subscription.consume(message)
