"""Typed dispatch on FastStream's in-memory broker: decode, validate, route, park, log context.

Unit tests of one subscription; retries across redeliveries and the real dead-letter
topic are in test_dead_letters.py, on Kafka.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import REGISTRY
from tidemark_contracts import Envelope, Topic
from tidemark_contracts.backup import BackupStarted
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.consumer import Delivery, subscribe_tracked
from tidemark_platform.dead_letters import describe_error
from tidemark_platform.logging import get_logger

TOPIC = Topic("unit.dispatch", "unit tests", (ServiceHeartbeat, BackupStarted), partitions=1)
CLUSTER = "unit-cluster"
log = get_logger(__name__)


def heartbeat(service: str = "svc") -> ServiceHeartbeat:
    return ServiceHeartbeat(
        service=service,
        instance_id=uuid.uuid4(),
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        ready=True,
    )


def wrap(message: Any, correlation_id: uuid.UUID | None = None) -> Envelope:
    return Envelope.wrap(
        message,
        producer="unit",
        organization_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        correlation_id=correlation_id,
    )


def consumed(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "tidemark_messages_consumed_total",
        {"topic": TOPIC.name, "group": "unit", "outcome": outcome},
    )
    return value or 0.0


@dataclass
class Harness:
    broker: Any
    handled: list[tuple[Any, Delivery]] = field(default_factory=list)
    parked: list[KafkaMessage] = field(default_factory=list)
    failures: int = 0

    async def send(self, value: bytes, key: bytes = b"env-1") -> None:
        await self.broker.publish(value, TOPIC.name, key=key, headers={"origin": "unit"})


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    broker = KafkaBroker("localhost:1")
    state = Harness(broker)

    async def on_heartbeat(beat: ServiceHeartbeat, delivery: Delivery) -> None:
        state.handled.append((beat, delivery))
        if beat.service == "always-fails":
            state.failures += 1
            raise RuntimeError("cannot reach postgresql://runner:hunter2@db/x")

    subscribe_tracked(
        broker,
        TOPIC,
        "unit",
        {ServiceHeartbeat: on_heartbeat},
        service="unit-service",
        max_attempts=1,
        retry_delay_seconds=0,
        cluster_id=CLUSTER,
    )

    @broker.subscriber(TOPIC.dlq_name)
    async def on_dead_letter(message: KafkaMessage) -> None:
        state.parked.append(message)

    async with TestKafkaBroker(broker) as test_broker:
        state.broker = test_broker
        yield state


async def test_a_message_reaches_the_handler_of_its_type_validated_with_its_position(
    harness: Harness,
) -> None:
    beat = heartbeat()
    envelope = wrap(beat)
    await harness.send(envelope.to_bytes())
    [(message, delivery)] = harness.handled
    assert message == beat
    assert isinstance(message, ServiceHeartbeat)
    assert delivery.envelope == envelope
    assert delivery.attempt == 1
    assert delivery.tracking.application_name == f"{CLUSTER}/{TOPIC.name}:0"
    assert delivery.tracking.notification_id == 1  # offset 0 + 1: the next to read
    assert harness.parked == []


async def test_a_carried_type_without_a_handler_is_ignored_and_counted(harness: Harness) -> None:
    before = consumed("ignored")
    started = BackupStarted(
        backup_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )
    await harness.send(wrap(started).to_bytes())
    assert harness.handled == []
    assert harness.parked == []
    assert consumed("ignored") == before + 1


def _not_an_envelope() -> bytes:
    return b"password=hunter2 \xff not json"


def _unknown_type() -> bytes:
    envelope = wrap(heartbeat()).model_copy(update={"message_type": "backup.Teleported"})
    return envelope.to_bytes()


def _invalid_payload() -> bytes:
    envelope = wrap(heartbeat())
    payload = {**envelope.payload, "instanceId": "hunter2-is-not-a-uuid"}
    return envelope.model_copy(update={"payload": payload}).to_bytes()


@pytest.mark.parametrize(
    ("make_value", "reason"),
    [
        (_not_an_envelope, "undecodable"),
        (_unknown_type, "unknown_type"),
        (_invalid_payload, "invalid_payload"),
    ],
)
async def test_what_can_never_be_handled_is_parked_with_the_reason_and_not_the_payload(
    harness: Harness, make_value: Any, reason: str
) -> None:
    value = make_value()
    await harness.send(value, key=b"env-7")
    assert harness.handled == []
    [parked] = harness.parked
    record = parked.raw_message
    assert record.value == value
    assert record.key == b"env-7"
    headers = dict(parked.headers)
    assert headers["origin"] == "unit"
    assert headers["dlq.reason"] == reason
    assert headers["dlq.service"] == "unit-service"
    assert headers["dlq.group"] == "unit"
    assert headers["dlq.attempts"] == "1"
    assert headers["dlq.original-topic"] == TOPIC.name
    assert headers["dlq.original-partition"] == "0"
    assert headers["dlq.original-offset"] == "0"
    assert headers["dlq.error"]
    assert "hunter2" not in headers["dlq.error"]


async def test_a_handler_that_fails_its_last_attempt_parks_the_message(
    harness: Harness,
) -> None:
    await harness.send(wrap(heartbeat("always-fails")).to_bytes())
    assert harness.failures == 1
    [parked] = harness.parked
    headers = dict(parked.headers)
    assert headers["dlq.reason"] == "handler_failed"
    assert headers["dlq.attempts"] == "1"
    assert headers["dlq.error"].startswith("RuntimeError: cannot reach postgresql://runner:")
    assert "hunter2" not in headers["dlq.error"]


async def test_log_lines_about_a_message_carry_its_ids_and_only_while_it_is_handled() -> None:
    broker = KafkaBroker("localhost:1")
    seen: list[dict[str, Any]] = []

    async def on_heartbeat(beat: ServiceHeartbeat, delivery: Delivery) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))
        log.info("handling")

    subscribe_tracked(
        broker, TOPIC, "unit", {ServiceHeartbeat: on_heartbeat}, service="u", cluster_id=CLUSTER
    )
    correlation_id = uuid.uuid4()
    envelope = wrap(heartbeat(), correlation_id=correlation_id)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish(envelope.to_bytes(), TOPIC.name, key=b"k")
    assert seen[0]["correlation_id"] == str(correlation_id)
    assert seen[0]["message_id"] == str(envelope.message_id)
    assert seen[0]["message_type"] == ServiceHeartbeat.message_type
    assert seen[0]["topic"] == TOPIC.name
    [line] = [entry for entry in logs if entry["event"] == "handling"]
    assert line["correlation_id"] == str(correlation_id)
    assert line["message_id"] == str(envelope.message_id)
    after = structlog.contextvars.get_contextvars()
    assert "message_id" not in after
    assert "correlation_id" not in after


def test_a_handler_for_a_type_the_topic_does_not_carry_is_refused() -> None:
    async def on_other(message: Any, delivery: Delivery) -> None:
        return None

    from tidemark_contracts.backup import RequestBackup

    with pytest.raises(ValueError, match="carries no RequestBackup"):
        subscribe_tracked(
            KafkaBroker("localhost:1"), TOPIC, "unit", {RequestBackup: on_other}, service="u"
        )


def test_error_text_never_repeats_rejected_input_or_credentials() -> None:
    from pydantic import ValidationError

    try:
        ServiceHeartbeat.model_validate({"service": "s", "instanceId": "secret-hunter2"})
    except ValidationError as exc:
        text = describe_error(exc)
    assert "instanceId" in text
    assert "hunter2" not in text
    assert describe_error(RuntimeError("login failed password=hunter2 for x")) == (
        "RuntimeError: login failed password=[redacted] for x"
    )
    assert "hunter2" not in describe_error(
        RuntimeError(json.dumps({"token": "hunter2", "url": "https://u:hunter2@host/"}))
    )
    assert len(describe_error(RuntimeError("x" * 5000))) == 500
