"""Which schedules this instance times: those whose last ConfigureSchedule arrived on a
partition of ``schedule.commands`` assigned to it, so the instance that handles a
schedule's commands is the one that fires it, whatever the topic's partition count (the
gateway's producer partitions by the topic's actual count, which may exceed the contract's).
The partition is kept beside the environment (``remember_environment``); a later command
on another partition (partitions were added) moves the schedule there. Only rows from
before the partition was kept fall back to Kafka's default partitioner over the
contract's count (``partition_of``), which is what placed them then.

Two instances may both fire during a rebalance (the old owner's heap is dropped on
revoke, the new one loads): the aggregate's version check and the deterministic backup id
make such a fire a no-op on the loser's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

from aiokafka.partitioner import murmur2
from eventsourcing.persistence import Tracking
from prometheus_client import Counter
from tidemark_contracts import SCHEDULE_COMMANDS
from tidemark_platform.consumer import split_tracking_name
from tidemark_platform.logging import get_logger
from tidemark_schedules import ids

from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.domain import BACKUP_TYPES, Schedule
from tidemark_scheduler.timer import Timer

log = get_logger(__name__)

LOAD_FAILURES = Counter(
    "tidemark_scheduler_load_failures_total",
    "Failed loads of an assigned partition's schedules (retried until they succeed)",
)


def partition_of(environment_id: UUID, partitions: int = SCHEDULE_COMMANDS.partitions) -> int:
    """The partition of ``schedule.commands`` the environment's commands go to: Kafka's
    default partitioner over the envelope key (the environment id)."""
    key = str(environment_id).encode()
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def partition_of_tracking(tracking: Tracking) -> int | None:
    """The partition a delivery came from (its tracking name ends ``<topic>:<partition>``);
    None when the name says none."""
    _, rest = split_tracking_name(tracking.application_name)
    _, colon, partition = rest.rpartition(":")
    return int(partition) if colon and partition.isdigit() else None


class Ownership:
    def __init__(
        self,
        app: SchedulerApplication,
        timer: Timer,
        *,
        partitions: int = SCHEDULE_COMMANDS.partitions,
        retry_seconds: float = 2.0,
    ) -> None:
        self.app = app
        self.timer = timer
        self.partitions = partitions
        self.retry_seconds = retry_seconds
        self.owned: set[int] = set()
        self._loading: asyncio.Task[None] | None = None
        self._unloaded: set[int] = set()

    async def assigned(self, partitions: list[int]) -> None:
        """Own ``partitions``: their schedules are loaded into the heap in the background
        (retried until it succeeds), so the consumer's rebalance is not held up."""
        new = set(partitions) - self.owned
        self.owned |= new
        self._unloaded |= new
        log.info("schedule_partitions_assigned", partitions=sorted(new))
        if new and (self._loading is None or self._loading.done()):
            self._loading = asyncio.create_task(self._load(), name="scheduler-load")

    async def revoked(self, partitions: list[int]) -> None:
        gone = set(partitions) & self.owned
        self.owned -= gone
        self._unloaded -= gone
        dropped = self.timer.drop_groups(gone)
        log.info("schedule_partitions_revoked", partitions=sorted(gone), schedules=dropped)

    async def is_ready(self) -> bool:
        """Not ready while an assigned partition's schedules are not in the heap yet."""
        return not self._unloaded

    async def wait_loaded(self) -> None:
        """Until the schedules of the partitions assigned so far are in the heap."""
        while self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loading

    async def _load(self) -> None:
        while self._unloaded:
            wanted = set(self._unloaded)
            try:
                schedules = await asyncio.to_thread(self._read, wanted)
            except Exception as exc:
                LOAD_FAILURES.inc()
                log.warning("schedule_load_failed", error=repr(exc))
                await asyncio.sleep(self.retry_seconds)
                continue
            wanted &= self.owned  # revoked while reading: not ours to time
            for schedule, group in schedules:
                if group in wanted:
                    self._time(schedule, group, earliest=True)
            self._unloaded -= wanted
            log.info("schedules_loaded", partitions=sorted(wanted), heap_size=len(self.timer))

    def _read(self, partitions: set[int]) -> list[tuple[Schedule, int]]:
        found = []
        for environment_id, stored in self.app.scheduled_environments(partitions):
            group = stored if stored is not None else partition_of(environment_id, self.partitions)
            if group in partitions:
                schedule = self.app.get_schedule(ids.schedule_id(environment_id))
                if schedule is not None:
                    found.append((schedule, group))
        return found

    async def track(self, schedule_id: UUID, partition: int) -> None:
        """Time the schedule as it now is, after its ConfigureSchedule was handled from
        ``partition``: here when that partition is ours, else (it moved to a partition
        another instance owns) no longer here."""
        if partition not in self.owned:
            if self.timer.owns(schedule_id):
                self.timer.forget([schedule_id])
                log.info("schedule_moved_away", schedule_id=str(schedule_id), partition=partition)
            return
        schedule = await asyncio.to_thread(self.app.get_schedule, schedule_id)
        if schedule is None:
            return
        self._time(schedule, partition, earliest=False)

    def _time(self, schedule: Schedule, group: int, *, earliest: bool) -> None:
        for backup_type in BACKUP_TYPES:
            at = schedule.next_due.get(backup_type)
            self.timer.set(schedule.id, backup_type, at, group, earliest=earliest)
