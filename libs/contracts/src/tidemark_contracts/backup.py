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


class LocalDestinationConfig(WireModel):
    kind: Literal["local"] = "local"
    path: str


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
    """Event: the artifact is stored, complete and verified, in one destination."""

    message_type: ClassVar[str] = "backup.BackupUploaded"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    destination_id: uuid.UUID
    location: str
    size_bytes: int
    uploaded_at: UtcDatetime


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


class BackupFailed(Message):
    message_type: ClassVar[str] = "backup.BackupFailed"
    version: Literal[1] = 1
    backup_id: uuid.UUID
    environment_id: uuid.UUID
    error: str
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
