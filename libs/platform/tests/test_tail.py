"""TopicTail on real Kafka: it follows from the end, knows where each key goes, and
re-reads an exact stretch of a partition."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from tidemark_contracts import Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.kafka import ensure_topics
from tidemark_platform.tail import TailRecord, TopicTail

pytestmark = pytest.mark.integration


async def new_topic(bootstrap: str, partitions: int = 6) -> str:
    name = f"test.tail.{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        bootstrap,
        [Topic(name, "tail test", (ServiceHeartbeat,), partitions=partitions)],
        dead_letters=False,
    )
    return name


async def send(bootstrap: str, topic: str, keys: list[bytes]) -> list[tuple[int, int]]:
    """Publish one record per key (value = key); (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for key in keys:
            metadata = await producer.send_and_wait(topic, key, key=key)
            sent.append((metadata.partition, metadata.offset))
        return sent
    finally:
        await producer.stop()


async def collect(tail: TopicTail, n: int) -> list[TailRecord]:
    found: list[TailRecord] = []
    async with asyncio.timeout(30):
        async for batch in tail.batches(timeout_ms=200):
            found.extend(batch)
            if len(found) >= n:
                return found
    raise AssertionError("unreachable")


async def test_the_tail_starts_at_the_end_and_knows_each_keys_partition(
    kafka_bootstrap: str,
) -> None:
    topic = await new_topic(kafka_bootstrap)
    await send(kafka_bootstrap, topic, [b"before-1", b"before-2"])
    tail = TopicTail(kafka_bootstrap, topic, client_id="test-tail")
    await tail.start()
    try:
        assert tail.partitions == 6
        keys = [str(uuid.uuid4()).encode() for _ in range(30)]
        sent = await send(kafka_bootstrap, topic, keys)
        assert len({p for p, _ in sent}) > 1
        # What the producer's default partitioner chose, computed without asking Kafka.
        assert [tail.partition_for(k) for k in keys] == [p for p, _ in sent]
        found = await collect(tail, len(keys))
        # Only what came after the start, each at its partition and offset.
        assert sorted((r.partition, r.offset, r.key) for r in found) == sorted(
            (p, o, k) for (p, o), k in zip(sent, keys, strict=True)
        )
        for partition in range(6):
            ends = [o for p, o in sent if p == partition]
            if ends:
                assert await tail.position(partition) == max(ends) + 1
    finally:
        await tail.stop()


async def test_read_range_reads_exactly_one_stretch_of_a_partition(kafka_bootstrap: str) -> None:
    topic = await new_topic(kafka_bootstrap, partitions=1)
    keys = [f"k{i}".encode() for i in range(10)]
    await send(kafka_bootstrap, topic, keys)
    tail = TopicTail(kafka_bootstrap, topic, client_id="test-tail")
    await tail.start()
    try:
        assert await tail.position(0) == 10
        stretch = await tail.read_range(0, 3, 7)
        assert [(r.offset, r.value) for r in stretch] == [(i, keys[i]) for i in range(3, 7)]
        assert await tail.read_range(0, 7, 7) == []
    finally:
        await tail.stop()


async def test_a_tail_refuses_a_topic_that_does_not_exist(kafka_bootstrap: str) -> None:
    tail = TopicTail(kafka_bootstrap, f"test.tail.missing.{uuid.uuid4().hex}", client_id="t")
    with pytest.raises(RuntimeError, match="does not exist"):
        await tail.start()
    with pytest.raises(RuntimeError, match="not started"):
        tail.partition_for(b"k")


async def test_a_read_range_that_cannot_finish_in_time_raises_timeout_error(
    kafka_bootstrap: str,
) -> None:
    topic = await new_topic(kafka_bootstrap, partitions=1)
    await send(kafka_bootstrap, topic, [b"k0", b"k1"])
    tail = TopicTail(kafka_bootstrap, topic, client_id="test-tail")
    await tail.start()
    try:
        # Records past the partition's end never come: the read gives up at its bound
        # (the caller falls back to something else), and does not return a short stretch.
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await tail.read_range(0, 0, 5, max_seconds=1.0)
        assert asyncio.get_running_loop().time() - started < 8
        # The tail itself is unaffected.
        assert [r.offset for r in await tail.read_range(0, 0, 2, max_seconds=10.0)] == [0, 1]
    finally:
        await tail.stop()
