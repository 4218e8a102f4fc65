"""The alerts service's handlers and relay on real Kafka and PostgreSQL: contract events
published on the source topics become alerts on ``alert.events``; read and dismiss
commands are recorded once; a redelivered or re-published event changes nothing.

The topics are copies of the registry's under names of the test's own: the session's
stack (gateway, alerts service) follows the real ones, and made-up failures there would
be alerts of organizations no one registered. The catalog view is the service's own
(``CatalogView`` in the store's database), filled through the projection itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tidemark_alerts.application import AlertsApplication
from tidemark_alerts.domain import alert_id_of, destination_subject, environment_subject
from tidemark_alerts.handlers import register_handlers
from tidemark_alerts.places import Places
from tidemark_contracts import Envelope, Message, Topic
from tidemark_contracts.alert import DismissAlert, MarkAlertRead
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
    DatabaseTarget,
    LocalDestinationConfig,
)
from tidemark_contracts.catalog import DestinationRegistered, EnvironmentRegistered
from tidemark_contracts.restore import RestoreCompleted, RestoreFailed, RestoreRequested
from tidemark_contracts.schedule import ScheduleFired, ScheduleMissed
from tidemark_contracts.topics import (
    ALERT_COMMANDS,
    ALERT_EVENTS,
    BACKUP_EVENTS,
    RESTORE_EVENTS,
    SCHEDULE_EVENTS,
)
from tidemark_contracts.wal import WalArchivingStatusChanged
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.kafka import ensure_topics, make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings

pytestmark = pytest.mark.integration

SOURCE_TOPICS = (BACKUP_EVENTS, SCHEDULE_EVENTS, RESTORE_EVENTS, ALERT_COMMANDS, ALERT_EVENTS)
SCHEMA = "alerts"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
CHECKSUM = "sha256:" + "0" * 64


def test_topics() -> dict[str, Topic]:
    suffix = uuid.uuid4().hex[:8]
    return {t.name: replace(t, name=f"test.{suffix}.{t.name}") for t in SOURCE_TOPICS}


test_topics.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class Service:
    """The alerts service's consumers and relay in this process, on the test's topics and
    a consumer group of its own."""

    def __init__(
        self, database_url: str, bootstrap: str, topics: dict[str, Topic], group: str
    ) -> None:
        self.topics = topics
        self.bootstrap = bootstrap
        self.app: AlertsApplication = AlertsApplication.on_postgres(database_url, SCHEMA)
        self.broker = make_broker(bootstrap, group)
        runtime = ServiceRuntime(
            "alerts",
            ServiceSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap),
            self.broker,
        )
        self.leadership = Leadership(
            database_url, NotificationLogSource.log_name(self.app, "kafka")
        )
        self.relay = runtime.add_relay(
            NotificationLogSource(self.app, self.to_test_topic, "kafka", self.leadership)
        )
        self.pool = connection_pool(database_url, min_size=1, max_size=4)
        self.catalog = ProjectionRunner(self.pool, SCHEMA, CatalogView())
        places = Places(self.pool, SCHEMA, wait_seconds=1.0, poll_seconds=0.1)
        register_handlers(
            self.broker,
            self.app,
            places,
            self.relay.wake,
            service="alerts",
            group_id=group,
            topics=topics,
        )
        self._relay_task: asyncio.Task[None] | None = None
        self._stopped = False

    def to_test_topic(self, event: Any) -> tuple[Topic, Envelope] | None:
        mapped = self.app.to_envelope(event)
        return None if mapped is None else (self.topics[mapped[0].name], mapped[1])

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.topics.values())
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            await self.catalog.migrate(conn)
        await self.broker.start()
        self._relay_task = asyncio.create_task(self.relay.run())

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        await self.broker.stop()
        await self.pool.close()
        await self.leadership.close()
        self.app.close()

    async def register(self, message: Message, organization_id: uuid.UUID) -> None:
        envelope = Envelope.wrap(
            message, producer="api-gateway", organization_id=organization_id, environment_id=None
        )
        assert await self.catalog.apply_now(envelope)


@pytest.fixture
def database(create_database: Callable[..., str]) -> str:
    return create_database("alerts")


@pytest.fixture
async def service(database: str, kafka_bootstrap: str) -> AsyncIterator[Service]:
    running = Service(database, kafka_bootstrap, test_topics(), f"test-alerts-{uuid.uuid4()}")
    await running.start()
    yield running
    await running.stop()


class Publisher:
    """Publishes as the source services' relays and the gateway's outbox do (key: the
    envelope's environment, else its organization)."""

    def __init__(self, bootstrap: str, topics: dict[str, Topic]) -> None:
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )

    async def send(self, topic: Topic, envelope: Envelope) -> None:
        await self.producer.send_and_wait(
            self.topics[topic.name].name, envelope.to_bytes(), key=envelope.key
        )

    async def event(
        self,
        topic: Topic,
        message: Message,
        organization_id: uuid.UUID,
        environment_id: uuid.UUID | None,
    ) -> Envelope:
        envelope = Envelope.wrap(
            message,
            producer="test",
            organization_id=organization_id,
            environment_id=environment_id,
            message_id=uuid.uuid4(),
        )
        await self.send(topic, envelope)
        return envelope


