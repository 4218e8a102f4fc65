"""The relay hands a batch to the producer at once and acknowledges what Kafka confirmed,
in log order, and no more."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tidemark_platform.kafka import make_broker
from tidemark_platform.relay import Outbound, Relay
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings


class ListSource:
    name = "test"

    def __init__(self, entries: list[Outbound]) -> None:
        self.entries = entries
        self.acknowledged: list[int] = []

    async def pending(self, limit: int) -> Sequence[Outbound]:
        done = set(self.acknowledged)
        return [e for e in self.entries if e.position not in done][:limit]

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        self.acknowledged.extend(e.position for e in entries)


async def test_a_batch_is_acknowledged_only_after_every_entry_is_confirmed() -> None:
    source = ListSource([Outbound(i, "t", b"k", b"v") for i in (1, 2, 3)])
    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[None]] = []

    async def publish(entry: Outbound) -> asyncio.Future[None]:
        answer: asyncio.Future[None] = loop.create_future()
        answers.append(answer)
        return answer

    relay = Relay(source, publish)
    round_ = asyncio.create_task(relay.publish_pending())
    await asyncio.sleep(0.05)
    assert len(answers) == 3, "the whole batch went to the producer without waiting"
    assert source.acknowledged == [], "nothing acknowledged before Kafka answered"
    answers[0].set_result(None)
    answers[2].set_result(None)
    await asyncio.sleep(0.05)
    assert source.acknowledged == []
    answers[1].set_result(None)
    assert await round_ == 3
    assert source.acknowledged == [1, 2, 3]


async def test_what_kafka_did_not_confirm_is_not_acknowledged_and_goes_out_again() -> None:
    source = ListSource([Outbound(i, "t", b"k", b"v") for i in (1, 2, 3)])
    loop = asyncio.get_running_loop()
    attempts: list[int] = []

    async def publish(entry: Outbound) -> asyncio.Future[None]:
        attempts.append(entry.position)
        answer: asyncio.Future[None] = loop.create_future()
        if len(attempts) == 2:
            answer.set_exception(RuntimeError("not leader for partition"))
        else:
            answer.set_result(None)
        return answer

    relay = Relay(source, publish)
    with pytest.raises(RuntimeError, match="not leader"):
        await relay.publish_pending()
    # The confirmed prefix is done with; from the failed entry on, all goes out again.
    assert source.acknowledged == [1]
    assert await relay.publish_pending() == 2
    assert attempts == [1, 2, 3, 2, 3]
    assert source.acknowledged == [1, 2, 3]


@pytest.mark.integration
async def test_the_runtimes_relay_puts_a_batch_on_kafka_in_order(
    kafka_bootstrap: str, database_url: str
) -> None:
    topic = f"test.relay.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    source = ListSource([Outbound(i, topic, b"same-key", f"v{i}".encode()) for i in range(1, 501)])
    settings = ServiceSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    broker = make_broker(kafka_bootstrap, "test-relay")
    relay = ServiceRuntime("test-relay", settings, broker).add_relay(source)
    await broker.start()
    try:
        while await relay.publish_pending():
            pass
    finally:
        await broker.stop()
    assert source.acknowledged == list(range(1, 501))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        while len(values) < 500:
            batch = await consumer.getmany(partition, timeout_ms=2000)
            assert batch, f"only {len(values)} of 500 records on {topic}"
            values += [r.value for r in batch[partition] if r.value is not None]
    finally:
        await consumer.stop()
    assert values == [f"v{i}".encode() for i in range(1, 501)]
