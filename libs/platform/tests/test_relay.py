"""The relay publishes in order, acknowledges only what was published, and survives outages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tidemark_platform.relay import Outbound, Relay


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


async def test_an_entry_that_keeps_failing_while_kafka_answers_is_parked() -> None:
    source = ListSource(entries(3))
    published: list[tuple[int, str]] = []
    parked: list[Outbound] = []

    async def publish(entry: Outbound) -> None:
        if entry.topic == "topic.dlq":
            parked.append(entry)
            return
        if entry.position == 2:
            raise TimeoutError("this one never gets through")
        published.append((entry.position, entry.value.decode()))

    async def reachable() -> bool:
        return True

    relay = Relay(
        source,
        publish,
        idle_seconds=0.01,
        max_backoff_seconds=0.01,
        service="unit",
        reachable=reachable,
        max_entry_attempts=3,
    )
    await run_until(relay, lambda: source.acknowledged[-1:] == [3])
    assert source.acknowledged[-1:] == [3]
    assert (3, "v3") in published
    assert 2 not in [position for position, _ in published]
    [dead] = parked
    assert (dead.position, dead.key, dead.value) == (2, b"k", b"v2")
    assert dead.headers["dlq.reason"] == "refused_by_kafka"
    assert dead.headers["dlq.attempts"] == "3"
    assert dead.headers["dlq.error"] == "TimeoutError: this one never gets through"
    assert dead.headers["dlq.relay-position"] == "2"
    assert dead.headers["dlq.service"] == "unit"
    assert relay.healthy


async def test_nothing_is_parked_while_kafka_is_away() -> None:
    source = ListSource(entries(2))
    attempts: list[int] = []

    async def publish(entry: Outbound) -> None:
        attempts.append(entry.position)
        raise ConnectionError("kafka is down")

    async def reachable() -> bool:
        return False

    relay = Relay(
        source,
        publish,
        idle_seconds=0.01,
        max_backoff_seconds=0.01,
        reachable=reachable,
        max_entry_attempts=2,
    )
    await run_until(relay, lambda: len(attempts) >= 20)
    assert len(attempts) >= 20, "retried again and again"
    assert set(attempts) == {1}, "never past the first entry, never to a dead-letter topic"
    assert source.acknowledged == []
    assert not relay.healthy
