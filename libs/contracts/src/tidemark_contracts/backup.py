"""Messages of the backup context: commands, domain events and progress ticks."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from tidemark_contracts.base import Message, UtcDatetime, WireModel
from tidemark_contracts.connection import connection_problems

BackupType = Literal["db", "full"]
BackupTrigger = Literal["manual", "scheduled"]
BackupStatus = Literal["pending", "running", "completed", "failed", "deleting", "deleted"]


class DatabaseTarget(WireModel):
    """How a runner reaches an environment's database. ``passwordRef`` is a reference
    (``env:NAME`` or ``file:/path``), never the secret itself."""

    host: str
    port: int
    dbname: str
    user: str
    password_ref: str | None = None

    def problems(self) -> dict[str, str]:
        """Fields that libpq would read as more than their value (``tidemark_contracts.
        connection``), with why; a runner connects only when this is empty."""
        return connection_problems(self.host, self.port, self.dbname, self.user)


# Limits of a local destination's path: Linux's NAME_MAX per directory name, and a bound
# on the whole that leaves room under PATH_MAX for the root, the organization and the key.
LOCAL_PATH_MAX_BYTES = 1024
LOCAL_NAME_MAX_BYTES = 255


def local_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a local destination's directory, or None when it can.

    The path is relative to the organization's directory under the operator's destination
    root: directory names joined by ``/``. The reason never repeats the path (errors become
    events, kept forever).
    """
    if path.startswith("/"):
        return "must be relative to the organization's directory, not absolute"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "must not contain NUL or control characters"
    if "\\" in path:
        return "must not contain backslashes; separate directories with '/'"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    names = path.split("/")
    if ".." in names:
        return "must not contain '..' components"
    if all(name in ("", ".") for name in names):
        # Not the organization's directory itself: a destination always names a
        # directory of its own, and the organization's directory stays the runner's.
        return "must name a directory inside the organization's directory"
    if any(name in ("", ".") for name in names):
        return "must not contain empty or '.' components"
    if size > LOCAL_PATH_MAX_BYTES:
        return f"must be at most {LOCAL_PATH_MAX_BYTES} bytes long"
    if any(len(name.encode("utf-8")) > LOCAL_NAME_MAX_BYTES for name in names):
        return f"each directory name must be at most {LOCAL_NAME_MAX_BYTES} bytes long"
    return None


class LocalDestinationConfig(WireModel):
    kind: Literal["local"] = "local"
    path: str = Field(
        description=(
            "the destination's directory, relative to the organization's directory under "
            "the operator's destination root (see local_path_problem); destinations "
            "registered before that rule may hold an absolute path, which runners refuse"
        )
    )


class S3DestinationConfig(WireModel):
    kind: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_ref: str | None = None
    secret_key_ref: str | None = None


DestinationConfig = Annotated[
    LocalDestinationConfig | S3DestinationConfig, Field(discriminator="kind")
]


class DestinationTarget(WireModel):
    """A storage destination as the runner needs it: its id, name and where it writes."""

    destination_id: uuid.UUID
    name: str
    type: Literal["local", "s3"]
    config: DestinationConfig

    @classmethod
    def of(
        cls, destination_id: uuid.UUID | str, name: str, type: str, config: Mapping[str, Any]
    ) -> DestinationTarget:
        """A registered destination, its ``config`` as the API shows it (without ``kind``)."""
        return cls.model_validate(
            {
                "destinationId": destination_id,
                "name": name,
                "type": type,
                "config": {"kind": type, **config},
            }
        )


class DestinationRef(WireModel):
    destination_id: uuid.UUID
    name: str
    type: Literal["local", "s3"]


class RequestBackup(Message):
    """Command: take a backup of an environment into the given destinations.

    The issuer mints ``backupId``; a redelivered or repeated command with the same id
    has no second effect.
    """

    message_type: ClassVar[str] = "backup.RequestBackup"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    trigger: BackupTrigger
    label: str | None = None
    requested_by: str
    requested_at: UtcDatetime
    database: DatabaseTarget
    destinations: list[DestinationTarget] = Field(min_length=1)


