"""A backup's outcome per destination: one failing does not fail the backup."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tidemark_backup_runner.domain import Backup, BackupError

NOW = datetime(2026, 11, 29, tzinfo=UTC)
LOCAL, S3 = str(uuid.uuid4()), str(uuid.uuid4())


def running_backup() -> Backup:
    backup = Backup(
        backup_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        type="db",
        trigger="manual",
        label=None,
        requested_by="t",
        requested_at=NOW,
        database={},
        destinations=[
            {"destination_id": LOCAL, "name": "l", "type": "local"},
            {"destination_id": S3, "name": "s", "type": "s3"},
        ],
        correlation_id=None,
    )
    backup.start(NOW, None)
    return backup


def test_a_backup_completes_when_one_destination_failed_and_another_holds_it() -> None:
    backup = running_backup()
    backup.record_upload_failure(S3, "put_object failed: AccessDenied (HTTP 403)", NOW)
    backup.record_upload(LOCAL, "e/b.db.pgdump.zst", 10, NOW)
    backup.complete(10, "sha256:" + "a" * 64, "zstd", NOW + timedelta(seconds=1))
    assert backup.status == "completed"
    assert backup.failed_uploads == {S3: "put_object failed: AccessDenied (HTTP 403)"}
    failed = [e for e in backup.collect_events() if isinstance(e, Backup.UploadFailed)]
    assert [(e.destination_id, e.failed_at) for e in failed] == [(S3, NOW)]


def test_a_backup_without_any_destination_holding_it_cannot_complete() -> None:
    backup = running_backup()
    backup.record_upload_failure(S3, "gone", NOW)
    backup.record_upload_failure(LOCAL, "full", NOW)
    with pytest.raises(BackupError, match="no destination holds the artifact"):
        backup.complete(10, "sha256:" + "a" * 64, "zstd", NOW)
    backup.fail("no destination holds a verified copy", NOW)
    assert backup.status == "failed"


def test_an_undecided_destination_still_keeps_the_backup_from_completing() -> None:
    backup = running_backup()
    backup.record_upload(LOCAL, "e/b", 10, NOW)
    with pytest.raises(BackupError, match="not yet stored in every destination"):
        backup.complete(10, "sha256:" + "a" * 64, "zstd", NOW)


def test_a_failure_is_only_recorded_for_a_running_backups_own_undecided_destination() -> None:
    backup = running_backup()
    with pytest.raises(BackupError, match="not one of this backup's"):
        backup.record_upload_failure(str(uuid.uuid4()), "x", NOW)
    backup.record_upload(LOCAL, "e/b", 10, NOW)
    with pytest.raises(BackupError, match="already holds"):
        backup.record_upload_failure(LOCAL, "x", NOW)
    backup.record_upload_failure(S3, "x", NOW)
    backup.complete(10, "sha256:" + "a" * 64, "zstd", NOW)
    with pytest.raises(BackupError, match="completed"):
        backup.record_upload_failure(S3, "x", NOW)


def test_a_new_attempt_forgets_the_earlier_attempts_failures() -> None:
    backup = running_backup()
    backup.record_upload_failure(S3, "x", NOW)
    backup.start(NOW, None, attempt=2)
    assert backup.failed_uploads == {}
