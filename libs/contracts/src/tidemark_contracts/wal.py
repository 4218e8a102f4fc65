"""Messages of the WAL archive: the backup-runner streams an environment's WAL
(``pg_receivewal`` on a replication slot) into the schedule's destinations and records
each finished segment, each gap and each change of the archive's status as events of the
``WalArchive`` aggregate (one per environment), relayed to ``backup.events``."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from tidemark_contracts.base import Message, UtcDatetime, WireModel

WalArchivingStatus = Literal["active", "stalled", "disabled"]

# A WAL segment's file name: timeline, then the segment number as two 8-digit halves.
SEGMENT_NAME_PATTERN = r"^[0-9A-F]{24}$"
LSN_PATTERN = r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$"

WAL_ARCHIVE_NAMESPACE = uuid.UUID("0b6c3a52-8f0e-4a0e-9d7c-2f1f4b3a9e61")


def wal_archive_id(environment_id: uuid.UUID) -> uuid.UUID:
    """The ``WalArchive`` aggregate of an environment: derived, so every instance agrees."""
    return uuid.uuid5(WAL_ARCHIVE_NAMESPACE, str(environment_id))


class WalSegmentCopy(WireModel):
    """Where one destination holds a segment (relative to the destination)."""

    destination_id: uuid.UUID
    location: str


class WalSegmentArchived(Message):
    """Event: a finished WAL segment is stored, compressed and checksummed, in every
    listed destination. ``startLsn``/``endLsn`` bound the segment's WAL;
    ``lastRecordAt`` is the time of the latest commit or abort record in it (what
    ``recovery_target_time`` can stop at), None when it holds none."""

    message_type: ClassVar[str] = "wal.WalSegmentArchived"
    version: Literal[1] = 1
    environment_id: uuid.UUID
    timeline: int = Field(ge=1)
    segment: str = Field(pattern=SEGMENT_NAME_PATTERN)
    start_lsn: str = Field(pattern=LSN_PATTERN)
    end_lsn: str = Field(pattern=LSN_PATTERN)
    size_bytes: int = Field(ge=0)
    checksum: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    compression: str = "zstd"
    first_record_at: UtcDatetime | None = None
    last_record_at: UtcDatetime | None = None
    copies: list[WalSegmentCopy] = Field(min_length=1)
    archived_at: UtcDatetime


class WalGapDetected(Message):
    """Event: the archive is missing WAL between ``afterSegment`` (the last segment stored
    before the gap, None when unknown) and ``resumedAt`` (the first segment stored after
    it). Coverage never spans a gap. Without ``resumedAt`` it is a reset: the receiver
    had to start a new replication slot (the cluster was restored, or the slot dropped),
    so the WAL archived after ``detectedAt`` is a new history, whose segments may reuse
    (and overwrite) names archived before."""

    message_type: ClassVar[str] = "wal.WalGapDetected"
    version: Literal[1] = 1
    environment_id: uuid.UUID
    after_segment: str | None = Field(default=None, pattern=SEGMENT_NAME_PATTERN)
    resumed_at: str | None = Field(default=None, pattern=SEGMENT_NAME_PATTERN)
    reason: str
    detected_at: UtcDatetime


class WalArchivingStatusChanged(Message):
    """Event: the environment's WAL archiving became ``active`` (a receiver streams),
    ``stalled`` (no segment for the configured time while the database writes, or the
    receiver keeps failing) or ``disabled`` (WAL archiving switched off, or no cluster);
    ``reason`` says why, never with a credential."""

    message_type: ClassVar[str] = "wal.WalArchivingStatusChanged"
    version: Literal[1] = 1
    environment_id: uuid.UUID
    organization_id: uuid.UUID
    status: WalArchivingStatus
    reason: str | None = None
    wal_retention_days: int | None = Field(default=None, ge=1)
    changed_at: UtcDatetime
