"""Retention on real Kafka and PostgreSQL: completed scheduled backups arrive on
``backup.events`` into the scheduler's view, enforcement expires what the schedule no
longer keeps, and the relay puts exactly the preview's delete set on ``backup.commands``
(``DeleteBackup`` from ``scheduler:retention``), recorded as ``BackupExpired`` in the
scheduler's event store.

The topics are copies of the registry's under names of the test's own: the session's
stack (gateway, backup-runner) follows the real ones, and made-up backups there would be
backups its read model holds and no runner recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from eventsourcing.persistence import Tracking
from tidemark_contracts import BACKUP_COMMANDS, BACKUP_EVENTS, SCHEDULE_EVENTS, Envelope, Topic
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_platform.kafka import ensure_topics, make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings
from tidemark_scheduler.application import SchedulerApplication, open_store
from tidemark_scheduler.backups_view import BackupsFollower
from tidemark_scheduler.enforcement import RetentionEnforcer, retention_plan
from tidemark_schedules import ids

pytestmark = pytest.mark.integration

REAL_TOPICS = (BACKUP_EVENTS, BACKUP_COMMANDS, SCHEDULE_EVENTS)

ORG = uuid.uuid4()
DAY0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
# When enforcement decides (its clock): the PITR window's start is NOW - 4 days.
NOW = DAY0 + timedelta(days=8)
SETTINGS = ScheduleSettings(
    db_frequency="none",  # nothing fires here: the backups come from the test
    full_frequency="none",
    destination_ids=[uuid.uuid4()],
    retain_daily=2,
    wal_enabled=True,
    wal_retention_days=4,
)


class Scheduler:
    """The scheduler's retention path in this process, on a consumer group of its own (a
    stack's scheduler in the same session cannot take its partitions)."""

    def __init__(self, database_url: str, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.topics = {t.name: replace(t, name=f"test.{suffix}.{t.name}") for t in REAL_TOPICS}
        self.app: SchedulerApplication = open_store(database_url, "scheduler_store")
        self.broker = make_broker(bootstrap, f"test-retention-{suffix}")
        runtime = ServiceRuntime(
            "scheduler",
            ServiceSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap),
            self.broker,
        )
        self.leadership = Leadership(
            database_url, NotificationLogSource.log_name(self.app, "kafka")
        )
        self.relay = runtime.add_relay(
            NotificationLogSource(self.app, self.to_test_topic, "kafka", self.leadership)
        )
        self.bootstrap = bootstrap
        # The histories are made up in November 2026: every completion counts as recent
        # (the age gate has its own test in test_backups_view.py).
        self.view = BackupsFollower(database_url, "scheduler", enforce_within=timedelta(days=36500))
        self.enforcer = RetentionEnforcer(self.app, self.view.query, on_saved=self.relay.wake)
        self.enforced: list[uuid.UUID] = []

        async def after_completion(environment_id: uuid.UUID) -> None:
            await self.enforcer.enforce(environment_id, NOW)
            self.enforced.append(environment_id)

        self.view.on_scheduled_completed = after_completion
        self.view.subscribe(
            self.broker,
            f"test-retention-{suffix}",
            service="scheduler",
            topic=self.topic(BACKUP_EVENTS),
        )
        self._relay_task: asyncio.Task[None] | None = None

    def topic(self, real: Topic) -> Topic:
        return self.topics[real.name]

    def to_test_topic(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The scheduler's relay mapping, onto this test's topics."""
        mapped = self.app.to_envelope(event)
        return None if mapped is None else (self.topic(mapped[0]), mapped[1])

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.topics.values())
        await self.view.open()
        await self.broker.start()
        self._relay_task = asyncio.create_task(self.relay.run())

    async def stop(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        await self.broker.stop()
        await self.view.close()
        await self.leadership.close()
        self.app.close()


@pytest.fixture
async def scheduler(
    create_database: Callable[..., str], kafka_bootstrap: str
) -> AsyncIterator[Scheduler]:
    running = Scheduler(create_database("ret"), kafka_bootstrap)
    await running.start()
    yield running
    await running.stop()


def configure(app: SchedulerApplication, environment_id: uuid.UUID) -> None:
    command = ConfigureSchedule(
        schedule_id=ids.schedule_id(environment_id),
        organization_id=ORG,
        project_id=uuid.uuid4(),
        environment_id=environment_id,
        revision=1,
        settings=SETTINGS,
        requested_by="user",
        created_at=DAY0,
        updated_at=DAY0,
    )
    assert app.configure(command, Tracking("schedule.commands:0", 1))


async def publish(scheduler: Scheduler, envelopes: list[Envelope]) -> None:
    """Publish backup events as the backup-runner's relay would (key: environment)."""
    topic = scheduler.topic(BACKUP_EVENTS).name
    producer = AIOKafkaProducer(
        bootstrap_servers=scheduler.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for envelope in envelopes:
            await producer.send_and_wait(topic, envelope.to_bytes(), key=envelope.key)
    finally:
        await producer.stop()


async def deletions_on_kafka(
    scheduler: Scheduler, environment_id: uuid.UUID, expected: int, settle: float = 3.0
) -> list[dict[str, Any]]:
    """The DeleteBackup commands of the environment on backup.commands, read until
    ``expected`` arrived and then ``settle`` seconds more (to see any beyond them)."""
    consumer = AIOKafkaConsumer(
        scheduler.topic(BACKUP_COMMANDS).name,
        bootstrap_servers=scheduler.bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline, settled_at = loop.time() + 90, None
    try:
        while settled_at is None or loop.time() < settled_at:
            assert loop.time() < deadline, f"{len(found)} of {expected} deletions in 90 s"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key != str(environment_id).encode() or record.value is None:
                        continue
                    envelope = Envelope.from_bytes(record.value)
                    if envelope.message_type == "backup.DeleteBackup":
                        found.append(envelope.payload)
            if settled_at is None and len(found) >= expected:
                settled_at = loop.time() + settle
    finally:
        await consumer.stop()
    return found


def expired_in_store(app: SchedulerApplication, environment_id: uuid.UUID) -> list[Any]:
    expired = []
    for notification in app.recorder.select_notifications(start=1, limit=10_000):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        if mapped is None:
            continue
        topic, envelope = mapped
        if envelope.message_type == "schedule.BackupExpired":
            assert topic is SCHEDULE_EVENTS
            assert envelope.environment_id == environment_id
            expired.append(envelope.payload)
    return expired


async def wait_for(condition: Callable[[], Any], what: str, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.2)


async def test_completed_scheduled_backups_are_expired_and_deleted_as_the_preview_says(
    scheduler: Scheduler, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    configure(scheduler.app, environment_id)

    def history(day: int, later: timedelta = timedelta(0), **kwargs: Any) -> Any:
        return backup_events.history(
            organization_id=ORG,
            environment_id=environment_id,
            requested_at=DAY0 + timedelta(days=day) + later,
            **kwargs,
        )

    # Six days of scheduled db and full backups, a manual db backup each day, a failed one.
    scheduled_db = [history(day) for day in range(6)]
    fulls = [history(day, type="full", later=timedelta(minutes=30)) for day in range(6)]
    manual = [history(day, trigger="manual", later=timedelta(hours=2)) for day in range(6)]
    failed = history(1, outcome="failed", later=timedelta(hours=5))
    everything = [*scheduled_db, *fulls, *manual, failed]
    await publish(scheduler, [e for h in everything for e in h.envelopes])

    completed = {h.backup_id for h in [*scheduled_db, *fulls, *manual]}

    async def all_in_view() -> bool:
        listed = await scheduler.view.query.completed_backups(environment_id)
        return {b.backup_id for b in listed} >= completed

    await wait_for(all_in_view, "every completed backup in the scheduler's view")

    # The preview: the retention function on what the view holds, at the time enforcement
    # ran (the PITR base's window is measured from then).
    async def enforced_every_scheduled_completion() -> bool:
        return scheduler.enforced.count(environment_id) >= len(scheduled_db) + len(fulls)

    await wait_for(enforced_every_scheduled_completion, "enforcement after each completion")
    listed = await scheduler.view.query.completed_backups(environment_id)
    preview = retention_plan(listed, SETTINGS, NOW)
    expected = {d.backup.backup_id for d in preview.delete}
    # Six days of each type: the daily rule keeps each type's two newest (days 4, 5); the
    # PITR window starts on day 4 at 03:00, so day 3's full is its base and stays; manual
    # backups stay. Four db and three full backups go.
    assert expected == {h.backup_id for h in [*scheduled_db[:4], *fulls[:3]]}

    deletions = await deletions_on_kafka(scheduler, environment_id, len(expected))
    assert sorted(uuid.UUID(d["backupId"]) for d in deletions) == sorted(expected)
    assert {d["requestedBy"] for d in deletions} == {"scheduler:retention"}
    expired = expired_in_store(scheduler.app, environment_id)
    assert sorted(uuid.UUID(e["backupId"]) for e in expired) == sorted(expected)
    assert all(e["rule"] for e in expired)

    # One more scheduled completion: the oldest of the two kept db backups goes, only it.
    newest = history(6)
    await publish(scheduler, list(newest.envelopes))
    deletions = await deletions_on_kafka(scheduler, environment_id, len(expected) + 1)
    assert sorted(uuid.UUID(d["backupId"]) for d in deletions) == sorted(
        expected | {scheduled_db[4].backup_id}
    )
    assert len(expired_in_store(scheduler.app, environment_id)) == len(expected) + 1


async def test_without_a_schedule_a_completion_deletes_nothing(
    scheduler: Scheduler, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    histories = [
        backup_events.history(
            organization_id=ORG,
            environment_id=environment_id,
            requested_at=DAY0 + timedelta(days=day),
        )
        for day in range(5)
    ]
    await publish(scheduler, [e for h in histories for e in h.envelopes])

    async def enforced_every_completion() -> bool:
        return scheduler.enforced.count(environment_id) >= 5

    await wait_for(enforced_every_completion, "enforcement after each completion")
    assert await deletions_on_kafka(scheduler, environment_id, 0) == []
    assert expired_in_store(scheduler.app, environment_id) == []
