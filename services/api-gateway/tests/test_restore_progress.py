"""Restore progress streams run on the backup streams' code path (``ProgressHub`` with the
restores' kind): ticks are picked by restore id and named ``restoreId``."""

from __future__ import annotations

import uuid

from tidemark_api_gateway.progress import BACKUPS, RESTORES, Tick
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import BackupProgress
from tidemark_contracts.restore import RestoreProgress
from tidemark_platform.tail import TailRecord

ENVIRONMENT = uuid.uuid4()
ORGANIZATION = uuid.uuid4()


def record(message: RestoreProgress | BackupProgress, offset: int = 0) -> TailRecord:
    envelope = Envelope.wrap(
        message, producer="test", organization_id=ORGANIZATION, environment_id=ENVIRONMENT
    )
    return TailRecord(0, offset, b"k", envelope.to_bytes(), 0)


def restore_tick(restore_id: uuid.UUID, backup_id: uuid.UUID) -> RestoreProgress:
    return RestoreProgress(
        restore_id=restore_id,
        backup_id=backup_id,
        environment_id=ENVIRONMENT,
        status="running",
        phase="restoring",
        percent=40.0,
        bytes_done=4,
        bytes_total=10,
        at=utc_now(),
    )


def test_a_restore_tick_is_a_restore_streams_event_named_by_its_restore() -> None:
    restore_id, backup_id = uuid.uuid4(), uuid.uuid4()
    tick = Tick.of(record(restore_tick(restore_id, backup_id), offset=6), RESTORES)
    assert tick is not None
    assert tick.subject == restore_id
    assert tick.event_id == 7
    event = tick.as_event()
    assert event.event == "progress"
    assert '"restoreId":"' + str(restore_id) + '"' in str(event.data)
    assert "backupId" not in str(event.data)


def test_each_hub_kind_ignores_the_other_kinds_ticks() -> None:
    restore = record(restore_tick(uuid.uuid4(), uuid.uuid4()))
    backup = record(
        BackupProgress(
            backup_id=uuid.uuid4(),
            environment_id=ENVIRONMENT,
            status="running",
            phase="dumping",
            at=utc_now(),
        )
    )
    assert Tick.of(restore, BACKUPS) is None
    assert Tick.of(backup, RESTORES) is None
    assert Tick.of(backup, BACKUPS) is not None
