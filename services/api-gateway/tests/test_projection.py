"""The backups read model's rule: row + event → row, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from tidemark_api_gateway.projection import OutOfOrder, apply_event
from tidemark_contracts import Envelope
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    DestinationRef,
)
from tidemark_contracts.base import Message

ORG, ENV, BACKUP, DEST = (uuid.uuid4() for _ in range(4))
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 5, 1, 10, 0, 5, tzinfo=UTC)


def envelope(message: Message, version: int) -> Envelope:
    return Envelope.wrap(
        message,
        producer="test",
        organization_id=ORG,
        environment_id=ENV,
        aggregate_id=BACKUP,
        aggregate_version=version,
    )


def requested() -> Envelope:
    return envelope(
        BackupRequested(
            backup_id=BACKUP,
            organization_id=ORG,
            project_id=uuid.uuid4(),
            environment_id=ENV,
            type="db",
            trigger="scheduled",
            label="nightly",
            requested_by="scheduler",
            requested_at=T0,
            destinations=[DestinationRef(destination_id=DEST, name="disk", type="local")],
        ),
        1,
    )


def test_a_backup_moves_from_requested_to_completed() -> None:
    row = apply_event(None, requested())
    assert row is not None
    assert row["status"] == "pending"
    assert row["trigger"] == "scheduled"
    assert row["destinations"][0]["status"] == "pending"
    row = apply_event(
        row, envelope(BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0), 2)
    )
    assert row is not None
    assert row["status"] == "running"
    uploaded = BackupUploaded(
        backup_id=BACKUP,
        environment_id=ENV,
        destination_id=DEST,
        location="/x",
        size_bytes=42,
        uploaded_at=T1,
    )
    row = apply_event(row, envelope(uploaded, 3))
    assert row is not None
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
    row = apply_event(row, envelope(completed, 4))
    assert row is not None
    assert row["status"] == "completed"
    assert row["version"] == 4
    assert row["duration_ms"] == 5000


def test_a_failure_marks_the_destinations_not_reached() -> None:
    row = apply_event(None, requested())
    row = apply_event(
        row, envelope(BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0), 2)
    )
    failed = BackupFailed(backup_id=BACKUP, environment_id=ENV, error="boom", failed_at=T1)
    row = apply_event(row, envelope(failed, 3))
    assert row is not None
    assert row["status"] == "failed"
    assert row["error"] == "boom"
    assert row["duration_ms"] == 5000
    assert row["destinations"][0]["status"] == "failed"


def test_the_gateways_pending_row_keeps_its_creation_time() -> None:
    pending = {"status": "pending", "created_at": T1, "destinations": [{"destinationId": "x"}]}
    row = apply_event(pending, requested())
    assert row is not None
    assert row["created_at"] == T1
    assert row["destinations"] == [{"destinationId": "x"}]


def test_an_event_before_its_creation_is_refused_for_a_retry() -> None:
    started = envelope(BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0), 2)
    with pytest.raises(OutOfOrder):
        apply_event(None, started)


def test_unknown_events_change_nothing() -> None:
    started = envelope(BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0), 2)
    unknown = started.model_copy(update={"message_type": "backup.BackupTeleported"})
    assert apply_event({"status": "running"}, unknown) is None


def test_a_new_attempt_runs_again_and_forgets_the_earlier_attempts_uploads() -> None:
    row = apply_event(None, requested())
    row = apply_event(
        row, envelope(BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0), 2)
    )
    uploaded = BackupUploaded(
        backup_id=BACKUP,
        environment_id=ENV,
        destination_id=DEST,
        location="/disk/b",
        size_bytes=7,
        uploaded_at=T0,
    )
    row = apply_event(row, envelope(uploaded, 3))
    assert row is not None
    assert row["destinations"][0]["status"] == "uploaded"
    again = BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T1, attempt=2)
    row = apply_event(row, envelope(again, 4))
    assert row is not None
    assert (row["status"], row["started_at"]) == ("running", T1)
    assert row["destinations"][0]["status"] == "pending"
    assert row["destinations"][0]["location"] is None