@pytest.fixture
async def publisher(service: Service, kafka_bootstrap: str) -> AsyncIterator[Publisher]:
    sending = Publisher(kafka_bootstrap, service.topics)
    await sending.producer.start()
    yield sending
    await sending.producer.stop()


class AlertEvents:
    """Reads the test's alert.events from its start: everything relayed so far."""

    def __init__(self, bootstrap: str, topic: Topic) -> None:
        self.consumer = AIOKafkaConsumer(
            topic.name, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        self.seen: list[tuple[bytes | None, Envelope]] = []

    async def until(self, count: int, settle: float = 3.0, within: float = 90.0) -> list[Envelope]:
        """Every envelope, once ``count`` arrived and ``settle`` seconds passed with
        nothing more (so one too many shows)."""
        loop = asyncio.get_running_loop()
        deadline, settled_at = loop.time() + within, None
        while settled_at is None or loop.time() < settled_at:
            assert loop.time() < deadline, (
                f"{len(self.seen)} of {count} alert events in {within} s: "
                f"{[e.message_type for _, e in self.seen]}"
            )
            for records in (await self.consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    assert record.value is not None
                    self.seen.append((record.key, Envelope.from_bytes(record.value)))
            if settled_at is None and len(self.seen) >= count:
                settled_at = loop.time() + settle
        return [e for _, e in self.seen]


@pytest.fixture
async def alert_events(service: Service, kafka_bootstrap: str) -> AsyncIterator[AlertEvents]:
    reading = AlertEvents(kafka_bootstrap, service.topics[ALERT_EVENTS.name])
    await reading.consumer.start()
    yield reading
    await reading.consumer.stop()


def environment(org: uuid.UUID, project: uuid.UUID, env: uuid.UUID, name: str) -> Message:
    return EnvironmentRegistered(
        environment_id=env,
        organization_id=org,
        project_id=project,
        name=name,
        database=DatabaseTarget(host="127.0.0.1", port=5432, dbname="shop", user="shop"),
        registered_at=T0,
    )


def of(envelopes: list[Envelope], alert_id: uuid.UUID) -> list[Envelope]:
    return [e for e in envelopes if e.aggregate_id == alert_id]


async def test_source_events_become_alerts_and_commands_mark_them_once(
    service: Service, publisher: Publisher, alert_events: AlertEvents
) -> None:
    org, project, env, dest = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    foreign_env = uuid.uuid4()
    await service.register(environment(org, project, env, "shop-prod"), org)
    # Another organization's environment: an event naming it under ``org`` gets no name.
    other = uuid.uuid4()
    await service.register(environment(other, uuid.uuid4(), foreign_env, "their-secret"), other)
    await service.register(
        DestinationRegistered(
            destination_id=dest,
            organization_id=org,
            name="vault",
            type="local",
            config=LocalDestinationConfig(path="backups"),
            is_default=True,
            registered_at=T0,
        ),
        org,
    )
    b1, b2, restore_id, restored_backup = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = [T0 + timedelta(minutes=i) for i in range(10)]
    send = publisher.event
    await send(
        BACKUP_EVENTS,
        BackupStarted(backup_id=b1, environment_id=env, started_at=at[0], attempt=1),
        org,
        env,
    )  # not an alert's: ignored
    await send(
        BACKUP_EVENTS,
        BackupFailed(
            backup_id=b1,
            environment_id=env,
            error="password authentication failed",
            failed_at=at[1],
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        BackupFailed(backup_id=b2, environment_id=env, error="again", failed_at=at[2]),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        BackupUploadFailed(
            backup_id=b2,
            environment_id=env,
            destination_id=dest,
            error="permission denied",
            failed_at=at[1],
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        BackupCleanupFailed(
            backup_id=b1,
            environment_id=env,
            destination_id=dest,
            error="refused",
            attempt=1,
            failed_at=at[1],
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        WalArchivingStatusChanged(
            environment_id=env,
            organization_id=org,
            status="stalled",
            reason="no segment",
            changed_at=at[1],
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        BackupFailed(backup_id=b1, environment_id=foreign_env, error="x", failed_at=at[1]),
        org,
        foreign_env,
    )
    await send(
        SCHEDULE_EVENTS,
        ScheduleMissed(
            schedule_id=uuid.uuid4(),
            organization_id=org,
            environment_id=env,
            type="db",
            scheduled_for=at[1],
            first_scheduled_for=at[1],
            missed_count=1,
            reason="scheduler down",
            detected_at=at[1],
        ),
        org,
        env,
    )
    await send(
        RESTORE_EVENTS,
        RestoreRequested(
            restore_id=restore_id,
            organization_id=org,
            project_id=project,
            backup_id=restored_backup,
            base_backup_id=restored_backup,
            source_environment_id=env,
            target_environment_id=env,
            target_type="same",
            restore_type="db",
            requested_by="alice",
            requested_at=at[0],
        ),
        org,
        env,
    )
    await send(
        RESTORE_EVENTS,
        RestoreFailed(
            restore_id=restore_id,
            target_environment_id=env,
            error="pg_restore failed",
            failed_at=at[1],
        ),
        org,
        env,
    )

    raised = await alert_events.until(8)
    backup_alert = alert_id_of(org, environment_subject(env, "backup"), 1)
    dest_alert = alert_id_of(org, destination_subject(dest), 1)
    restore_alert = alert_id_of(org, environment_subject(env, "restore"), 1)
    foreign_alert = alert_id_of(org, environment_subject(foreign_env, "backup"), 1)
    assert sorted(e.message_type for e in raised) == sorted(
        ["alert.AlertRaised"] * 7 + ["alert.AlertRepeated"]
    )
    kinds = {e.payload["kind"] for e in raised if e.message_type == "alert.AlertRaised"}
    assert kinds == {
        "backup_failed",
        "destination_unreachable",
        "backup_cleanup_failed",
        "wal_archiving_stalled",
        "schedule_missed",
        "restore_failed",
    }
    first, repeated = of(raised, backup_alert)
    assert first.payload["title"] == 'Backup of environment "shop-prod" failed'
    assert first.payload["projectId"] == str(project)
    assert "password authentication failed" in first.payload["message"]
    assert (repeated.message_type, repeated.payload["occurrences"]) == ("alert.AlertRepeated", 2)
    assert repeated.payload["backupId"] == str(b2)
    [dest_raised] = of(raised, dest_alert)
    assert dest_raised.payload["title"] == 'Destination "vault" is unreachable'
    assert dest_raised.environment_id is None
    assert dest_raised.payload["destinationId"] == str(dest)
    [restore_raised] = of(raised, restore_alert)
    assert restore_raised.payload["backupId"] == str(restored_backup)
    assert restore_raised.payload["restoreId"] == str(restore_id)
    [foreign] = of(raised, foreign_alert)
    assert "their-secret" not in foreign.payload["title"] + foreign.payload["message"]
    assert foreign.payload["projectId"] is None
    # One alert's events share a partition: keyed by its environment, else organization.
    for key, envelope in alert_events.seen:
        assert key == envelope.key
    assert {k for k, e in alert_events.seen if e.aggregate_id == dest_alert} == {str(org).encode()}

    # Successes resolve; commands mark; an unknown alert's command does nothing.
    await send(
        BACKUP_EVENTS,
        BackupCompleted(
            backup_id=uuid.uuid4(),
            environment_id=env,
            size_bytes=1,
            checksum=CHECKSUM,
            compression="zstd",
            completed_at=at[3],
            duration_ms=1,
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS,
        BackupUploaded(
            backup_id=uuid.uuid4(),
            environment_id=env,
            destination_id=dest,
            location="x",
            size_bytes=1,
            uploaded_at=at[3],
        ),
        org,
        env,
    )
    await send(
        BACKUP_EVENTS, BackupDeleted(backup_id=b1, environment_id=env, deleted_at=at[3]), org, env
    )
    await send(
        BACKUP_EVENTS,
        WalArchivingStatusChanged(
            environment_id=env, organization_id=org, status="active", changed_at=at[3]
        ),
        org,
        env,
    )
    await send(
        SCHEDULE_EVENTS,
        ScheduleFired(
            schedule_id=uuid.uuid4(),
            organization_id=org,
            environment_id=env,
            type="db",
            backup_id=uuid.uuid4(),
            scheduled_for=at[3],
            fired_at=at[3],
        ),
        org,
        env,
    )
    await send(
        RESTORE_EVENTS,
        RestoreCompleted(
            restore_id=uuid.uuid4(), target_environment_id=env, completed_at=at[3], duration_ms=1
        ),
        org,
        env,
    )
    for command in (
        MarkAlertRead(
            alert_id=backup_alert,
            organization_id=org,
            environment_id=env,
            requested_by="alice",
            requested_at=at[4],
        ),
        MarkAlertRead(
            alert_id=backup_alert,
            organization_id=org,
            environment_id=env,
            requested_by="alice",
            requested_at=at[5],
        ),
        DismissAlert(
            alert_id=backup_alert,
            organization_id=org,
            environment_id=env,
            requested_by="bob",
            requested_at=at[4],
        ),
        DismissAlert(
            alert_id=backup_alert,
            organization_id=other,
            environment_id=env,
            requested_by="mallory",
            requested_at=at[4],
        ),
        MarkAlertRead(
            alert_id=uuid.uuid4(),
            organization_id=org,
            environment_id=env,
            requested_by="alice",
            requested_at=at[4],
        ),
    ):
        await send(ALERT_COMMANDS, command, command.organization_id, env)

    everything = await alert_events.until(8 + 6 + 2)
    later = everything[8:]
    assert sorted(e.message_type for e in later) == sorted(
        ["alert.AlertResolved"] * 6 + ["alert.AlertRead", "alert.AlertDismissed"]
    )
    backup_events = of(everything, backup_alert)
    assert [e.message_type for e in backup_events][:2] == [
        "alert.AlertRaised",
        "alert.AlertRepeated",
    ]
    [read] = [e for e in backup_events if e.message_type == "alert.AlertRead"]
    assert read.payload["readAt"] == "2026-11-30T08:04:00.000000Z"
    [dismissed] = [e for e in backup_events if e.message_type == "alert.AlertDismissed"]
    assert dismissed.payload["dismissedBy"] == "bob"
    resolved = {e.aggregate_id for e in later if e.message_type == "alert.AlertResolved"}
    opened = {e.aggregate_id for e in raised if e.message_type == "alert.AlertRaised"}
    # Every alert but the one of the other environment (whose backups did not complete).
    assert resolved == opened - {foreign_alert}
    stored = service.app.get_alert(backup_alert)
    assert stored is not None
    assert stored.occurrences == 2
    assert stored.resolved_at == at[3]


async def test_a_redelivered_or_republished_event_changes_nothing(
    service: Service,
    publisher: Publisher,
    alert_events: AlertEvents,
    database: str,
    kafka_bootstrap: str,
) -> None:
    org, env = uuid.uuid4(), uuid.uuid4()
    failed = Envelope.wrap(
        BackupFailed(backup_id=uuid.uuid4(), environment_id=env, error="boom", failed_at=T0),
        producer="backup-runner",
        organization_id=org,
        environment_id=env,
        message_id=uuid.uuid4(),
    )
    await publisher.send(BACKUP_EVENTS, failed)
    await publisher.send(BACKUP_EVENTS, failed)  # a relay that published it again
    missed = await publisher.event(
        SCHEDULE_EVENTS,
        ScheduleMissed(
            schedule_id=uuid.uuid4(),
            organization_id=org,
            environment_id=env,
            type="db",
            scheduled_for=T0,
            first_scheduled_for=T0,
            missed_count=1,
            reason="down",
            detected_at=T0,
        ),
        org,
        env,
    )
    await publisher.send(SCHEDULE_EVENTS, missed)
    assert [e.message_type for e in await alert_events.until(2)] == ["alert.AlertRaised"] * 2
    await service.stop()

    # The same records delivered again: another consumer group reads every topic from its
    # start into the same store. Then one new event per topic, each on the partition of
    # the old ones, shows the consumer got past them.
    again = Service(database, kafka_bootstrap, service.topics, f"test-alerts-{uuid.uuid4()}")
    await again.start()
    try:
        backup_alert = alert_id_of(org, environment_subject(env, "backup"), 1)
        await publisher.event(
            BACKUP_EVENTS,
            BackupCompleted(
                backup_id=uuid.uuid4(),
                environment_id=env,
                size_bytes=1,
                checksum=CHECKSUM,
                compression="zstd",
                completed_at=T0 + timedelta(minutes=1),
                duration_ms=1,
            ),
            org,
            env,
        )
        await publisher.event(
            SCHEDULE_EVENTS,
            ScheduleFired(
                schedule_id=uuid.uuid4(),
                organization_id=org,
                environment_id=env,
                type="db",
                backup_id=uuid.uuid4(),
                scheduled_for=T0,
                fired_at=T0 + timedelta(minutes=1),
            ),
            org,
            env,
        )
        await publisher.event(
            ALERT_COMMANDS,
            MarkAlertRead(
                alert_id=backup_alert,
                organization_id=org,
                environment_id=env,
                requested_by="alice",
                requested_at=T0,
            ),
            org,
            env,
        )
        await publisher.event(
            RESTORE_EVENTS,
            RestoreFailed(
                restore_id=uuid.uuid4(), target_environment_id=env, error="x", failed_at=T0
            ),
            org,
            env,
        )
        everything = await alert_events.until(6)
        alert = again.app.get_alert(backup_alert)
    finally:
        await again.stop()
    assert sorted(e.message_type for e in everything[2:]) == sorted(
        ["alert.AlertResolved", "alert.AlertResolved", "alert.AlertRead", "alert.AlertRaised"]
    )
    assert alert is not None
    assert alert.occurrences == 1
