"""The WalArchive aggregate: an environment's archived WAL, its gaps and its status, no I/O.

One aggregate per environment (id ``wal_archive_id(env)``), written only by the runner
instance that holds the environment's receiver lease (its saves are fenced by it). It
knows the last archived segment, so a segment that does not follow it is a gap (recorded
before the segment) and one at or before it is a duplicate (a receiver that streamed
again what was archived: nothing is recorded). A reset (the receiver had to start a new
replication slot: the cluster was restored, or the slot dropped) is a gap with no
``resumed_at``: what follows is a new history, so the next segment is taken whatever its
name (it may even reuse one archived before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from tidemark_contracts.wal import WalArchivingStatus, wal_archive_id
from tidemark_recovery.wal import (
    format_lsn,
    parse_segment_name,
    segment_bounds,
    segment_name,
)

SegmentVerdict = Literal["next", "first", "gap", "duplicate"]

RESET_REASON = (
    "the replication slot was gone (the cluster was restored or the slot dropped); "
    "WAL before this point cannot be continued"
)


@dataclass(frozen=True)
class ArchivedCopy:
    destination_id: UUID
    location: str


@dataclass(frozen=True)
class SegmentFacts:
    """What archiving one finished segment found out about it."""

    segment: str
    size_bytes: int
    checksum: str
    first_record_at: datetime | None
    last_record_at: datetime | None
    copies: tuple[ArchivedCopy, ...]

    @property
    def timeline(self) -> int:
        return parse_segment_name(self.segment)[0]

    @property
    def lsn_range(self) -> tuple[str, str]:
        start, end = segment_bounds(parse_segment_name(self.segment)[1])
        return format_lsn(start), format_lsn(end)


def verdict(last: str | None, segment: str) -> SegmentVerdict:
    """How ``segment`` relates to the last archived one (``last``)."""
    if last is None:
        return "first"
    last_timeline, last_segno = parse_segment_name(last)
    timeline, segno = parse_segment_name(segment)
    if timeline < last_timeline or (timeline == last_timeline and segno <= last_segno):
        return "duplicate"
    if timeline == last_timeline and segno == last_segno + 1:
        return "next"
    return "gap"


def gap_reason(last: str, segment: str, hint: str | None = None) -> str:
    """Why ``segment`` does not follow ``last``, as the gap event says it."""
    last_timeline, last_segno = parse_segment_name(last)
    timeline, segno = parse_segment_name(segment)
    if timeline != last_timeline:
        what = f"the timeline changed from {last_timeline} to {timeline}"
    else:
        first_missing = segment_name(timeline, last_segno + 1)
        last_missing = segment_name(timeline, segno - 1)
        span = first_missing if first_missing == last_missing else f"{first_missing}…{last_missing}"
        what = f"WAL segment(s) {span} were never received"
    return f"{what}: {hint}" if hint else what


class WalArchiveError(Exception):
    """A command that the archive's state does not allow."""


