"""The backups read model's rule: row + event → row, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from tidemark_api_gateway.projection import next_row
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    DestinationRef,
)
from tidemark_platform.projection import OutOfOrder

ORG, ENV, BACKUP, DEST = (uuid.uuid4() for _ in range(4))
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 5, 1, 10, 0, 5, tzinfo=UTC)


def requested(requested_at: datetime = T0) -> BackupRequested:
    return BackupRequested(
        backup_id=BACKUP,
        organization_id=ORG,
        project_id=uuid.uuid4(),
        environment_id=ENV,
        type="db",
        trigger="scheduled",
        label="nightly",
        requested_by="scheduler",
        requested_at=requested_at,
        destinations=[DestinationRef(destination_id=DEST, name="disk", type="local")],
    )


STARTED = BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0)


def test_a_backup_moves_from_requested_to_completed() -> None:
    row = next_row(None, requested())
    assert row["status"] == "pending"
    assert row["trigger"] == "scheduled"
    assert row["destinations"][0]["status"] == "pending"
    row = next_row(row, STARTED)
    assert row["status"] == "running"
    uploaded = BackupUploaded(
        backup_id=BACKUP,
        environment_id=ENV,
        destination_id=DEST,
        location="/x",
        size_bytes=42,
        uploaded_at=T1,
    )
    row = next_row(row, uploaded)
    assert row["destinations"][0] | {"uploadedAt": None} == {
        "destinationId": str(DEST),
        "name": "disk",
        "type": "local",
        "status": "uploaded",
        "location": "/x",
        "sizeBytes": 42,
        "uploadedAt": None,
    }
    completed = BackupCompleted(
        backup_id=BACKUP,
        environment_id=ENV,
        size_bytes=42,
        checksum="sha256:" + "a" * 64,
        compression="zstd",
        completed_at=T1,
        duration_ms=5000,
    )
    row = next_row(row, completed)
    assert row["status"] == "completed"
    assert row["duration_ms"] == 5000
    # A db backup has no WAL range.
    assert (row["wal_start_lsn"], row["wal_end_lsn"]) == (None, None)


def test_a_full_backups_completion_shows_its_wal_range() -> None:
    row = next_row(next_row(None, requested()), STARTED)
    completed = BackupCompleted(
        backup_id=BACKUP,
        environment_id=ENV,
        size_bytes=42,
        checksum="sha256:" + "a" * 64,
        compression="zstd",
        completed_at=T1,
        duration_ms=5000,
        wal_start_lsn="0/2000028",
        wal_end_lsn="0/20394F0",
    )
    row = next_row(row, completed)
    assert (row["wal_start_lsn"], row["wal_end_lsn"]) == ("0/2000028", "0/20394F0")


def test_a_failure_marks_the_destinations_not_reached() -> None:
    row = next_row(next_row(None, requested()), STARTED)
    row = next_row(
        row, BackupFailed(backup_id=BACKUP, environment_id=ENV, error="boom", failed_at=T1)
    )
    assert row["status"] == "failed"
    assert row["error"] == "boom"
    assert row["duration_ms"] == 5000
    assert row["destinations"][0]["status"] == "failed"


def test_the_gateways_pending_row_keeps_its_creation_time_when_the_event_arrives() -> None:
    pending = next_row(None, requested(requested_at=T1))
    row = next_row(pending, requested(requested_at=T0))
    assert row["created_at"] == T1
    assert row["destinations"] == pending["destinations"]


def test_an_event_before_its_creation_is_refused_for_a_retry() -> None:
    with pytest.raises(OutOfOrder):
        next_row(None, STARTED)


def test_a_new_attempt_runs_again_and_forgets_the_earlier_attempts_uploads() -> None:
    row = next_row(next_row(None, requested()), STARTED)
    uploaded = BackupUploaded(
        backup_id=BACKUP,
        environment_id=ENV,
        destination_id=DEST,
        location="/disk/b",
        size_bytes=7,
        uploaded_at=T0,
    )
    row = next_row(row, uploaded)
    assert row["destinations"][0]["status"] == "uploaded"
    again = BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T1, attempt=2)
    row = next_row(row, again)
    assert (row["status"], row["started_at"]) == ("running", T1)
    assert row["destinations"][0]["status"] == "pending"
    assert row["destinations"][0]["location"] is None


def test_a_deleted_backup_keeps_its_row_with_its_destinations_deleted() -> None:
    row = next_row(next_row(None, requested()), STARTED)
    row = next_row(
        row,
        BackupUploaded(
            backup_id=BACKUP,
            environment_id=ENV,
            destination_id=DEST,
            location="e/b.db.pgdump.zst",
            size_bytes=7,
            uploaded_at=T0,
        ),
    )
    row = next_row(
        row,
        BackupDeletionRequested(
            backup_id=BACKUP, environment_id=ENV, requested_by="u", requested_at=T1
        ),
    )
    assert row["status"] == "deleting"
    assert row["destinations"][0]["status"] == "uploaded"
    failed = BackupCleanupFailed(
        backup_id=BACKUP,
        environment_id=ENV,
        destination_id=DEST,
        error="destination 'disk': removing the artifact failed: Operation not permitted",
        attempt=1,
        failed_at=T1,
    )
    row = next_row(row, failed)
    assert (row["status"], row["error"]) == ("deleting", failed.error)
    row = next_row(row, BackupDeleted(backup_id=BACKUP, environment_id=ENV, deleted_at=T1))
    assert (row["status"], row["error"]) == ("deleted", None)
    assert row["destinations"][0]["status"] == "deleted"
    assert row["destinations"][0]["location"] == "e/b.db.pgdump.zst"
    assert row["label"] == "nightly"
