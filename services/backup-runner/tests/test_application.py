"""The backup-runner's event store on the in-memory recorder: what it relays, and to whom."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from eventsourcing.persistence import Tracking
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup
from tidemark_contracts import BACKUP_EVENTS, Envelope
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupDeleted,
    BackupDeletionRequested,
    DatabaseTarget,
    DeleteBackup,
    RequestBackup,
)
from tidemark_devstack.e2e import backup_request

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request() -> RequestBackup:
    return backup_request(database=DatabaseTarget(host="h", port=1, dbname="d", user="u"))


def run_to_completion(app: BackupRunnerApplication, backup_id: uuid.UUID) -> None:
    backup = app.get_backup(backup_id)
    backup.start(T0, None)
    backup.record_upload(backup.destinations[0]["destination_id"], "/x/a", 10, T0)
    backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)
    app.save(backup)


def relayed(app: BackupRunnerApplication) -> list[Envelope]:
    envelopes = []
    for notification in app.recorder.select_notifications(start=1, limit=100):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        assert mapped is not None
        topic, envelope = mapped
        assert topic is BACKUP_EVENTS
        envelopes.append(envelope)
    return envelopes


def test_every_event_of_a_backup_carries_the_requests_correlation_id() -> None:
    app = BackupRunnerApplication()
    command, correlation_id = request(), uuid.uuid4()
    assert app.request_backup(command, Tracking("backup.commands:0", 1), correlation_id)
    run_to_completion(app, command.backup_id)
    envelopes = relayed(app)
    assert [e.message_type.rsplit(".", 1)[1] for e in envelopes] == [
        "BackupRequested",
        "BackupStarted",
        "BackupUploaded",
        "BackupCompleted",
    ]
    assert {e.correlation_id for e in envelopes} == {correlation_id}
    assert app.get_backup(command.backup_id).correlation_id == correlation_id


def test_a_relay_restarted_mid_backup_still_knows_the_correlation_id(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "db")}
    app = BackupRunnerApplication(env)
    command, correlation_id = request(), uuid.uuid4()
    app.request_backup(command, Tracking("backup.commands:0", 1), correlation_id)
    run_to_completion(app, command.backup_id)
    # A restarted process meets the milestones without having seen the creation event.
    restarted = BackupRunnerApplication(env)
    last = restarted.recorder.select_notifications(start=1, limit=100)[-1]
    mapped = restarted.to_envelope(restarted.mapper.to_domain_event(last))
    assert mapped is not None
    assert mapped[1].message_type == "backup.BackupCompleted"
    assert mapped[1].correlation_id == correlation_id


def test_a_command_without_a_correlation_id_relays_none() -> None:
    app = BackupRunnerApplication()
    command = request()
    app.request_backup(command, Tracking("backup.commands:0", 1))
    (envelope,) = relayed(app)
    assert envelope.correlation_id is None


def test_a_request_stored_before_correlation_ids_existed_still_loads_and_relays() -> None:
    app = BackupRunnerApplication()
    command = request()
    backup = Backup(
        backup_id=command.backup_id,
        organization_id=command.organization_id,
        project_id=command.project_id,
        environment_id=command.environment_id,
        type="db",
        trigger="manual",
        label=None,
        requested_by="t",
        requested_at=T0,
        database={},
        destinations=[],
        correlation_id=None,
    )
    (created,) = backup.collect_events()
    stored = app.mapper.to_stored_event(created)
    # The state as the runner wrote it before the attribute existed.
    state = app.mapper.transcoder.decode(stored.state)
    del state["correlation_id"]
    app.recorder.insert_events([replace(stored, state=app.mapper.transcoder.encode(state))])
    assert app.get_backup(command.backup_id).correlation_id is None
    (envelope,) = relayed(app)
    assert envelope.correlation_id is None
    assert envelope.aggregate_id == command.backup_id


# -- deletion -----------------------------------------------------------------------------


def delete_command(
    command: RequestBackup, organization_id: uuid.UUID | None = None
) -> DeleteBackup:
    return DeleteBackup(
        backup_id=command.backup_id,
        organization_id=organization_id or command.organization_id,
        environment_id=command.environment_id,
        requested_by="deleter",
        requested_at=T0,
    )


def test_a_deletion_is_recorded_once_and_relayed_as_its_contract() -> None:
    app = BackupRunnerApplication()
    command, correlation_id = request(), uuid.uuid4()
    app.request_backup(command, Tracking("backup.commands:0", 1), correlation_id)
    run_to_completion(app, command.backup_id)
    delete = delete_command(command)
    assert app.request_deletion(delete, Tracking("backup.commands:0", 2)) == "accepted"
    assert app.request_deletion(delete, Tracking("backup.commands:0", 3)) == "already"
    backup = app.get_backup(command.backup_id)
    destination_id = backup.destinations[0]["destination_id"]
    backup.record_cleanup_failure(destination_id, "destination 'n': nope", 1, True, T0)
    backup.mark_deleted(T0)
    app.save(backup)
    envelopes = relayed(app)[-3:]
    assert [e.message_type for e in envelopes] == [
        "backup.BackupDeletionRequested",
        "backup.BackupCleanupFailed",
        "backup.BackupDeleted",
    ]
    assert {e.correlation_id for e in envelopes} == {correlation_id}
    assert all(e.environment_id == command.environment_id for e in envelopes)
    requested, failed, deleted = (
        BACKUP_EVENTS.message_class(e.message_type).model_validate(e.payload)  # type: ignore[union-attr]
        for e in envelopes
    )
    assert isinstance(requested, BackupDeletionRequested)
    assert (requested.requested_by, requested.requested_at) == ("deleter", T0)
    assert isinstance(failed, BackupCleanupFailed)
    assert failed.destination_id == uuid.UUID(str(destination_id))
    assert (failed.error, failed.attempt, failed.final) == ("destination 'n': nope", 1, True)
    assert isinstance(deleted, BackupDeleted)
    assert deleted.deleted_at == T0


def test_a_deletion_of_a_pending_backup_is_refused_and_records_nothing() -> None:
    app = BackupRunnerApplication()
    command = request()
    app.request_backup(command, Tracking("backup.commands:0", 1))
    assert app.request_deletion(delete_command(command), Tracking("backup.commands:0", 2)) == (
        "refused"
    )
    assert app.get_backup(command.backup_id).status == "pending"
    assert len(relayed(app)) == 1


def test_a_deletion_of_an_unknown_or_foreign_backup_is_no_effect() -> None:
    app = BackupRunnerApplication()
    command = request()
    assert app.request_deletion(delete_command(command), Tracking("c:0", 1)) == "unknown"
    app.request_backup(command, Tracking("backup.commands:0", 1))
    run_to_completion(app, command.backup_id)
    foreign = delete_command(command, organization_id=uuid.uuid4())
    assert app.request_deletion(foreign, Tracking("backup.commands:0", 2)) == "unknown"
    assert app.get_backup(command.backup_id).status == "completed"


def test_a_full_backups_wal_range_is_relayed_on_its_completion() -> None:
    app = BackupRunnerApplication()
    command = request().model_copy(update={"type": "full"})
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    backup = app.get_backup(command.backup_id)
    backup.start(T0, None)
    backup.record_upload(backup.destinations[0]["destination_id"], "e/b.full.tar.zst", 10, T0)
    backup.complete(
        10,
        "sha256:" + "0" * 64,
        "zstd",
        T0,
        wal_start_lsn="0/2000028",
        wal_end_lsn="0/2000100",
        wal_timeline=3,
    )
    app.save(backup)
    completed = relayed(app)[-1]
    assert completed.message_type == "backup.BackupCompleted"
    assert (completed.payload["walStartLsn"], completed.payload["walEndLsn"]) == (
        "0/2000028",
        "0/2000100",
    )
    assert completed.payload["walTimeline"] == 3
    stored = app.get_backup(command.backup_id)
    assert (stored.wal_start_lsn, stored.wal_end_lsn) == ("0/2000028", "0/2000100")


def test_a_completion_stored_before_wal_ranges_existed_still_loads_and_relays_none() -> None:
    app = BackupRunnerApplication()
    command = request()
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    backup = app.get_backup(command.backup_id)
    backup.start(T0, None)
    backup.record_upload(backup.destinations[0]["destination_id"], "/x/a", 10, T0)
    backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)
    events = backup.collect_events()
    stored_events = []
    for event in events:
        stored = app.mapper.to_stored_event(event)
        if isinstance(event, Backup.Completed):
            # The state as the runner wrote it before the attributes existed.
            state = app.mapper.transcoder.decode(stored.state)
            del state["wal_start_lsn"], state["wal_end_lsn"], state["wal_timeline"]
            stored = replace(stored, state=app.mapper.transcoder.encode(state))
        stored_events.append(stored)
    app.recorder.insert_events(stored_events)
    loaded = app.get_backup(command.backup_id)
    assert loaded.status == "completed"
    assert (loaded.wal_start_lsn, loaded.wal_end_lsn) == (None, None)
    completed = relayed(app)[-1]
    assert completed.payload["walStartLsn"] is None
    assert completed.payload["walTimeline"] is None
