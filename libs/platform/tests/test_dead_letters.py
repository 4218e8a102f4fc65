"""On real Kafka: a message that keeps failing is parked and the partition goes on; parked
messages are listed and re-driven once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tidemark_contracts import Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_devstack import cli
from tidemark_platform.consumer import Delivery, NotYet, subscribe_tracked
from tidemark_platform.kafka import ensure_topics, make_broker

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3


@dataclass
class Consumer:
    """A tracked consumer of a fresh one-partition topic whose handler fails on demand."""

    topic: Topic
    group: str
    failing: set[str] = field(default_factory=set)  # heartbeat services that make it raise
    attempts: list[tuple[str, int]] = field(default_factory=list)  # (service, attempt)
    handled: list[str] = field(default_factory=list)  # message ids handled successfully
    waits: int = 0  # how often a "waits" heartbeat still finds its predecessor missing

    async def handle(self, beat: ServiceHeartbeat, delivery: Delivery) -> None:
        self.attempts.append((beat.service, delivery.attempt))
        if beat.service == "waits" and self.waits > 0:
            self.waits -= 1
            raise NotYet("the event before it has not arrived yet")
        if beat.service in self.failing:
            raise RuntimeError(f"{beat.service} cannot be handled now")
        self.handled.append(str(delivery.envelope.message_id))


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> AsyncIterator[Consumer]:
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(f"test.dlq.{suffix}", "dead-letter test", (ServiceHeartbeat,), partitions=1)
    await ensure_topics(kafka_bootstrap, [topic])
    state = Consumer(topic, f"dlq-{suffix}")
    broker = make_broker(kafka_bootstrap, f"dlq-test-{suffix}")
    subscribe_tracked(
        broker,
        topic,
        state.group,
        {ServiceHeartbeat: state.handle},
        service="dlq-test",
        max_attempts=MAX_ATTEMPTS,
        retry_delay_seconds=0.05,
    )
    await broker.start()
    try:
        yield state
    finally:
        await broker.stop()


def dead_letters(topic: str, reason: str) -> float:
    sample = REGISTRY.get_sample_value(
        "tidemark_dead_letters_total", {"topic": topic, "service": "dlq-test", "reason": reason}
    )
    return sample or 0.0


async def test_a_message_failing_every_attempt_is_parked_and_the_next_one_is_handled(
    consumer: Consumer, kafka_tools: Any
) -> None:
    key = str(uuid.uuid4()).encode()
    poison = kafka_tools.heartbeat("poison")
    good = kafka_tools.heartbeat("good")
    consumer.failing.add("poison")
    offsets = await kafka_tools.send_raw(
        consumer.topic.name,
        [(key, poison.to_bytes()), (key, good.to_bytes())],
        headers=[("trace", b"\x00\x01binary")],
    )

    await kafka_tools.wait_for(
        lambda: str(good.message_id) in consumer.handled, "the message after the poison one"
    )
    assert consumer.attempts[:MAX_ATTEMPTS] == [("poison", n) for n in range(1, MAX_ATTEMPTS + 1)]
    assert consumer.attempts[MAX_ATTEMPTS:] == [("good", 1)]

    [parked] = await kafka_tools.read_until(consumer.topic.dlq_name, lambda r: len(r) >= 1)
    assert parked.key == key
    assert parked.value == poison.to_bytes()
    headers = dict(parked.headers)
    assert headers["trace"] == b"\x00\x01binary"  # original headers, byte for byte
    assert headers["dlq.reason"] == b"handler_failed"
    assert headers["dlq.error"] == b"RuntimeError: poison cannot be handled now"
    assert headers["dlq.service"] == b"dlq-test"
    assert headers["dlq.group"] == consumer.group.encode()
    assert headers["dlq.attempts"] == str(MAX_ATTEMPTS).encode()
    assert headers["dlq.original-topic"] == consumer.topic.name.encode()
    assert headers["dlq.original-partition"] == b"0"
    assert headers["dlq.original-offset"] == str(offsets[0]).encode()
    assert dead_letters(consumer.topic.name, "handler_failed") == 1


async def test_a_message_waiting_for_an_earlier_one_is_retried_beyond_the_attempts(
    consumer: Consumer, kafka_tools: Any
) -> None:
    key = str(uuid.uuid4()).encode()
    waiting = kafka_tools.heartbeat("waits")
    consumer.waits = MAX_ATTEMPTS + 2
    await kafka_tools.send_raw(consumer.topic.name, [(key, waiting.to_bytes())])
    await kafka_tools.wait_for(
        lambda: str(waiting.message_id) in consumer.handled, "the message once its gap is filled"
    )
    # Delivered more often than MAX_ATTEMPTS allows a failing handler, and never parked.
    assert [s for s, _ in consumer.attempts] == ["waits"] * (MAX_ATTEMPTS + 3)
    assert dead_letters(consumer.topic.name, "handler_failed") == 0
    assert await kafka_tools.end_offset(consumer.topic.dlq_name) == 0


async def redrive_cli(*args: str) -> str:
    """Run ``tidemark-dev dlq ...`` and return what it printed on stdout."""
    import contextlib
    import io

    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["dlq", *args])

    status = await asyncio.to_thread(run)
    assert status == 0, out.getvalue()
    return out.getvalue()


async def test_parked_messages_are_listed_and_redriven_once(
    consumer: Consumer, kafka_tools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_tools.bootstrap)
    topic = consumer.topic.name
    first, second = kafka_tools.heartbeat("first"), kafka_tools.heartbeat("second")
    consumer.failing.update({"first", "second"})
    await kafka_tools.send_raw(topic, [(b"env-a", first.to_bytes()), (b"env-b", second.to_bytes())])
    await kafka_tools.read_until(consumer.topic.dlq_name, lambda r: len(r) >= 2)
    consumer.failing.clear()  # whatever made them fail is fixed

    listed = [
        json.loads(line) for line in (await redrive_cli("list", "--topic", topic)).splitlines()
    ]
    assert [(e["offset"], e["redriven"], e["reason"]) for e in listed] == [
        (0, False, "handler_failed"),
        (1, False, "handler_failed"),
    ]
    assert listed[0]["originalTopic"] == topic
    assert listed[0]["attempts"] == str(MAX_ATTEMPTS)
    assert "value" not in listed[0]

    # One record by its offset, out of order, then the rest.
    assert "1 record(s)" in await redrive_cli("redrive", "--topic", topic, "--offset", "1")
    await kafka_tools.wait_for(
        lambda: str(second.message_id) in consumer.handled, "the re-driven second message"
    )
    assert str(first.message_id) not in consumer.handled
    assert "1 record(s)" in await redrive_cli("redrive", "--topic", topic, "--all")
    await kafka_tools.wait_for(
        lambda: str(first.message_id) in consumer.handled, "the re-driven first message"
    )
    redriven = await kafka_tools.read_until(topic, lambda r: len(r) >= 4)
    assert [(r.key, r.value) for r in redriven[2:]] == [
        (b"env-b", second.to_bytes()),
        (b"env-a", first.to_bytes()),
    ]
    assert all(not k.startswith("dlq.") for r in redriven for k, _ in r.headers)

    # A second re-drive of the same records publishes nothing.
    end_before = await kafka_tools.end_offset(topic)
    assert "0 record(s)" in await redrive_cli("redrive", "--topic", topic, "--all")
    assert "0 record(s)" in await redrive_cli("redrive", "--topic", topic, "--offset", "0")
    assert await kafka_tools.end_offset(topic) == end_before == 4
    assert consumer.handled.count(str(first.message_id)) == 1
    assert consumer.handled.count(str(second.message_id)) == 1
    listed = [
        json.loads(line) for line in (await redrive_cli("list", "--topic", topic)).splitlines()
    ]
    assert [e["redriven"] for e in listed] == [True, True]
