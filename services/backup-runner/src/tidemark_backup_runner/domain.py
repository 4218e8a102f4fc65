"""The Backup aggregate: a backup's life from request to a verified artifact, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from tidemark_contracts.backup import BackupTrigger, BackupType


class BackupError(Exception):
    """A command that the backup's current state does not allow."""


class Backup(Aggregate):
    """One backup of one environment.

    Its id is minted by whoever requested it (the gateway or the scheduler), so the same
    request delivered twice creates it once: the second creation collides in the store.
    """

    class Requested(Aggregate.Created):
        backup_id: UUID
        organization_id: UUID
        project_id: UUID
        environment_id: UUID
        type: BackupType
        trigger: BackupTrigger
        label: str | None
        requested_by: str
        requested_at: datetime
        database: dict[str, Any]
        destinations: list[dict[str, Any]]
        # The request's id, carried by everything the backup causes. Events stored before
        # it existed lack the attribute and read as None (this class default).
        correlation_id: UUID | None = None

    class Started(Aggregate.Event):
        """An attempt at the backup began; ``attempt`` > 1 when earlier ones were cut off
        (their runner stopped holding the backup's lease) and this one starts over."""

        class_version = 2
        started_at: datetime
        bytes_total_estimate: int | None
        attempt: int

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["attempt"] = 1  # stored before attempts were counted: the only one

    class Uploaded(Aggregate.Event):
        destination_id: str
        location: str
        size_bytes: int
        uploaded_at: datetime

    class UploadFailed(Aggregate.Event):
        """One destination could not take a verified copy (nothing of it stays there);
        the backup goes on with the others."""

        destination_id: str
        error: str
        failed_at: datetime

    class Completed(Aggregate.Event):
        size_bytes: int
        checksum: str
        compression: str
        completed_at: datetime
        duration_ms: int
        # ``full`` backups' WAL range; events stored before it existed read as None.
        wal_start_lsn: str | None = None
        wal_end_lsn: str | None = None
        wal_timeline: int | None = None

    class Failed(Aggregate.Event):
        error: str
        failed_at: datetime

    # -- deletion (its events and methods are kept together below) ------------------------

    class DeletionRequested(Aggregate.Event):
        requested_by: str
        requested_at: datetime

    class CleanupFailed(Aggregate.Event):
        destination_id: str
        error: str
        attempt: int
        final: bool
        failed_at: datetime

    class Deleted(Aggregate.Event):
        deleted_at: datetime

    @staticmethod
    def create_id(backup_id: UUID) -> UUID:
        return backup_id

    @event(Requested)
    def __init__(
        self,
        *,
        backup_id: UUID,
        organization_id: UUID,
        project_id: UUID,
        environment_id: UUID,
        type: BackupType,
        trigger: BackupTrigger,
        label: str | None,
        requested_by: str,
        requested_at: datetime,
        database: dict[str, Any],
        destinations: list[dict[str, Any]],
        # eventsourcing requires every keyword-only argument when a backup is created;
        # the default serves the replay of requests stored before the attribute existed.
        correlation_id: UUID | None = None,
    ) -> None:
        self.backup_id = backup_id
        self.organization_id = organization_id
        self.project_id = project_id
        self.environment_id = environment_id
        self.type = type
        self.trigger = trigger
        self.label = label
        self.requested_by = requested_by
        self.requested_at = requested_at
        # References only (host, user, ``passwordRef``): secrets never enter events.
        self.database = database
        self.destinations = destinations
        self.correlation_id = correlation_id
        self.status = "pending"
        self.attempt = 0
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.uploads: dict[str, dict[str, Any]] = {}
        self.failed_uploads: dict[str, str] = {}
        self.size_bytes: int | None = None
        self.checksum: str | None = None
        self.error: str | None = None
        self.wal_start_lsn: str | None = None
        self.wal_end_lsn: str | None = None
        self.wal_timeline: int | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether no attempt at taking it can run any more (it ended, or is being or was
        deleted: a deletion is only ever accepted after the end)."""
        return self.status in ("completed", "failed", *DELETION_STATUSES)

    def start(
        self, started_at: datetime, bytes_total_estimate: int | None, attempt: int = 1
    ) -> None:
        """Begin attempt ``attempt``: of a pending backup, or of a running one whose
        current attempt was cut off (a later attempt starts it over)."""
        if self.is_terminal:
            raise BackupError(f"cannot start a backup that is {self.status}")
        if attempt <= self.attempt:
            raise BackupError(f"attempt {attempt} is not after attempt {self.attempt}")
        self._started(
            started_at=started_at, bytes_total_estimate=bytes_total_estimate, attempt=attempt
        )

    @event(Started)
    def _started(
        self, started_at: datetime, bytes_total_estimate: int | None, attempt: int
    ) -> None:
        self.status = "running"
        self.attempt = attempt
        self.started_at = started_at
        # An earlier attempt's uploads were discarded with its artifacts.
        self.uploads = {}
        self.failed_uploads = {}

    def record_upload(
        self, destination_id: str, location: str, size_bytes: int, uploaded_at: datetime
    ) -> None:
        if self.status != "running":
            raise BackupError(f"cannot record an upload of a backup that is {self.status}")
        if destination_id not in {d["destination_id"] for d in self.destinations}:
            raise BackupError(f"destination {destination_id} is not one of this backup's")
        self._uploaded(
            destination_id=destination_id,
            location=location,
            size_bytes=size_bytes,
            uploaded_at=uploaded_at,
        )

    @event(Uploaded)
    def _uploaded(
        self, destination_id: str, location: str, size_bytes: int, uploaded_at: datetime
    ) -> None:
        self.uploads[destination_id] = {
            "location": location,
            "size_bytes": size_bytes,
            "uploaded_at": uploaded_at,
        }

    def record_upload_failure(self, destination_id: str, error: str, failed_at: datetime) -> None:
        """Destination ``destination_id`` failed for this attempt, ``error`` saying why."""
        if self.status != "running":
            raise BackupError(f"cannot record a failed upload of a backup that is {self.status}")
        if destination_id not in {d["destination_id"] for d in self.destinations}:
            raise BackupError(f"destination {destination_id} is not one of this backup's")
        if destination_id in self.uploads:
            raise BackupError(f"destination {destination_id} already holds the artifact")
        self._upload_failed(destination_id=destination_id, error=error, failed_at=failed_at)

    @event(UploadFailed)
    def _upload_failed(self, destination_id: str, error: str, failed_at: datetime) -> None:
        self.failed_uploads[destination_id] = error

    def complete(
        self,
        size_bytes: int,
        checksum: str,
        compression: str,
        completed_at: datetime,
        *,
        wal_start_lsn: str | None = None,
        wal_end_lsn: str | None = None,
        wal_timeline: int | None = None,
    ) -> None:
        """The artifact is stored: in every destination, or in some with the others'
        failures recorded (at least one holds a verified copy)."""
        if self.status != "running":
            raise BackupError(f"cannot complete a backup that is {self.status}")
        missing = (
            {d["destination_id"] for d in self.destinations}
            - set(self.uploads)
            - set(self.failed_uploads)
        )
        if missing:
            raise BackupError(f"not yet stored in every destination: {sorted(missing)}")
        if not self.uploads:
            raise BackupError("no destination holds the artifact")
        assert self.started_at is not None
        duration_ms = int((completed_at - self.started_at).total_seconds() * 1000)
        self._completed(
            size_bytes=size_bytes,
            checksum=checksum,
            compression=compression,
            completed_at=completed_at,
            duration_ms=duration_ms,
            wal_start_lsn=wal_start_lsn,
            wal_end_lsn=wal_end_lsn,
            wal_timeline=wal_timeline,
        )

    @event(Completed)
    def _completed(
        self,
        size_bytes: int,
        checksum: str,
        compression: str,
        completed_at: datetime,
        duration_ms: int,
        wal_start_lsn: str | None = None,
        wal_end_lsn: str | None = None,
        wal_timeline: int | None = None,
    ) -> None:
        self.status = "completed"
        self.size_bytes = size_bytes
        self.checksum = checksum
        self.completed_at = completed_at
        self.wal_start_lsn = wal_start_lsn
        self.wal_end_lsn = wal_end_lsn
        self.wal_timeline = wal_timeline

    def fail(self, error: str, failed_at: datetime) -> None:
        if self.is_terminal:
            raise BackupError(f"cannot fail a backup that is {self.status}")
        self._failed(error=error, failed_at=failed_at)

    def give_up(self, attempts: int, last_error: str | None, failed_at: datetime) -> None:
        """Every allowed attempt was cut off: the backup fails, saying how often and why."""
        reason = f"gave up after {attempts} attempts"
        self.fail(f"{reason}: {last_error}" if last_error else reason, failed_at)

    @event(Failed)
    def _failed(self, error: str, failed_at: datetime) -> None:
        self.status = "failed"
        self.error = error
        self.completed_at = failed_at

    # -- deletion ------------------------------------------------------------------------

    def request_deletion(self, requested_by: str, requested_at: datetime) -> bool:
        """Accept the deletion of an ended backup; False (and no event) when it is already
        being deleted or deleted. A pending or running backup is refused: its artifact is
        being written, and a deletion now would race the attempt that writes it."""
        if self.status in DELETION_STATUSES:
            return False
        if self.status not in ("completed", "failed"):
            raise BackupError(f"cannot delete a backup that is {self.status}")
        self._deletion_requested(requested_by=requested_by, requested_at=requested_at)
        return True

    @event(DeletionRequested)
    def _deletion_requested(self, requested_by: str, requested_at: datetime) -> None:
        self.status = "deleting"

    def record_cleanup_failure(
        self, destination_id: str, error: str, attempt: int, final: bool, failed_at: datetime
    ) -> None:
        """One try at removing the artifact from ``destination_id`` failed; the backup stays
        ``deleting``, with ``error`` as its error, until a later try succeeds."""
        if self.status != "deleting":
            raise BackupError(f"cannot record a cleanup of a backup that is {self.status}")
        if destination_id not in {str(d["destination_id"]) for d in self.destinations}:
            raise BackupError(f"destination {destination_id} is not one of this backup's")
        self._cleanup_failed(
            destination_id=destination_id,
            error=error,
            attempt=attempt,
            final=final,
            failed_at=failed_at,
        )

    @event(CleanupFailed)
    def _cleanup_failed(
        self, destination_id: str, error: str, attempt: int, final: bool, failed_at: datetime
    ) -> None:
        self.error = error

    def mark_deleted(self, deleted_at: datetime) -> bool:
        """The artifact is gone from every destination; False (no event) when the backup
        was deleted already (another runner finished first)."""
        if self.status == "deleted":
            return False
        if self.status != "deleting":
            raise BackupError(f"cannot mark a backup that is {self.status} deleted")
        self._deleted(deleted_at=deleted_at)
        return True

    @event(Deleted)
    def _deleted(self, deleted_at: datetime) -> None:
        # Nothing of it is left to go wrong: a cleanup's error (or the failure's) is history.
        self.status = "deleted"
        self.error = None


DELETION_STATUSES = ("deleting", "deleted")


@dataclass(frozen=True)
class WorkPolicy:
    """How a backup is held by one runner instance at a time, and how often it is retried.

    The runner that claims a backup holds it through a lease of ``lease_seconds``, which
    it renews every ``renew_every`` seconds; a backup whose lease ran out is taken over by
    another runner, as a new attempt, until ``max_attempts`` attempts were cut off.
    """

    lease_seconds: float = 30.0
    max_attempts: int = 3
    renew_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.renew_fraction < 1:
            raise ValueError("renew_fraction must lie between 0 and 1")

    @property
    def renew_every(self) -> float:
        return self.lease_seconds * self.renew_fraction

    def next_attempt(self, attempts_made: int) -> int | None:
        """The number of the attempt to start after ``attempts_made``; None: give up."""
        if attempts_made >= self.max_attempts:
            return None
        return attempts_made + 1

    def still_held(self, seconds_since_renewal_sent: float) -> bool:
        """Whether a lease last renewed by a request sent that long ago is surely still
        ours. Measured from the *sending*: the server set the expiry after it, so the
        holder stops before the server lets anyone else take over."""
        return seconds_since_renewal_sent < self.lease_seconds
