"""The timer: one task over a heap of (wake time, schedule, type) for the schedules this
instance owns, and a fixed pool of workers that fire what comes due; never a task per
schedule.

A heap entry only says when to look: the worker reads the schedule's own next due time
and fires that, so an entry that is early (a PUT moved the time later, another instance
fired) costs one look, never a wrong fire. Entries are therefore never later than the
schedule's due time: when a worker's answer and a newer one (a PUT handled meanwhile)
disagree, the earlier is kept.

The clock is injected (``now()`` and a sleep that a new heap head interrupts), so tests
run the timer in fake time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

from prometheus_client import Counter, Gauge
from tidemark_contracts.backup import BackupType
from tidemark_platform.logging import get_logger

log = get_logger(__name__)

HEAP_SIZE = Gauge("tidemark_scheduler_heap_size", "Schedule types this instance times")
FIRE_ERRORS = Counter(
    "tidemark_scheduler_fire_errors_total",
    "Fires of one schedule type that raised; retried with backoff until their grace ends",
)
BATCH_SPLITS = Counter(
    "tidemark_scheduler_fire_batch_splits_total",
    "Batches of fires that raised and were fired again one schedule type at a time",
)
GIVE_UP_ERRORS = Counter(
    "tidemark_scheduler_give_up_errors_total",
    "Fires past their grace that could not even be recorded missed (retried with backoff)",
)

Key = tuple[UUID, BackupType]
GiveUp = Callable[[Key, datetime], Awaitable[tuple[datetime | None, bool]]]
"""After a (schedule, type)'s own fire raised, given the time the timer would retry it:
``(that time or an earlier one, False)`` while its fire time is within grace, else, once
the fire time is recorded missed, ``(the next time to look at it, True)`` (None: never)."""
Fire = Callable[[Sequence[Key]], Awaitable[dict[Key, datetime | None]]]
"""Fire what of each (schedule, type) is due now; by key, the next time to look at it
(None: never)."""


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime | None, wake: asyncio.Event) -> None:
        """Return at ``when`` (None: never) or as soon as ``wake`` is set."""
        ...


class SystemClock:
    """Real time. A sleep is cut at ``max_sleep_seconds`` so a wall-clock step (NTP, a
    suspended VM) is noticed within that time."""

    def __init__(self, max_sleep_seconds: float = 30.0) -> None:
        self.max_sleep_seconds = max_sleep_seconds

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime | None, wake: asyncio.Event) -> None:
        timeout = self.max_sleep_seconds
        if when is not None:
            timeout = min(max((when - self.now()).total_seconds(), 0.0), timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)


class Timer:
    """The heap of this instance's schedule types, grouped by partition (for revocation)."""

    def __init__(
        self,
        fire: Fire,
        clock: Clock,
        *,
        workers: int = 4,
        retry_seconds: float = 15.0,
        batch: int = 100,
        give_up: GiveUp | None = None,
        max_backoff_seconds: float | None = None,
    ) -> None:
        if workers < 1 or batch < 1:
            raise ValueError("workers and batch must be at least 1")
        self._batch = batch
        self._fire = fire
        self.clock = clock
        self._workers = workers
        self._retry = timedelta(seconds=retry_seconds)
        self._max_backoff = timedelta(
            seconds=max_backoff_seconds if max_backoff_seconds is not None else 8 * retry_seconds
        )
        self._give_up = give_up
        self._failures: dict[Key, int] = {}  # consecutive failed fires of a key
        self._heap: list[tuple[datetime, int, UUID, BackupType]] = []
        # key -> (sequence of its one valid heap entry, wake time); others are stale.
        self._entries: dict[Key, tuple[int, datetime]] = {}
        self._groups: dict[UUID, int] = {}  # schedule -> partition it is owned by
        self._busy: set[Key] = set()  # being fired by a worker
        self._pending: dict[Key, datetime | None] = {}  # set while its worker was busy
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self.idle = asyncio.Event()  # nothing due, no worker busy (for tests, benches)

    # -- what the owner tells it ------------------------------------------------------

    def set(
        self,
        schedule_id: UUID,
        backup_type: BackupType,
        at: datetime | None,
        group: int,
        *,
        earliest: bool = False,
    ) -> None:
        """Look at (schedule, type) at ``at`` (None: do not time it), e.g. after a PUT.

        With ``earliest`` an entry already there is only moved earlier (a bulk load that
        read the schedule before a PUT handled meanwhile must not push that PUT's time
        later)."""
        key = (schedule_id, backup_type)
        self._groups[schedule_id] = group
        if key in self._busy:
            current = self._pending.get(key, at)
            self._pending[key] = _earlier(current, at)
            return
        if earliest and key in self._entries:
            at = _earlier(self._entries[key][1], at)
        self._put(key, at)

    def drop_groups(self, groups: Iterable[int]) -> int:
        """Forget the schedules of these partitions (revoked); how many were dropped."""
        gone = set(groups)
        return self.forget({s for s, g in self._groups.items() if g in gone})

    def forget(self, schedule_ids: Iterable[UUID]) -> int:
        """Stop timing these schedules (another instance times them now)."""
        schedules = set(schedule_ids) & set(self._groups)
        for key in [k for k in self._entries if k[0] in schedules]:
            del self._entries[key]
        for key in [k for k in self._pending if k[0] in schedules]:
            del self._pending[key]
        for key in [k for k in self._failures if k[0] in schedules]:
            del self._failures[key]
        for schedule_id in schedules:
            del self._groups[schedule_id]
        HEAP_SIZE.set(len(self._entries))
        self.wake()
        return len(schedules)

    def owns(self, schedule_id: UUID) -> bool:
        return schedule_id in self._groups

    def next_wake(self, schedule_id: UUID, backup_type: BackupType) -> datetime | None:
        entry = self._entries.get((schedule_id, backup_type))
        return entry[1] if entry else None

    def head_time(self) -> datetime | None:
        """When the timer next looks at something (None: nothing timed)."""
        head = self._head()
        return head[0] if head else None

    def __len__(self) -> int:
        return len(self._entries)

    # -- the task ---------------------------------------------------------------------

    async def run(self) -> None:
        workers = [
            asyncio.create_task(self._work(), name=f"scheduler-fire-{i}")
            for i in range(self._workers)
        ]
        try:
            await self._loop()
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        while True:
            head = self._head()
            now = self.clock.now()
            if head is not None and head[0] <= now:
                _, _, schedule_id, backup_type = heapq.heappop(self._heap)
                key = (schedule_id, backup_type)
                del self._entries[key]
                HEAP_SIZE.set(len(self._entries))
                self._busy.add(key)
                self.idle.clear()
                self._queue.put_nowait(key)
                continue
            if not self._busy:
                self.idle.set()
            self._wake.clear()
            await self.clock.sleep_until(head[0] if head else None, self._wake)

    async def _work(self) -> None:
        while True:
            # What else is due now goes along, up to a batch: fires of one minute boundary
            # are saved together (see SchedulerApplication.fire_many).
            keys = [await self._queue.get()]
            while len(keys) < self._batch and not self._queue.empty():
                keys.append(self._queue.get_nowait())
            upcoming = await self._fire_batch(keys)
            for key in keys:
                self._busy.discard(key)
                if key[0] in self._groups:
                    at = upcoming.get(key)
                    if key in self._pending:
                        at = _earlier(at, self._pending.pop(key))
                    self._put(key, at)
            self.wake()

    async def _fire_batch(self, keys: list[Key]) -> dict[Key, datetime | None]:
        """Fire ``keys`` together; when that raises, each on its own, so one schedule
        whose fire keeps raising cannot hold back the healthy ones batched with it."""
        try:
            upcoming = await self._fire(keys)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(keys) == 1:
                return {keys[0]: await self._failed(keys[0], exc)}
            BATCH_SPLITS.inc()
            log.warning("schedule_batch_failed", schedules=len(keys), error=repr(exc))
            upcoming = {}
            for key in keys:
                try:
                    upcoming.update(await self._fire([key]))
                except asyncio.CancelledError:
                    raise
                except Exception as one:
                    upcoming[key] = await self._failed(key, one)
                else:
                    self._failures.pop(key, None)
            return upcoming
        for key in keys:
            self._failures.pop(key, None)
        return upcoming

    async def _failed(self, key: Key, exc: Exception) -> datetime | None:
        """When to look at a key whose fire raised: again after a backoff that doubles
        with each consecutive failure (capped), or, once ``give_up`` says so (the fire's
        grace has passed), at its next fire time."""
        FIRE_ERRORS.inc()
        attempts = self._failures.get(key, 0) + 1
        self._failures[key] = attempts
        backoff = min(self._retry * (1 << min(attempts - 1, 16)), self._max_backoff)
        retry_at = self.clock.now() + backoff
        log.warning(
            "schedule_fire_failed",
            schedule_id=str(key[0]),
            type=key[1],
            attempts=attempts,
            error=repr(exc),
            retry_seconds=backoff.total_seconds(),
        )
        if self._give_up is None:
            return retry_at
        try:
            at, given_up = await self._give_up(key, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception as again:
            # Nothing can be recorded either (the store is away): looked at again later.
            GIVE_UP_ERRORS.inc()
            log.warning("schedule_give_up_failed", schedule_id=str(key[0]), error=repr(again))
            return retry_at
        if given_up:
            self._failures.pop(key, None)  # a new fire time starts afresh
        return at

    # -- heap -------------------------------------------------------------------------

    def _put(self, key: Key, at: datetime | None) -> None:
        if at is None:
            self._entries.pop(key, None)
        else:
            seq = next(self._seq)
            self._entries[key] = (seq, at)
            heapq.heappush(self._heap, (at, seq, *key))
        HEAP_SIZE.set(len(self._entries))
        self.wake()

    def _head(self) -> tuple[datetime, int, UUID, BackupType] | None:
        """The earliest valid entry, dropping stale ones on the way."""
        while self._heap:
            _, seq, schedule_id, backup_type = self._heap[0]
            entry = self._entries.get((schedule_id, backup_type))
            if entry is not None and entry[0] == seq:
                return self._heap[0]
            heapq.heappop(self._heap)
        return None

    def wake(self) -> None:
        """Look at the heap now (a new head, a clock moved)."""
        self.idle.clear()
        self._wake.set()


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
