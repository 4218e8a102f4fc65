"""The Backup aggregate's rules, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tidemark_backup_runner.domain import Backup, BackupError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def new_backup(destinations: int = 1) -> Backup:
    return Backup(
        backup_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        type="db",
        trigger="manual",
        label=None,
        requested_by="someone",
        requested_at=T0,
        database={"host": "h", "port": 5432, "dbname": "d", "user": "u", "password_ref": None},
        destinations=[{"destination_id": f"d{i}"} for i in range(destinations)],
        correlation_id=uuid.uuid4(),
    )


def test_the_issuer_chooses_the_id() -> None:
    backup = new_backup()
    assert backup.id == backup.backup_id
    assert backup.status == "pending"


def test_a_backup_completes_only_once_stored_in_every_destination() -> None:
    backup = new_backup(destinations=2)
    backup.start(T0, 100)
    backup.record_upload("d0", "/a", 10, T0)
    with pytest.raises(BackupError, match="every destination"):
        backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)
    backup.record_upload("d1", "/b", 10, T0)
    backup.complete(10, "sha256:" + "0" * 64, "zstd", T0 + timedelta(seconds=2))
    assert backup.status == "completed"
    assert backup.is_terminal
    events = backup.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Requested",
        "Started",
        "Uploaded",
        "Uploaded",
        "Completed",
    ]
    assert events[-1].duration_ms == 2000


def test_state_transitions_are_guarded() -> None:
    backup = new_backup()
    with pytest.raises(BackupError):
        backup.complete(1, "sha256:x", "zstd", T0)
    with pytest.raises(BackupError):
        backup.record_upload("d0", "/a", 1, T0)
    backup.start(T0, None)
    with pytest.raises(BackupError):
        backup.start(T0, None)
    with pytest.raises(BackupError, match="not one of this backup's"):
        backup.record_upload("elsewhere", "/a", 1, T0)
    backup.fail("pg_dump exited with 1: boom", T0)
    assert backup.status == "failed"
    assert backup.error == "pg_dump exited with 1: boom"
    with pytest.raises(BackupError):
        backup.fail("again", T0)


def test_a_pending_backup_can_fail_before_it_starts() -> None:
    backup = new_backup()
    backup.fail("credential reference 'env:X': environment variable is not set", T0)
    assert backup.status == "failed"
    assert backup.started_at is None
