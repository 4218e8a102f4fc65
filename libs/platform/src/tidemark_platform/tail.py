"""Following a topic live, without a consumer group, and re-reading a stretch of it.

For ephemeral fan-out (the gateway's progress streams): every instance reads every
partition from the end, commits nothing and shares no partition with anyone, so each
instance sees every record that arrives while it runs. ``read_range`` re-reads what a
reconnecting client missed, by partition and offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from tidemark_platform.logging import get_logger

log = get_logger(__name__)

# A catch-up read is short: a few seconds of one partition's records at most.
READ_RANGE_SECONDS = 10.0


@dataclass(frozen=True)
class TailRecord:
    """One record of the followed topic, with where it is."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client and
    aiokafka's producers use) gives to ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _records(batch: dict[TopicPartition, list[object]]) -> list[TailRecord]:
    found = []
    for tp, items in batch.items():
        for record in items:
            found.append(
                TailRecord(
                    tp.partition,
                    record.offset,  # type: ignore[attr-defined]
                    record.key,  # type: ignore[attr-defined]
                    record.value,  # type: ignore[attr-defined]
                    record.timestamp,  # type: ignore[attr-defined]
                )
            )
    return found


class TopicTail:
    """One groupless consumer of every partition of ``topic``, starting at its end."""

    def __init__(self, bootstrap_servers: str, topic: str, *, client_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    @property
    def partitions(self) -> int:
        """How many partitions the topic has (0 until started)."""
        return len(self._partitions)

    def partition_for(self, key: bytes) -> int:
        if not self._partitions:
            raise RuntimeError("the tail is not started")
        return partition_of(key, len(self._partitions))

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
        )
        numbers = await self._partition_numbers()
        await consumer.start()
        try:
            self._partitions = [TopicPartition(self.topic, p) for p in numbers]
            consumer.assign(self._partitions)
            await consumer.seek_to_end(*self._partitions)
            # Resolve the end offsets now: positions are what a new stream starts from.
            for tp in self._partitions:
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def _partition_numbers(self) -> list[int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=10_000
        )
        await admin.start()
        try:
            # Every topic, not this one by name: naming a missing topic could create it.
            described = [t for t in await admin.describe_topics() if t["topic"] == self.topic]
        finally:
            await admin.close()
        if not described or not described[0]["partitions"]:
            raise RuntimeError(f"topic {self.topic} does not exist")
        return sorted(int(p["partition"]) for p in described[0]["partitions"])

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def position(self, partition: int) -> int:
        """The offset of the next record of ``partition`` that ``batches`` will yield.

        Read between two batches (nothing awaits in between), it is exactly where live
        delivery continues: every record at or past it is still to come.
        """
        if self._consumer is None:
            raise RuntimeError("the tail is not started")
        return int(await self._consumer.position(TopicPartition(self.topic, partition)))

    async def batches(self, timeout_ms: int = 500) -> AsyncIterator[list[TailRecord]]:
        """Records as they arrive, in offset order within each partition."""
        if self._consumer is None:
            raise RuntimeError("the tail is not started")
        while True:
            batch = await self._consumer.getmany(timeout_ms=timeout_ms)
            if batch:
                yield _records(batch)

    async def read_range(
        self, partition: int, start: int, end: int, *, max_seconds: float = READ_RANGE_SECONDS
    ) -> list[TailRecord]:
        """Every record of ``partition`` from offset ``start`` up to (not including)
        ``end``, with a short-lived consumer of its own; records that retention already
        removed are simply not there. Bounded by ``max_seconds``: past it, ``TimeoutError``
        (the caller decides what a client gets instead), its consumer stopped."""
        if start >= end:
            return []
        tp = TopicPartition(self.topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-catch-up",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            found: list[TailRecord] = []
            async with asyncio.timeout(max_seconds):
                while await consumer.position(tp) < end:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    found.extend(r for r in _records(batch) if r.offset < end)
            return found
        finally:
            await consumer.stop()
