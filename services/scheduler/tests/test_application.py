"""The scheduler's event store on the in-memory recorder: retention's expiries, and what
the relay publishes for each stored event."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import Tracking
from tidemark_contracts import BACKUP_COMMANDS, SCHEDULE_EVENTS, event_message_id
from tidemark_contracts.backup import DeleteBackup, RequestBackup
from tidemark_contracts.schedule import (
    BackupExpired,
    ConfigureSchedule,
    ScheduleConfigured,
    ScheduleFired,
    ScheduleMissed,
    ScheduleSettings,
)
from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.domain import EXPIRED_MEMORY, FireTargets, Schedule
from tidemark_schedules import ids
from tidemark_schedules.retention import BackupFacts, Deleted

T0 = datetime(2026, 1, 5, 11, 59, 30, tzinfo=UTC)
ORG = uuid.uuid4()
DESTINATION = uuid.uuid4()
TARGETS = FireTargets(
    project_id=uuid.UUID(int=1),
    database={"host": "db.internal", "port": 5432, "dbname": "shop", "user": "backup"},
    destinations=[
        {
            "destinationId": str(DESTINATION),
            "name": "local",
            "type": "local",
            "config": {"kind": "local", "path": "backups"},
        }
    ],
)


def configured(app: SchedulerApplication, env: uuid.UUID) -> uuid.UUID:
    command = ConfigureSchedule(
        schedule_id=ids.schedule_id(env),
        organization_id=ORG,
        project_id=uuid.UUID(int=1),
        environment_id=env,
        revision=1,
        settings=ScheduleSettings(
            db_frequency="hourly", db_cron="0 * * * *", destination_ids=[DESTINATION]
        ),
        requested_by="user:test",
        created_at=T0,
        updated_at=T0,
    )
    assert app.configure(command, Tracking("c/schedule.commands:0", 1))
    return ids.schedule_id(env)


def facts(created_at: datetime) -> BackupFacts:
    return BackupFacts(uuid.uuid4(), "db", "scheduled", "completed", created_at, 10)


def test_expire_backups_records_each_backup_once() -> None:
    app = SchedulerApplication()
    env = uuid.uuid4()
    schedule_id = configured(app, env)
    old, older = facts(T0 - timedelta(days=3)), facts(T0 - timedelta(days=4))
    decided = T0 + timedelta(minutes=1)
    assert app.expire_backups(env, [Deleted(old, "daily: beyond 2")], decided) == 1
    assert (
        app.expire_backups(env, [Deleted(old, "daily: beyond 2"), Deleted(older, "x")], decided)
        == 1
    )
    assert app.expire_backups(env, [Deleted(old, "daily: beyond 2")], decided) == 0
    schedule = app.get_schedule(schedule_id)
    assert schedule is not None
    assert set(schedule.expired) == {str(old.backup_id), str(older.backup_id)}


def test_expire_backups_of_an_environment_without_schedule_records_nothing() -> None:
    app = SchedulerApplication()
    assert app.expire_backups(uuid.uuid4(), [Deleted(facts(T0), "x")], T0) == 0


def test_every_stored_event_is_relayed_as_its_contract() -> None:
    app = SchedulerApplication()
    env = uuid.uuid4()
    schedule_id = configured(app, env)
    slot = datetime(2026, 1, 5, 12, tzinfo=UTC)
    # Down until 13:05: 12:00 is missed, 13:00 fires 5 minutes late.
    now = datetime(2026, 1, 5, 13, 5, tzinfo=UTC)
    outcome = app.fire_due(schedule_id, "db", slot, now, timedelta(minutes=15), TARGETS)
    backup = ids.scheduled_backup_id(schedule_id, "db", slot + timedelta(hours=1))
    assert outcome.backup_id == backup
    expired = facts(T0)
    app.expire_backups(env, [Deleted(expired, "hourly: beyond 24")], now)

    relayed = []
    for notification in app.recorder.select_notifications(start=1, limit=100):
        event = app.mapper.to_domain_event(notification)
        mapped = app.to_envelope(event)
        assert mapped is not None
        topic, envelope = mapped
        assert envelope.message_id == event_message_id(schedule_id, event.originator_version)
        assert envelope.key == str(env).encode()
        assert envelope.organization_id == ORG
        message = topic.message_class(envelope.message_type).model_validate(envelope.payload)  # type: ignore[union-attr]
        relayed.append((topic, message))

    kinds = [(topic, type(message)) for topic, message in relayed]
    assert kinds == [
        (SCHEDULE_EVENTS, ScheduleConfigured),
        (SCHEDULE_EVENTS, ScheduleMissed),
        (SCHEDULE_EVENTS, ScheduleFired),
        (BACKUP_COMMANDS, RequestBackup),
        (SCHEDULE_EVENTS, BackupExpired),
        (BACKUP_COMMANDS, DeleteBackup),
    ]
    missed, fired, request = relayed[1][1], relayed[2][1], relayed[3][1]
    assert isinstance(missed, ScheduleMissed)
    assert (missed.first_scheduled_for, missed.scheduled_for, missed.missed_count) == (
        slot,
        slot,
        1,
    )
    assert isinstance(fired, ScheduleFired)
    assert (fired.backup_id, fired.late_seconds) == (backup, 300.0)
    assert isinstance(request, RequestBackup)
    assert request.backup_id == backup
    assert (request.trigger, request.requested_by, request.label) == (
        "scheduled",
        "scheduler",
        None,
    )
    assert request.requested_at == slot + timedelta(hours=1)  # the slot, also when late
    assert [d.destination_id for d in request.destinations] == [DESTINATION]
    assert request.database.host == "db.internal"
    expiry, deletion = relayed[4][1], relayed[5][1]
    assert isinstance(expiry, BackupExpired)
    assert (expiry.backup_id, expiry.rule, expiry.created_at) == (
        expired.backup_id,
        "hourly: beyond 24",
        T0,
    )
    assert isinstance(deletion, DeleteBackup)
    assert (deletion.backup_id, deletion.requested_by) == (
        expired.backup_id,
        "scheduler:retention",
    )


def test_the_environment_index_keeps_moves_and_finds_by_partition_on_postgresql(
    create_database: Callable[..., str],
) -> None:
    # Real PostgreSQL: the index table's partition column, added to a table from before it
    # was kept (whose rows have none), upserted per command, read back per partition.
    import psycopg
    from tidemark_scheduler.application import open_store

    url = create_database("own")
    app = open_store(url, "scheduler_store")
    try:
        found = app.index_table()
        assert found is not None
        _, table = found
        legacy, moved, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER TABLE {} DROP COLUMN command_partition").format(table)
            )
            conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (%s)").format(table), (legacy,))
        app.ensure_index()  # the column is added; the old row keeps NULL

        app.remember_environment(moved, 9)
        app.remember_environment(moved, 9)  # a redelivery
        app.remember_environment(other, 3)
        assert set(app.scheduled_environments({9})) == {(moved, 9), (legacy, None)}
        assert set(app.scheduled_environments({3, 4})) == {(other, 3), (legacy, None)}
        app.remember_environment(moved, 10)  # partitions were added: it moves
        assert set(app.scheduled_environments({9})) == {(legacy, None)}
        app.remember_environment(moved, None)  # no partition known: the kept one stays
        assert set(app.scheduled_environments({10})) == {(moved, 10), (legacy, None)}
        app.remember_environment(legacy, 2)
        assert set(app.scheduled_environments({9})) == set()
        assert set(app.scheduled_environments({2})) == {(legacy, 2)}
    finally:
        app.close()


def test_expired_backups_are_remembered_for_a_bounded_time() -> None:
    app = SchedulerApplication()
    env = uuid.uuid4()
    schedule_id = configured(app, env)
    per_day, days = 20, 70
    recent: list[BackupFacts] = []
    for day in range(days):
        decided = T0 + timedelta(days=day)
        recent = [facts(decided - timedelta(days=30)) for _ in range(per_day)]
        assert app.expire_backups(env, [Deleted(b, "daily: beyond 2") for b in recent], decided)
        schedule = app.get_schedule(schedule_id)
        assert schedule is not None
        # Ids and decision times only, of the last EXPIRED_MEMORY (7 days and today).
        assert len(schedule.expired) <= per_day * (EXPIRED_MEMORY.days + 1)
    assert all(isinstance(at, datetime) for at in schedule.expired.values())
    # The latest expiries are still recognised: expiring them again records nothing.
    last = T0 + timedelta(days=days - 1, hours=1)
    assert app.expire_backups(env, [Deleted(b, "daily: beyond 2") for b in recent], last) == 0
    # A snapshot holds the bounded map (loading from it sees the same one).
    app.take_snapshot(schedule_id)
    snapshot = list(app.snapshots.get(schedule_id))[-1]  # type: ignore[union-attr]
    assert len(snapshot.state["expired"]) <= per_day * (EXPIRED_MEMORY.days + 1)


def test_a_snapshot_from_before_the_expiry_bound_still_loads() -> None:
    app = SchedulerApplication()
    env = uuid.uuid4()
    schedule_id = configured(app, env)
    old = facts(T0 - timedelta(days=3))
    assert app.expire_backups(env, [Deleted(old, "daily: beyond 2")], T0) == 1
    schedule = app.get_schedule(schedule_id)
    assert schedule is not None
    taken = Snapshot.take(schedule)
    # As version 1 wrote it: no class version, expiries mapped to their rules.
    state = {k: v for k, v in taken.state.items() if k != "class_version"}
    state["expired"] = {str(old.backup_id): "daily: beyond 2"}
    legacy = Snapshot(
        originator_id=taken.originator_id,
        originator_version=taken.originator_version,
        timestamp=taken.timestamp,
        topic=taken.topic,
        state=state,
    )
    loaded = legacy.mutate(None)
    assert isinstance(loaded, Schedule)
    assert list(loaded.expired) == [str(old.backup_id)]
    assert not loaded.expire(old.backup_id, "db", old.created_at, "daily: beyond 2", T0)
    # Its decision time unknown, it is forgotten at the next expiry.
    new = facts(T0 - timedelta(days=2))
    assert loaded.expire(new.backup_id, "db", new.created_at, "daily: beyond 2", T0)
    assert list(loaded.expired) == [str(new.backup_id)]
