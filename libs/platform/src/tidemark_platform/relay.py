"""The relay: publishes a durable, ordered log (an outbox, an event store) to Kafka.

A relay reads what its source holds after the last acknowledged position, publishes it
in order through the idempotent producer, and only then records the new position. A
crash between the two re-publishes a tail of the log: delivery is at-least-once and
consumers are idempotent (envelopes carry stable message ids, aggregates carry versions).

A batch is pipelined: every entry is handed to the producer first (``publish`` may return
the producer's pending answer instead of waiting for it), then the answers are awaited in
log order, so a batch costs a few Kafka requests, not one round trip per entry. Only the
prefix of the batch that Kafka confirmed (or that was parked) is acknowledged; the rest
goes out again in the next round. One producer keeps a partition's records in order.
Kafka refuses a whole request when one record in it is too large, so after a refusal the
entries of that batch are sent again one at a time, and only the one at fault is parked.

Kafka being away and Kafka refusing one entry are told apart. Only an error that says the
record itself is at fault (too large for the topic, corrupt, an invalid topic) parks the
entry on ``<topic>.dlq`` (see ``dead_letters``), and the relay goes on. Anything else
(Kafka away, too few in-sync replicas, a timeout) is retried for ever while the relay
reports not healthy: parking an event on a guess would leave a gap in the log that every
projection would then wait on, so nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from prometheus_client import Counter, Gauge

from tidemark_platform import dead_letters
from tidemark_platform.kafka import RECORD_REFUSED, RECORD_TOO_LARGE
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


class _SendAlone(Exception):
    """Kafka refused a request of several entries: send them again one at a time."""


def _forget(answer: object) -> None:
    """Retrieve a pending answer's outcome when it comes, so nobody warns it was ignored."""
    if isinstance(answer, asyncio.Future):
        answer.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _confirmed(answer: object) -> None:
    """Wait for a producer's answer (a future), or raise the error ``publish`` raised."""
    if isinstance(answer, BaseException):
        raise answer
    if inspect.isawaitable(answer):
        await answer


