"""The relay publishes in order, pipelines a batch, acknowledges only what Kafka confirmed,
and survives outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

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


def entries(n: int) -> list[Outbound]:
    return [Outbound(i, "topic", b"k", f"v{i}".encode()) for i in range(1, n + 1)]


async def test_entries_are_published_in_order_and_acknowledged_after() -> None:
    source = ListSource(entries(5))
    published: list[int] = []

    async def publish(entry: Outbound) -> None:
        assert entry.position not in source.acknowledged
        published.append(entry.position)

    relay = Relay(source, publish, batch_size=2)
    while await relay.publish_pending():
        pass
    assert published == [1, 2, 3, 4, 5]
    assert source.acknowledged == [1, 2, 3, 4, 5]


async def test_entries_without_a_topic_are_skipped_but_acknowledged() -> None:
    source = ListSource([Outbound(1, None), *entries(2)[1:]])
    published: list[int] = []

    async def publish(entry: Outbound) -> None:
        published.append(entry.position)

    await Relay(source, publish).publish_pending()
    assert published == [2]
    assert source.acknowledged == [1, 2]


async def test_a_failed_publish_is_retried_and_nothing_is_lost() -> None:
    source = ListSource(entries(3))
    published: list[int] = []
    failures = iter([False, True, True, False, False, False, False])

    async def publish(entry: Outbound) -> None:
        if next(failures):
            raise ConnectionError("kafka is down")
        published.append(entry.position)

    relay = Relay(source, publish, idle_seconds=0.01, max_backoff_seconds=0.05)
    task = asyncio.create_task(relay.run())
    for _ in range(200):
        if len(source.acknowledged) == 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert source.acknowledged == [1, 2, 3]
    # Entry 1 was confirmed before entry 2 failed: it is acknowledged and not sent again;
    # nothing after the failed entry went out before it.
    assert published == [1, 2, 3]
    assert relay.healthy


async def run_until(relay: Relay, condition: Any, rounds: int = 400) -> None:
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(rounds):
            if condition():
                return
            await asyncio.sleep(0.01)
    finally:
        task.cancel()


async def test_a_round_that_never_gets_an_answer_is_abandoned_and_sent_again_renewed() -> None:
    # A producer wedged by a broker restart awaits its own futures forever: the round is
    # given up after its bound, the producer renewed, and nothing is lost or skipped.
    source = ListSource(entries(3))
    published: list[int] = []
    renewals: list[int] = []
    wedged = True

    async def publish(entry: Outbound) -> None:
        if wedged and entry.position == 2:
            await asyncio.Event().wait()  # no answer, ever
        published.append(entry.position)

    async def renew() -> None:
        nonlocal wedged
        renewals.append(1)
        wedged = False

    relay = Relay(
        source,
        publish,
        idle_seconds=0.01,
        max_backoff_seconds=0.05,
        on_refused=renew,
        round_timeout_seconds=0.2,
    )
    await run_until(relay, lambda: len(source.acknowledged) == 3)
    assert source.acknowledged == [1, 2, 3]
    # Entry 1 was handed over but not confirmed when the round was abandoned: it goes out
    # again (at least once; every consumer absorbs a repeat), before 2 and in order.
    assert published == [1, 1, 2, 3]
    assert renewals == [1]
    assert relay.healthy


async def test_failures_that_outlast_a_round_get_a_new_producer() -> None:
    # A producer left stale by a broker restart keeps failing where a new one would not.
    source = ListSource(entries(2))
    renewals: list[int] = []
    stale = True

    async def publish(entry: Outbound) -> None:
        if stale:
            raise ConnectionError("a stale producer")

    async def renew() -> None:
        nonlocal stale
        renewals.append(1)
        stale = False

    relay = Relay(
        source,
        publish,
        idle_seconds=0.01,
        max_backoff_seconds=0.05,
        on_refused=renew,
        round_timeout_seconds=0.3,
    )
    await run_until(relay, lambda: len(source.acknowledged) == 2)
    assert source.acknowledged == [1, 2]
    assert renewals == [1]


async def test_an_entry_that_keeps_timing_out_is_never_parked_on_a_guess() -> None:
    # Kafka answers other requests (its cluster ping works) but this entry times out, as
    # with too few in-sync replicas: parking it would leave a gap every projection waits
    # on, so the log waits instead, not healthy, until Kafka takes it.
    source = ListSource(entries(3))
    attempts: list[int] = []

    async def publish(entry: Outbound) -> None:
        attempts.append(entry.position)
        if entry.topic == "topic.dlq" or (entry.position == 2 and len(attempts) < 30):
            raise TimeoutError("not enough in-sync replicas")

    relay = Relay(source, publish, idle_seconds=0.01, max_backoff_seconds=0.01)
    await run_until(relay, lambda: len(attempts) >= 20)
    assert source.acknowledged == [1], "nothing after the entry, and the entry not parked"
    assert not relay.healthy
    await run_until(relay, lambda: source.acknowledged[-1:] == [3])
    assert source.acknowledged == [1, 2, 3]
    assert relay.healthy


async def test_nothing_is_parked_while_kafka_is_away() -> None:
    source = ListSource(entries(2))
    attempts: list[int] = []

    async def publish(entry: Outbound) -> None:
        attempts.append(entry.position)
        raise ConnectionError("kafka is down")

    relay = Relay(source, publish, idle_seconds=0.01, max_backoff_seconds=0.01)
    await run_until(relay, lambda: len(attempts) >= 20)
    assert len(attempts) >= 20, "retried again and again"
    assert set(attempts) == {1}, "never past the first entry, never to a dead-letter topic"
    assert source.acknowledged == []
    assert not relay.healthy


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
