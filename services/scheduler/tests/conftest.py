"""Helpers of the scheduler's tests, as fixtures (tests are imported with
``--import-mode=importlib``, which puts no test directory on ``sys.path``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import pytest
from tidemark_contracts import Envelope, Message, event_message_id
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupTrigger,
    BackupType,
    BackupUploaded,
    DestinationRef,
)

Outcome = Literal["pending", "running", "completed", "failed", "deleting", "deleted"]
CHECKSUM = "sha256:" + "0" * 64


@dataclass(frozen=True)
class BackupHistory:
    """One backup's events as the backup-runner's relay publishes them (aggregate id =
    backup id, versions from 1, message ids derived from both)."""

    backup_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    envelopes: tuple[Envelope, ...]


class BackupEvents:
    """Builds backup histories on ``backup.events`` for the scheduler's view."""

    def __init__(self) -> None:
        self.destination = DestinationRef(destination_id=uuid.uuid4(), name="disk", type="local")

    def history(
        self,
        *,
        organization_id: uuid.UUID,
        environment_id: uuid.UUID,
        requested_at: datetime,
        type: BackupType = "db",
        trigger: BackupTrigger = "scheduled",
        outcome: Outcome = "completed",
        size_bytes: int = 100,
        backup_id: uuid.UUID | None = None,
        wal: tuple[str, str] | None = None,
    ) -> BackupHistory:
        backup_id = backup_id or uuid.uuid4()
        done = requested_at + timedelta(minutes=1)
        messages: list[Message] = [
            BackupRequested(
                backup_id=backup_id,
                organization_id=organization_id,
                project_id=uuid.uuid4(),
                environment_id=environment_id,
                type=type,
                trigger=trigger,
                requested_by="scheduler" if trigger == "scheduled" else "user",
                requested_at=requested_at,
                destinations=[self.destination],
            )
        ]
        if outcome != "pending":
            messages.append(
                BackupStarted(backup_id=backup_id, environment_id=environment_id, started_at=done)
            )
        if outcome == "failed":
            messages.append(
                BackupFailed(
                    backup_id=backup_id, environment_id=environment_id, error="x", failed_at=done
                )
            )
        if outcome in ("completed", "deleting", "deleted"):
            messages += [
                BackupUploaded(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    destination_id=self.destination.destination_id,
                    location=f"{environment_id}/{backup_id}",
                    size_bytes=size_bytes,
                    uploaded_at=done,
                ),
                BackupCompleted(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    size_bytes=size_bytes,
                    checksum=CHECKSUM,
                    compression="zstd",
                    completed_at=done,
                    duration_ms=60_000,
                    wal_start_lsn=wal[0] if wal else None,
                    wal_end_lsn=wal[1] if wal else None,
                ),
            ]
        if outcome in ("deleting", "deleted"):
            messages.append(
                BackupDeletionRequested(
                    backup_id=backup_id,
                    environment_id=environment_id,
                    requested_by="user",
                    requested_at=done,
                )
            )
        if outcome == "deleted":
            messages.append(
                BackupDeleted(backup_id=backup_id, environment_id=environment_id, deleted_at=done)
            )
        envelopes = tuple(
            Envelope.wrap(
                message,
                producer="backup-runner",
                organization_id=organization_id,
                environment_id=environment_id,
                message_id=event_message_id(backup_id, version),
                aggregate_id=backup_id,
                aggregate_version=version,
            )
            for version, message in enumerate(messages, start=1)
        )
        return BackupHistory(backup_id, organization_id, environment_id, envelopes)


@pytest.fixture
def backup_events() -> BackupEvents:
    return BackupEvents()