class BackupRequested(Message):
    """Event: a backup was accepted by the runner and is waiting to start."""

    message_type: ClassVar[str] = "backup.BackupRequested"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    trigger: BackupTrigger
    label: str | None = None
    requested_by: str
    requested_at: UtcDatetime
    destinations: list[DestinationRef]


class BackupStarted(Message):
    """Event: an attempt at the backup began. ``attempt`` > 1 when the runner of an earlier
    attempt stopped (its lease expired): this attempt starts over, and what the earlier
    one uploaded was discarded."""

    message_type: ClassVar[str] = "backup.BackupStarted"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    started_at: UtcDatetime
    bytes_total_estimate: int | None = None
    attempt: int = Field(default=1, ge=1)


class BackupUploaded(Message):
    """Event: the artifact is stored, complete and verified, in one destination.

    ``location`` is where the artifact is within that destination, relative to it (for a
    ``local`` destination, to its directory: ``<environmentId>/<backupId>.<type>.pgdump.zst``
    under ``<root>/<organizationId>/<path>/``), never a path of the runner's machine.
    Events recorded before that rule may hold the runner's absolute path."""

    message_type: ClassVar[str] = "backup.BackupUploaded"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    destination_id: uuid.UUID
    location: str
    size_bytes: int
    uploaded_at: UtcDatetime


class BackupUploadFailed(Message):
    """Event: one destination could not take a verified copy of the artifact (nothing
    partial of it is left there); the backup goes on with its other destinations, and is
    ``completed`` when at least one of them holds a verified copy. ``error`` says why,
    never with a credential or a reference's value."""

    message_type: ClassVar[str] = "backup.BackupUploadFailed"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    destination_id: uuid.UUID
    error: str
    failed_at: UtcDatetime


class BackupCompleted(Message):
    message_type: ClassVar[str] = "backup.BackupCompleted"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    size_bytes: int
    checksum: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    compression: str
    completed_at: UtcDatetime
    duration_ms: int
    # ``full`` backups only (null for ``db``): the WAL range the base backup needs to be
    # consistent, as PostgreSQL writes LSNs (``0/2000028``); the start of its PITR coverage.
    wal_start_lsn: str | None = None
    wal_end_lsn: str | None = None
    # The timeline of the base backup's WAL (``START TIMELINE`` of its backup_label): the
    # WAL archive's segments of that timeline continue it. Added compatibly (issue 9).
    wal_timeline: int | None = None


class BackupFailed(Message):
    message_type: ClassVar[str] = "backup.BackupFailed"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    error: str
    failed_at: UtcDatetime


class DeleteBackup(Message):
    """Command: delete a completed or failed backup, removing its artifact from every
    destination. Refused (nothing happens) while the backup is pending or running; a
    backup already being deleted, or deleted, is not deleted twice."""

    message_type: ClassVar[str] = "backup.DeleteBackup"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    requested_by: str
    requested_at: UtcDatetime


class BackupDeletionRequested(Message):
    """Event: the backup is being deleted; its artifact is removed from every destination
    next (``BackupDeleted`` once gone from all, ``BackupCleanupFailed`` for each failed try)."""

    message_type: ClassVar[str] = "backup.BackupDeletionRequested"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    requested_by: str
    requested_at: UtcDatetime


class BackupDeleted(Message):
    """Event: the backup's artifact is gone from every destination; the backup is kept as a
    record, in status ``deleted``."""

    message_type: ClassVar[str] = "backup.BackupDeleted"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    deleted_at: UtcDatetime


class BackupCleanupFailed(Message):
    """Event: one try at removing the artifact from ``destinationId`` failed, for ``error``
    (never a path of the runner's machine). ``final``: no further try is scheduled; the
    backup stays ``deleting`` until its deletion is requested again."""

    message_type: ClassVar[str] = "backup.BackupCleanupFailed"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    destination_id: uuid.UUID
    error: str
    attempt: int = Field(ge=1)
    final: bool = False
    failed_at: UtcDatetime


class BackupProgress(Message):
    """Ephemeral progress tick; only on the progress topic, never in an event store."""

    message_type: ClassVar[str] = "backup.BackupProgress"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    status: BackupStatus
    phase: str
    percent: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str | None = None
    at: UtcDatetime
