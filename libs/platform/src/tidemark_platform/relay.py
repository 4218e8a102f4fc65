"""The relay: publishes a durable, ordered log (an outbox, an event store) to Kafka.

A relay reads what its source holds after the last acknowledged position, publishes it
in order through the idempotent producer, and only then records the new position. A
crash between the two re-publishes a tail of the log: delivery is at-least-once and
consumers are idempotent (envelopes carry stable message ids, aggregates carry versions).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Gauge

from tidemark_platform.logging import get_logger

log = get_logger(__name__)

RELAY_PUBLISHED = Counter(
    "tidemark_relay_published_total", "Messages published by a relay", ["relay", "topic"]
)
RELAY_FAILURES = Counter("tidemark_relay_failures_total", "Failed relay rounds", ["relay"])
RELAY_POSITION = Gauge("tidemark_relay_position", "Last position published", ["relay"])


@dataclass(frozen=True)
class Outbound:
    """One log entry to publish. ``topic`` None means: nothing to publish, just advance."""

    position: int
    topic: str | None
    key: bytes = b""
    value: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class RelaySource(Protocol):
    name: str

    async def pending(self, limit: int) -> Sequence[Outbound]:
        """Entries after the last acknowledged position, in log order."""
        ...

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        """Record that ``entries`` (the last batch from ``pending``) are published."""
        ...


Publish = Callable[[Outbound], Awaitable[object]]


class Relay:
    def __init__(
        self,
        source: RelaySource,
        publish: Publish,
        *,
        batch_size: int = 200,
        idle_seconds: float = 0.5,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self.source = source
        self._publish = publish
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.healthy = True

    async def is_healthy(self) -> bool:
        """False while publishing fails (Kafka away, or an entry it cannot publish)."""
        return self.healthy

    def wake(self) -> None:
        """Ask the relay to look for new entries now; safe to call from any thread."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = 0.2
        failing = False
        while True:
            try:
                published = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RELAY_FAILURES.labels(self.source.name).inc()
                self.healthy = False
                if not failing:
                    log.warning("relay_failing", relay=self.source.name, error=repr(exc))
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if failing:
                log.info("relay_recovered", relay=self.source.name)
            failing, backoff, self.healthy = False, 0.2, True
            if published < self._batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_seconds)

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many entries it took from the source."""
        entries = await self.source.pending(self._batch_size)
        for entry in entries:
            if entry.topic is not None:
                await self._publish(entry)
                RELAY_PUBLISHED.labels(self.source.name, entry.topic).inc()
        if entries:
            await self.source.acknowledge(entries)
            RELAY_POSITION.labels(self.source.name).set(entries[-1].position)
        return len(entries)
