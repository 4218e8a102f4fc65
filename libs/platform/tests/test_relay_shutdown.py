"""The relay stops when its task is cancelled, even when a wake-up arrives at that moment
(Python 3.11's ``asyncio.wait_for`` returned the wake-up and lost the cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tidemark_platform.relay import Outbound, Relay


class EmptySource:
    name = "empty"

    async def pending(self, limit: int) -> Sequence[Outbound]:
        return []

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        return None


async def publish(entry: Outbound) -> object:
    return None


async def test_a_wake_up_arriving_with_the_cancellation_does_not_keep_the_relay_running() -> None:
    for _ in range(20):
        relay = Relay(EmptySource(), publish, idle_seconds=5.0)
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0.01)  # idle, waiting to be woken
        relay.wake()
        await asyncio.sleep(0)  # the wake-up is set in this iteration ...
        task.cancel()  # ... and the shutdown comes with it
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, "the relay kept running after it was cancelled"
        assert task.cancelled()
