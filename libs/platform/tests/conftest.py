"""Helpers for the platform's tests on real Kafka: a plain client beside the platform.

A fixture (``kafka_tools``) rather than a module to import: tests are imported with
``--import-mode=importlib``, which puts no test directory on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from tidemark_contracts import Envelope
from tidemark_contracts.service import ServiceHeartbeat

Record = ConsumerRecord[Any, Any]


class KafkaTools:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    @staticmethod
    def heartbeat(service: str, environment_id: uuid.UUID | None = None) -> Envelope:
        beat = ServiceHeartbeat(
            service=service,
            instance_id=uuid.uuid4(),
            started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
            at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
            ready=True,
        )
        return Envelope.wrap(
            beat,
            producer="test",
            organization_id=uuid.uuid4(),
            environment_id=environment_id or uuid.uuid4(),
        )

    async def send_raw(
        self,
        topic: str,
        records: list[tuple[bytes, bytes]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> list[int]:
        """Publish (key, value) records with a plain producer; returns their offsets."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            offsets = []
            for key, value in records:
                metadata = await producer.send_and_wait(topic, value, key=key, headers=headers)
                offsets.append(metadata.offset)
            return offsets
        finally:
            await producer.stop()

    async def read_until(
        self, topic: str, done: Callable[[list[Record]], bool], within: float = 60.0
    ) -> list[Record]:
        """Every record of ``topic`` from its start, read until ``done(records)`` holds."""
        # No group: the consumer takes every partition, from the start.
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        records: list[Record] = []
        try:
            deadline = asyncio.get_running_loop().time() + within
            while not done(records):
                assert asyncio.get_running_loop().time() < deadline, (
                    f"{topic}: condition not met in {within}s; read {len(records)} record(s)"
                )
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()

    async def end_offset(self, topic: str, partition: int = 0) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            return int((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()

    @staticmethod
    async def wait_for(condition: Callable[[], bool], what: str, within: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


@pytest.fixture
def kafka_tools(kafka_bootstrap: str) -> KafkaTools:
    return KafkaTools(kafka_bootstrap)