class WalArchive(Aggregate):
    """The WAL archive of one environment."""

    class Opened(Aggregate.Created):
        """The archive's first status (relayed as ``WalArchivingStatusChanged``)."""

        environment_id: UUID
        organization_id: UUID
        status: WalArchivingStatus
        reason: str | None
        wal_retention_days: int | None
        changed_at: datetime

    class StatusChanged(Aggregate.Event):
        status: WalArchivingStatus
        reason: str | None
        wal_retention_days: int | None
        changed_at: datetime

    class SegmentArchived(Aggregate.Event):
        timeline: int
        segment: str
        start_lsn: str
        end_lsn: str
        size_bytes: int
        checksum: str
        compression: str
        first_record_at: datetime | None
        last_record_at: datetime | None
        copies: list[dict[str, Any]]
        archived_at: datetime

    class GapDetected(Aggregate.Event):
        after_segment: str | None
        resumed_at: str | None
        reason: str
        detected_at: datetime

    @staticmethod
    def create_id(environment_id: UUID) -> UUID:
        return wal_archive_id(environment_id)

    @event(Opened)
    def __init__(
        self,
        *,
        environment_id: UUID,
        organization_id: UUID,
        status: WalArchivingStatus,
        reason: str | None,
        wal_retention_days: int | None,
        changed_at: datetime,
    ) -> None:
        self.environment_id = environment_id
        self.organization_id = organization_id
        self.status: WalArchivingStatus = status
        self.reason = reason
        self.wal_retention_days = wal_retention_days
        self.last_segment: str | None = None
        self.last_archived_at: datetime | None = None
        # Scope of the relayed envelopes (as the Backup aggregate's): none caused it.
        self.correlation_id: UUID | None = None

    # -- status ----------------------------------------------------------------------------

    def change_status(
        self,
        status: WalArchivingStatus,
        reason: str | None,
        wal_retention_days: int | None,
        at: datetime,
    ) -> bool:
        """Record the status when it differs from the current one (only changes are
        events); False when nothing changed."""
        if (status, wal_retention_days) == (self.status, self.wal_retention_days):
            return False
        self._status_changed(
            status=status, reason=reason, wal_retention_days=wal_retention_days, changed_at=at
        )
        return True

    @event(StatusChanged)
    def _status_changed(
        self,
        status: WalArchivingStatus,
        reason: str | None,
        wal_retention_days: int | None,
        changed_at: datetime,
    ) -> None:
        self.status = status
        self.reason = reason
        self.wal_retention_days = wal_retention_days

    # -- segments --------------------------------------------------------------------------

    def archive(self, facts: SegmentFacts, at: datetime, gap_hint: str | None = None) -> bool:
        """Record a stored segment (a gap before it first, when it does not follow the
        last one); False for a duplicate, which records nothing."""
        found = verdict(self.last_segment, facts.segment)
        if found == "duplicate":
            return False
        if found == "gap":
            assert self.last_segment is not None
            self._gap_detected(
                after_segment=self.last_segment,
                resumed_at=facts.segment,
                reason=gap_reason(self.last_segment, facts.segment, gap_hint),
                detected_at=at,
            )
        if not facts.copies:
            raise WalArchiveError("a segment is archived only once a destination holds it")
        start, end = facts.lsn_range
        self._segment_archived(
            timeline=facts.timeline,
            segment=facts.segment,
            start_lsn=start,
            end_lsn=end,
            size_bytes=facts.size_bytes,
            checksum=facts.checksum,
            compression="zstd",
            first_record_at=facts.first_record_at,
            last_record_at=facts.last_record_at,
            copies=[
                {"destination_id": str(c.destination_id), "location": c.location}
                for c in facts.copies
            ],
            archived_at=at,
        )
        return True

    @event(SegmentArchived)
    def _segment_archived(
        self,
        timeline: int,
        segment: str,
        start_lsn: str,
        end_lsn: str,
        size_bytes: int,
        checksum: str,
        compression: str,
        first_record_at: datetime | None,
        last_record_at: datetime | None,
        copies: list[dict[str, Any]],
        archived_at: datetime,
    ) -> None:
        self.last_segment = segment
        self.last_archived_at = archived_at

    @event(GapDetected)
    def _gap_detected(
        self,
        after_segment: str | None,
        resumed_at: str | None,
        reason: str,
        detected_at: datetime,
    ) -> None:
        if resumed_at is None:  # a reset: what follows is a new history
            self.last_segment = None

    def reset(self, reason: str, at: datetime) -> bool:
        """Start a new history: a gap after the last archived segment, and the next
        segment is accepted whatever its name; False when nothing was archived (nothing
        to cut)."""
        if self.last_segment is None:
            return False
        self._gap_detected(
            after_segment=self.last_segment, resumed_at=None, reason=reason, detected_at=at
        )
        return True

    @property
    def archived_end_lsn(self) -> int | None:
        """The first position after the last archived segment (None: nothing archived)."""
        if self.last_segment is None:
            return None
        return segment_bounds(parse_segment_name(self.last_segment)[1])[1]
