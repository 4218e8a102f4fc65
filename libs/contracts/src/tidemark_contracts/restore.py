"""Messages of the restore context: the command that starts a restore, the events of the
``Restore`` aggregate (owned by the restore-runner) and its progress ticks."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from tidemark_contracts.backup import BackupType, DatabaseTarget, DestinationTarget
from tidemark_contracts.base import Message, UtcDatetime, WireModel
from tidemark_contracts.catalog import ClusterSpec
from tidemark_contracts.wal import SEGMENT_NAME_PATTERN

RestoreTargetType = Literal["same", "other", "new"]
RestoreStatus = Literal["pending", "running", "completed", "failed"]


class ArtifactCopy(WireModel):
    """One destination's copy of the artifact to restore: where the destination is and
    where in it the artifact lies (the backup's recorded ``location``)."""

    destination: DestinationTarget
    location: str


class RestoreSource(WireModel):
    """The backup whose artifact is laid down: the path's backup, or for a point-in-time
    restore the newest ``full`` backup completed before ``pitrTimestamp`` (the base)."""

    backup_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    size_bytes: int = Field(ge=0)
    checksum: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    compression: str
    wal_start_lsn: str | None = None
    wal_end_lsn: str | None = None
    wal_timeline: int | None = None
    copies: list[ArtifactCopy] = Field(min_length=1)
    # Point-in-time restores: the registered destinations holding the planned WAL
    # segments (fetched from these and the copies' destinations), and the plan's last
    # segment (the runner waits until its own view of the archive holds it).
    wal_destinations: list[DestinationTarget] = Field(default_factory=list)
    wal_until_segment: str | None = Field(default=None, pattern=SEGMENT_NAME_PATTERN)


class RestoreTarget(WireModel):
    """The environment restored into, as the runner needs it (references, never secrets)."""

    environment_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    database: DatabaseTarget
    cluster: ClusterSpec | None = None
    files_path: str | None = None


class RequestRestore(Message):
    """Command (gateway → restore-runner, keyed by the TARGET environment): restore
    ``source`` into ``target``. The gateway mints ``restoreId``; a redelivery has no
    second effect. With ``safetyBackupId`` the gateway has also issued a ``RequestBackup``
    of the target with that id (same transaction): the runner waits for it to complete
    before it touches the target, and fails the restore when it fails."""

    message_type: ClassVar[str] = "restore.RequestRestore"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    organization_id: uuid.UUID
    backup_id: uuid.UUID
    source_environment_id: uuid.UUID
    target_type: RestoreTargetType
    pitr_timestamp: UtcDatetime | None = None
    safety_backup_id: uuid.UUID | None = None
    requested_by: str
    requested_at: UtcDatetime
    source: RestoreSource
    target: RestoreTarget


class RestoreRequested(Message):
    """Event: the restore is accepted (the Restore resource as it starts, ``pending``)."""

    message_type: ClassVar[str] = "restore.RestoreRequested"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    backup_id: uuid.UUID
    base_backup_id: uuid.UUID
    source_environment_id: uuid.UUID
    target_environment_id: uuid.UUID
    target_type: RestoreTargetType
    restore_type: BackupType
    pitr_timestamp: UtcDatetime | None = None
    safety_backup_id: uuid.UUID | None = None
    requested_by: str
    requested_at: UtcDatetime


class RestoreStarted(Message):
    """Event: an instance took the restore on (``attempt`` counts takeovers)."""

    message_type: ClassVar[str] = "restore.RestoreStarted"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    target_environment_id: uuid.UUID
    started_at: UtcDatetime
    attempt: int = Field(default=1, ge=1)


class RestoreMilestone(Message):
    """Event: a step the restore has passed and will not repeat: ``safety_backup``
    (completed), ``verified`` (artifact checksum and manifest), ``target_replaced`` (the
    point after which the target holds the restored data)."""

    message_type: ClassVar[str] = "restore.RestoreMilestone"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    target_environment_id: uuid.UUID
    milestone: Literal["safety_backup", "verified", "target_replaced"]
    message: str | None = None
    at: UtcDatetime


class RestoreCompleted(Message):
    message_type: ClassVar[str] = "restore.RestoreCompleted"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    target_environment_id: uuid.UUID
    completed_at: UtcDatetime
    duration_ms: int = Field(ge=0)


class RestoreFailed(Message):
    """Event: the restore ended without restoring. ``error`` says why (never a secret or a
    path of the runner's machine); ``targetUnchanged`` is true when the target was left
    (or put back) as it was."""

    message_type: ClassVar[str] = "restore.RestoreFailed"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    target_environment_id: uuid.UUID
    error: str
    target_unchanged: bool = True
    failed_at: UtcDatetime


class RestoreProgress(Message):
    """Ephemeral progress tick; only on the progress topic, never in an event store."""

    message_type: ClassVar[str] = "restore.RestoreProgress"
    version: Literal[1] = 1
    restore_id: uuid.UUID
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    status: RestoreStatus
    phase: str
    percent: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str | None = None
    at: UtcDatetime
