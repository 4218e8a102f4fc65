"""The scheduler's unit tests: the in-memory event store (eventsourcing's POPO recorder), a
fake clock the tests move, and a dict standing in for the catalog view. The real ones
(PostgreSQL, Kafka, the view) are exercised by tests/e2e/test_scheduler.py. Also the
backup histories on ``backup.events`` that retention's tests feed the backups view.

Fixtures, not modules: tests are imported with ``--import-mode=importlib``, which puts no
test directory on ``sys.path``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope, Message, event_message_id
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupTrigger,
    BackupType,
    BackupUploaded,
    DestinationRef,
)
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_platform.consumer import Delivery
from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.domain import FireTargets, Schedule
from tidemark_scheduler.firing import Firing, Wanted
from tidemark_scheduler.handlers import make_handlers
from tidemark_scheduler.ownership import Ownership, partition_of
from tidemark_scheduler.timer import Timer
from tidemark_schedules import ids
from tidemark_schedules.cron import FREQUENCY_CRONS

GRACE = timedelta(minutes=15)
RETRY = timedelta(seconds=30)


class FakeClock:
    """Time that moves only when a test moves it; a sleep ends when it passes ``when``."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        assert now >= self._now, "fake time only moves forward"
        self._now = now
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def sleep_until(self, when: datetime | None, wake: asyncio.Event) -> None:
        while not wake.is_set() and (when is None or self._now < when):
            waits = [
                asyncio.ensure_future(wake.wait()),
                asyncio.ensure_future(self._moved.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()


@dataclass
class FakeTargets:
    """The catalog view as a dict: environments present, and ``failures`` lookups that
    raise first (the view's database away)."""

    known: set[uuid.UUID] = field(default_factory=set)
    failures: int = 0
    lookups: int = 0
    # Environments whose row breaks any lookup that includes them (as a row the view
    # cannot parse breaks CatalogTargets' whole batch).
    poisoned: set[uuid.UUID] = field(default_factory=set)

    async def lookup(self, wanted: Sequence[Wanted]) -> dict[uuid.UUID, FireTargets | str]:
        self.lookups += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("catalog view unreachable")
        if any(env in self.poisoned for _, env, _ in wanted):
            raise ValueError("a catalog row does not parse")
        return {env: self._one(env, destinations) for _, env, destinations in wanted}

    def _one(
        self, environment_id: uuid.UUID, destination_ids: Sequence[uuid.UUID]
    ) -> FireTargets | str:
        if environment_id not in self.known:
            return "the environment is not in the scheduler's catalog view"
        return FireTargets(
            project_id=uuid.UUID(int=1),
            database={"host": "db.internal", "port": 5432, "dbname": "shop", "user": "backup"},
            destinations=[
                {
                    "destinationId": str(d),
                    "name": "local",
                    "type": "local",
                    "config": {"kind": "local", "path": "backups"},
                }
                for d in destination_ids
            ],
        )


_offsets = itertools.count(1)


@dataclass
class Harness:
    """One scheduler instance over an in-memory store, in fake time."""

    app: SchedulerApplication
    clock: FakeClock
    targets: FakeTargets
    timer: Timer
    ownership: Ownership
    firing: Firing
    organization_id: uuid.UUID = field(default_factory=uuid.uuid4)
    revisions: dict[uuid.UUID, int] = field(default_factory=dict)
    running: bool = True

    def command(
        self, environment_id: uuid.UUID, revision: int | None = None, **settings: Any
    ) -> ConfigureSchedule:
        # What the gateway sends: the effective crons (a preset frequency's own).
        for kind, default in (("db", "daily"), ("full", "none")):
            frequency = settings.setdefault(f"{kind}Frequency", default)
            if frequency in FREQUENCY_CRONS:
                settings.setdefault(f"{kind}Cron", FREQUENCY_CRONS[frequency])
        revision = revision or self.revisions.get(environment_id, 0) + 1
        self.revisions[environment_id] = max(revision, self.revisions.get(environment_id, 0))
        now = self.clock.now()
        return ConfigureSchedule(
            schedule_id=ids.schedule_id(environment_id),
            organization_id=self.organization_id,
            project_id=uuid.UUID(int=1),
            environment_id=environment_id,
            revision=revision,
            settings=ScheduleSettings.model_validate(
                {"destinationIds": [str(uuid.UUID(int=7))], **settings}
            ),
            requested_by="user:test",
            created_at=now,
            updated_at=now,
        )

    async def configure(
        self,
        environment_id: uuid.UUID,
        revision: int | None = None,
        *,
        tracking: Tracking | None = None,
        partition: int | None = None,
        in_catalog: bool = True,
        **settings: Any,
    ) -> ConfigureSchedule:
        """Deliver a ConfigureSchedule to the handler, as the consumer would (the
        environment in the catalog view unless ``in_catalog`` is False)."""
        if in_catalog:
            self.targets.known.add(environment_id)
        command = self.command(environment_id, revision, **settings)
        await self.deliver(command, tracking, partition=partition)
        return command

    async def deliver(
        self,
        command: ConfigureSchedule,
        tracking: Tracking | None = None,
        *,
        partition: int | None = None,
    ) -> None:
        """Deliver as the consumer would, from ``partition`` (default: where Kafka's default
        partitioner puts the environment's key on a topic of the contract's count)."""
        handlers = make_handlers(self.app, self.ownership, lambda: None, now=self.clock.now)
        envelope = Envelope.wrap(
            command,
            producer="test",
            organization_id=command.organization_id,
            environment_id=command.environment_id,
        )
        if partition is None:
            partition = partition_of(command.environment_id)
        delivery = Delivery(
            envelope, tracking or Tracking(f"c/schedule.commands:{partition}", next(_offsets)), 1
        )
        await handlers[ConfigureSchedule](command, delivery)
        await self.settle()

    async def settle(self) -> None:
        if not self.running:
            return
        self.timer.wake()
        await asyncio.wait_for(self.timer.idle.wait(), 10)

    async def run_until(self, until: datetime) -> None:
        """Let fake time pass to ``until``, the timer acting at every time it asked for."""
        while True:
            await self.settle()
            head = self.timer.head_time()
            if head is None or head > until:
                break
            self.clock.set(max(head, self.clock.now()))
        self.clock.set(until)
        await self.settle()

    def events(self, schedule_id: uuid.UUID, kind: type) -> list[Any]:
        return [e for e in self.app.repository.event_store.get(schedule_id) if isinstance(e, kind)]

    def fired(self, environment_id: uuid.UUID) -> list[Any]:
        return self.events(ids.schedule_id(environment_id), Schedule.Fired)

    def missed(self, environment_id: uuid.UUID) -> list[Any]:
        return self.events(ids.schedule_id(environment_id), Schedule.Missed)


HarnessFactory = Callable[..., Harness]


@pytest.fixture
async def make_harness() -> AsyncIterator[HarnessFactory]:
    tasks: list[asyncio.Task[None]] = []

    def make(
        start: datetime = datetime(2026, 1, 5, 12, 0, 30, tzinfo=UTC),
        *,
        app: SchedulerApplication | None = None,
        clock: FakeClock | None = None,
        targets: FakeTargets | None = None,
        partitions: Sequence[int] = tuple(range(6)),
        running: bool = True,
    ) -> Harness:
        application = app or SchedulerApplication()
        fake_clock = clock or FakeClock(start)
        fake_targets = targets if targets is not None else FakeTargets()
        firing = Firing(application, fake_targets, fake_clock, grace=GRACE, retry=RETRY)
        timer = Timer(
            firing.fire_many,
            fake_clock,
            workers=2,
            retry_seconds=RETRY.total_seconds(),
            give_up=firing.give_up,
        )
        ownership = Ownership(application, timer, retry_seconds=0.01)
        ownership.owned |= set(partitions)
        harness = Harness(
            application, fake_clock, fake_targets, timer, ownership, firing, running=running
        )
        if running:
            tasks.append(asyncio.create_task(timer.run()))
        return harness

    yield make
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


Outcome = Literal["pending", "running", "completed", "failed", "deleting", "deleted"]
CHECKSUM = "sha256:" + "0" * 64


@dataclass(frozen=True)
class BackupHistory:
    """One backup's events as the backup-runner's relay publishes them (aggregate id =
    backup id, versions from 1, message ids derived from both)."""

    backup_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    envelopes: tuple[Envelope, ...]


class BackupEvents:
    """Builds backup histories on ``backup.events`` for the scheduler's view."""

    def __init__(self) -> None:
        self.destination = DestinationRef(destination_id=uuid.uuid4(), name="disk", type="local")

    def history(
        self,
        *,
        organization_id: uuid.UUID,
        environment_id: uuid.UUID,
        requested_at: datetime,
        type: BackupType = "db",
        trigger: BackupTrigger = "scheduled",
        outcome: Outcome = "completed",
        size_bytes: int = 100,
        backup_id: uuid.UUID | None = None,
        wal: tuple[str, str] | None = None,
    ) -> BackupHistory:
        backup_id = backup_id or uuid.uuid4()
        done = requested_at + timedelta(minutes=1)
        messages: list[Message] = [
            BackupRequested(
                backup_id=backup_id,
                organization_id=organization_id,
                project_id=uuid.uuid4(),
                environment_id=environment_id,
                type=type,
                trigger=trigger,
                requested_by="scheduler" if trigger == "scheduled" else "user",
                requested_at=requested_at,
                destinations=[self.destination],
            )
        ]
        if outcome != "pending":
            messages.append(
                BackupStarted(backup_id=backup_id, environment_id=environment_id, started_at=done)
            )
        if outcome == "failed":
            messages.append(
                BackupFailed(
                    backup_id=backup_id, environment_id=environment_id, error="x", failed_at=done
                )
            )
        if outcome in ("completed", "deleting", "deleted"):
            messages += [
                BackupUploaded(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    destination_id=self.destination.destination_id,
                    location=f"{environment_id}/{backup_id}",
                    size_bytes=size_bytes,
                    uploaded_at=done,
                ),
                BackupCompleted(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    size_bytes=size_bytes,
                    checksum=CHECKSUM,
                    compression="zstd",
                    completed_at=done,
                    duration_ms=60_000,
                    wal_start_lsn=wal[0] if wal else None,
                    wal_end_lsn=wal[1] if wal else None,
                ),
            ]
        if outcome in ("deleting", "deleted"):
            messages.append(
                BackupDeletionRequested(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    requested_by="user",
                    requested_at=done,
                )
            )
        if outcome == "deleted":
            messages.append(
                BackupDeleted(backup_id=backup_id, environment_id=environment_id, deleted_at=done)
            )
        envelopes = tuple(
            Envelope.wrap(
                message,
                producer="backup-runner",
                organization_id=organization_id,
                environment_id=environment_id,
                message_id=event_message_id(backup_id, version),
                aggregate_id=backup_id,
                aggregate_version=version,
            )
            for version, message in enumerate(messages, start=1)
        )
        return BackupHistory(backup_id, organization_id, environment_id, envelopes)


@pytest.fixture
def backup_events() -> BackupEvents:
    return BackupEvents()
