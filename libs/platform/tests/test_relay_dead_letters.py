"""On real Kafka: a relay entry Kafka refuses is parked, and the entries after it go out."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY
from tidemark_contracts import Topic
from tidemark_platform.kafka import ensure_topics, make_broker
from tidemark_platform.relay import Outbound
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings

pytestmark = pytest.mark.integration


class ListSource:
    def __init__(self, name: str, entries: list[Outbound]) -> None:
        self.name = name
        self.entries = entries
        self.acknowledged: list[int] = []

    async def pending(self, limit: int) -> Sequence[Outbound]:
        done = set(self.acknowledged)
        return [e for e in self.entries if e.position not in done][:limit]

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        self.acknowledged.extend(e.position for e in entries)


async def create_small_topic(bootstrap: str, name: str, max_message_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": str(max_message_bytes)},
                )
            ]
        )
    finally:
        await admin.close()


async def test_an_entry_kafka_refuses_is_parked_and_the_entries_after_it_are_published(
    kafka_bootstrap: str, database_url: str, kafka_tools: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(f"test.relay.{suffix}", "relay refusal test", (), partitions=1)
    await create_small_topic(kafka_bootstrap, topic.name, max_message_bytes=1024)
    await ensure_topics(kafka_bootstrap, [topic])  # its dead-letter topic, default size
    too_large = b"x" * 5000
    source = ListSource(
        f"relay-{suffix}",
        [
            Outbound(1, topic.name, b"k", b"first", {"message-type": "t.First"}),
            Outbound(2, topic.name, b"k", too_large, {"message-type": "t.Huge"}),
            Outbound(3, topic.name, b"k", b"third", {"message-type": "t.Third"}),
        ],
    )
    settings = ServiceSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    broker = make_broker(kafka_bootstrap, f"relay-test-{suffix}")
    runtime = ServiceRuntime("relay-test", settings, broker)
    relay = runtime.add_relay(source)  # the publishing every service's relay uses
    await broker.start()
    try:
        # Kafka refuses the request holding all three; sent again one at a time, only the
        # entry at fault is refused.
        for _ in range(3):
            await relay.publish_pending()
            if len(source.acknowledged) == 3:
                break
    finally:
        await broker.stop()

    assert source.acknowledged == [1, 2, 3]
    published = await kafka_tools.read_until(topic.name, lambda r: len(r) >= 2)
    assert [r.value for r in published] == [b"first", b"third"]
    [parked] = await kafka_tools.read_until(topic.dlq_name, lambda r: len(r) >= 1)
    assert parked.key == b"k"
    assert parked.value == too_large
    headers = dict(parked.headers)
    assert headers["message-type"] == b"t.Huge"
    assert headers["dlq.reason"] == b"refused_by_kafka"
    assert headers["dlq.error"].startswith(b"MessageSizeTooLargeError")
    assert headers["dlq.service"] == b"relay-test"
    assert headers["dlq.relay"] == source.name.encode()
    assert headers["dlq.relay-position"] == b"2"
    assert headers["dlq.original-topic"] == topic.name.encode()
    assert headers["dlq.attempts"] == b"1"
    assert (
        REGISTRY.get_sample_value(
            "tidemark_dead_letters_total",
            {"topic": topic.name, "service": "relay-test", "reason": "refused_by_kafka"},
        )
        == 1
    )
