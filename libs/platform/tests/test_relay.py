"""The relay publishes in order, acknowledges only what was published, and survives outages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

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
    # Entry 1 was published before the failure and again after: at-least-once, in order.
    assert published == [1, 1, 2, 3]
    assert relay.healthy