class Relay:
    def __init__(
        self,
        source: RelaySource,
        publish: Publish,
        *,
        batch_size: int = 200,
        idle_seconds: float = 0.5,
        max_backoff_seconds: float = 5.0,
        service: str = "",
        on_refused: Callable[[], Awaitable[None]] | None = None,
        round_timeout_seconds: float = 60.0,
    ) -> None:
        self.source = source
        self._on_refused = on_refused
        # A round that gets no answer at all in this time (a producer wedged by a broker
        # restart waits on its own futures forever) is abandoned: what it did not confirm
        # goes out again, through a renewed producer.
        self._round_timeout = round_timeout_seconds
        # Entries up to this position are sent one at a time (after a refused request).
        self._alone_until = 0
        self._publish = publish
        self._service = service or source.name
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
        failing_since: float | None = None
        renewed_at = 0.0
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result
                # of an inner await that completes as the task is cancelled, and the
                # cancellation is lost: the relay would outlive its service's shutdown.
                async with asyncio.timeout(self._round_timeout):
                    published = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RELAY_FAILURES.labels(self.source.name).inc()
                self.healthy = False
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.warning("relay_failing", relay=self.source.name, error=repr(exc))
                # A round with no answer at all, or failures that outlast a round: the
                # producer may be wedged or stale after a broker restart (it waits on its
                # own futures, or keeps failing where a new one would not). A new one, at
                # most once a round; what was not confirmed goes out again through it.
                stuck = isinstance(exc, TimeoutError)
                if stuck or now - max(failing_since, renewed_at) >= self._round_timeout:
                    log.warning("relay_producer_renewed", relay=self.source.name, error=repr(exc))
                    renewed_at = now
                    if self._on_refused is not None:
                        with contextlib.suppress(Exception):
                            await self._on_refused()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if failing_since is not None:
                log.info("relay_recovered", relay=self.source.name)
            failing_since, backoff, self.healthy = None, 0.2, True
            if published < self._batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_seconds):
                        await self._wake.wait()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many entries it took from the source."""
        entries = await self.source.pending(self._batch_size)
        done: list[Outbound] = []
        sent: list[tuple[Outbound, object]] = []
        try:
            for entry in entries:
                alone = entry.position <= self._alone_until
                if alone:
                    await self._settle(sent, done, alone=False)
                answer = await self._send(entry)
                sent.append((entry, answer))
                # Nothing after a failed send may reach Kafka before it does.
                if alone or isinstance(answer, BaseException):
                    await self._settle(sent, done, alone=alone)
            await self._settle(sent, done, alone=False)
        except _SendAlone:
            pass  # the next round sends the batch again, one entry at a time
        finally:
            # What Kafka confirmed (or what was parked) is never published again.
            if done:
                await self.source.acknowledge(done)
                RELAY_POSITION.labels(self.source.name).set(done[-1].position)
        return len(entries)

    async def _send(self, entry: Outbound) -> object:
        """Hand the entry to the producer: its pending answer, or the error it raised."""
        if entry.topic is None:
            return None
        try:
            return await self._publish(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc

    async def _settle(
        self, sent: list[tuple[Outbound, object]], done: list[Outbound], *, alone: bool
    ) -> None:
        """Wait for the answers of what was sent, in log order."""
        batch = sent[:]
        sent.clear()
        for index, (entry, answer) in enumerate(batch):
            try:
                if entry.topic is not None:
                    await self._confirm_or_park(entry, entry.topic, answer, batch[-1][0], alone)
            except BaseException:
                for _, later in batch[index + 1 :]:
                    _forget(later)  # sent again next round; its answer no longer matters
                raise
            done.append(entry)

    async def _confirm_or_park(
        self, entry: Outbound, topic: str, answer: object, last: Outbound, alone: bool
    ) -> None:
        try:
            await _confirmed(answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, RECORD_REFUSED):
                raise  # Kafka away, or not sure: retried by run(), nothing skipped
            if self._on_refused is not None:
                # The producer counted the refused record as sent: without a new one,
                # every later record to that partition fails too.
                await self._on_refused()
            if not alone:
                # Kafka refuses a whole request: the entry may only share it with the one
                # at fault. Sent alone, each entry answers for itself.
                self._alone_until = max(self._alone_until, last.position)
                raise _SendAlone from exc
            await self._park(entry, topic, exc)
            return
        RELAY_PUBLISHED.labels(self.source.name, topic).inc()

    async def _park(self, entry: Outbound, topic: str, exc: Exception) -> None:
        error = dead_letters.describe_error(exc)
        headers = dead_letters.dead_letter_headers(
            [(k, v.encode()) for k, v in entry.headers.items()],
            reason=dead_letters.Reason.REFUSED_BY_KAFKA,
            error=error,
            service=self._service,
            attempts=1,  # a record Kafka refuses is refused on every attempt
            original_topic=topic,
            extra={
                dead_letters.RELAY: self.source.name,
                dead_letters.RELAY_POSITION: str(entry.position),
            },
        )
        parked = replace(
            entry, topic=dead_letters.dlq_name(topic), headers={k: v.decode() for k, v in headers}
        )
        try:
            await _confirmed(await self._publish(parked))
        except RECORD_TOO_LARGE:
            # Too large for the dead-letter topic as well: park what says what it was, so
            # the entry is visible and the log goes on; its value stays in the source's
            # backups (an event store) or is lost with an outbox row. The refusal spent the
            # producer's sequence too: the next record needs a new producer.
            if self._on_refused is not None:
                await self._on_refused()
            headers_without_value = {
                **parked.headers,
                dead_letters.VALUE_OMITTED: str(len(entry.value)),
            }
            await _confirmed(
                await self._publish(replace(parked, value=b"", headers=headers_without_value))
            )
        dead_letters.DEAD_LETTERS.labels(
            topic, self._service, dead_letters.Reason.REFUSED_BY_KAFKA.value
        ).inc()
        log.error(
            "relay_entry_parked",
            relay=self.source.name,
            position=entry.position,
            topic=topic,
            dlq=parked.topic,
            error=error,
        )
