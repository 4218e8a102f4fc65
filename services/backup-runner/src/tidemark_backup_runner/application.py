"""The backup-runner's event store and the translation of its events into contracts."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any, Literal, NamedTuple
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking
from tidemark_contracts import BACKUP_EVENTS, Envelope, Message, Topic, event_message_id, utc_now
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
    DeleteBackup,
    DestinationRef,
    RequestBackup,
)
from tidemark_contracts.wal import (
    WalArchivingStatusChanged,
    WalGapDetected,
    WalSegmentArchived,
    WalSegmentCopy,
)
from tidemark_platform.eventstore import EventStoreApplication

from tidemark_backup_runner.domain import Backup, BackupError
from tidemark_backup_runner.walarchive import WalArchive
from tidemark_backup_runner.work import LogChange

PRODUCER = "backup-runner"

MILESTONES: dict[type, type[Message]] = {
    Backup.Started: BackupStarted,
    Backup.Uploaded: BackupUploaded,
    Backup.UploadFailed: BackupUploadFailed,
    Backup.Completed: BackupCompleted,
    Backup.Failed: BackupFailed,
}
# What became of a DeleteBackup: recorded; already being (or) deleted; refused while the
# backup is pending or running; or no backup of that organization to delete.
DeletionOutcome = Literal["accepted", "already", "refused", "unknown"]
EVENT_METADATA = frozenset({"originator_id", "originator_version", "timestamp"})


class Scope(NamedTuple):
    """What every envelope of one backup repeats: where it belongs and what caused it."""

    organization_id: UUID
    environment_id: UUID
    correlation_id: UUID | None


class BackupRunnerApplication(EventStoreApplication):
    name = "backup_runner"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self._scopes: OrderedDict[UUID, Scope] = OrderedDict()

    def request_backup(
        self, command: RequestBackup, tracking: Tracking, correlation_id: UUID | None = None
    ) -> bool:
        """Record the request; False (and no effect) when it was already recorded.

        ``correlation_id`` is the id of the request that caused the command (its envelope
        carries it); every message the backup causes carries it on.
        """
        backup = Backup(
            backup_id=command.backup_id,
            organization_id=command.organization_id,
            project_id=command.project_id,
            environment_id=command.environment_id,
            type=command.type,
            trigger=command.trigger,
            label=command.label,
            requested_by=command.requested_by,
            requested_at=command.requested_at,
            database=command.database.model_dump(mode="json"),
            destinations=[d.model_dump(mode="json") for d in command.destinations],
            correlation_id=correlation_id,
        )
        return self.save_tracked(tracking, backup)

    def refuse_request(
        self,
        request: BackupRequested,
        reason: str,
        tracking: Tracking,
        correlation_id: UUID | None = None,
    ) -> bool:
        """Record a request that failed validation as a backup that failed at once, for
        ``reason``; False (and no effect) when it was already recorded. Nothing of the
        request's database or destination configuration is kept."""
        backup = Backup(
            backup_id=request.backup_id,
            organization_id=request.organization_id,
            project_id=request.project_id,
            environment_id=request.environment_id,
            type=request.type,
            trigger=request.trigger,
            label=request.label,
            requested_by=request.requested_by,
            requested_at=request.requested_at,
            database={},
            destinations=[d.model_dump(mode="json") for d in request.destinations],
            correlation_id=correlation_id,
        )
        backup.fail(reason, utc_now())
        return self.save_tracked(tracking, backup)

    def request_deletion(self, command: DeleteBackup, tracking: Tracking) -> DeletionOutcome:
        """Record that the backup is to be deleted (the cleanup itself is deletion.py's).

        Nothing is recorded when it is already being deleted or deleted, nor when the
        aggregate refuses (pending or running: a race with the gateway's read model, or a
        command around the gateway), nor for a backup of another organization."""
        try:
            backup = self.get_backup(command.backup_id)
        except AggregateNotFoundError:
            return "unknown"
        if backup.organization_id != command.organization_id:
            return "unknown"
        try:
            if not backup.request_deletion(command.requested_by, command.requested_at):
                return "already"
        except BackupError:
            return "refused"
        # A collision is another runner (or an earlier delivery) having recorded it first.
        return "accepted" if self.save_tracked(tracking, backup) else "already"

    def get_backup(self, backup_id: UUID) -> Backup:
        backup: Backup = self.repository.get(backup_id)
        return backup

    def log_changes(self, after: int, limit: int) -> tuple[list[LogChange], int]:
        """What the notification log after ``after`` says about the work to do: backups
        requested, and backups that ended; with the last position read."""
        changes: list[LogChange] = []
        last = after
        for notification in self.recorder.select_notifications(start=after + 1, limit=limit):
            event = self.mapper.to_domain_event(notification)
            if isinstance(event, Backup.Requested):
                changes.append((event.originator_id, "requested"))
            elif isinstance(event, Backup.Completed | Backup.Failed):
                changes.append((event.originator_id, "finished"))
            last = notification.id
        return changes, last

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The public contract message for a stored domain event."""
        backup_id: UUID = event.originator_id
        message: Message
        if isinstance(event, WalArchive.Opened):
            self._remember_scope(
                backup_id, Scope(event.organization_id, event.environment_id, None)
            )
        if isinstance(
            event,
            WalArchive.Opened
            | WalArchive.StatusChanged
            | WalArchive.SegmentArchived
            | WalArchive.GapDetected,
        ):
            message = self._wal_message(event, self._scope(backup_id))
        elif isinstance(event, Backup.Requested):
            self._remember_scope(
                backup_id,
                Scope(event.organization_id, event.environment_id, event.correlation_id),
            )
            message = BackupRequested(
                backup_id=backup_id,
                organization_id=event.organization_id,
                project_id=event.project_id,
                environment_id=event.environment_id,
                type=event.type,
                trigger=event.trigger,
                label=event.label,
                requested_by=event.requested_by,
                requested_at=event.requested_at,
                destinations=[DestinationRef.model_validate(d) for d in event.destinations],
            )
        elif isinstance(event, Backup.DeletionRequested | Backup.CleanupFailed | Backup.Deleted):
            message = self._deletion_message(event, self._scope(backup_id).environment_id)
        else:
            contract = MILESTONES.get(type(event))
            if contract is None:
                return None
            environment_id = self._scope(backup_id).environment_id
            # Milestone events carry exactly the contract's fields, under the same names.
            fields = {k: v for k, v in vars(event).items() if k not in EVENT_METADATA}
            message = contract.model_validate(
                {**fields, "backup_id": backup_id, "environment_id": environment_id}
            )
        scope = self._scope(backup_id)
        occurred_at: datetime = event.timestamp
        return BACKUP_EVENTS, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=scope.organization_id,
            environment_id=scope.environment_id,
            message_id=event_message_id(backup_id, event.originator_version),
            aggregate_id=backup_id,
            aggregate_version=event.originator_version,
            correlation_id=scope.correlation_id,
            causation_id=backup_id,
            occurred_at=occurred_at,
        )

    @staticmethod
    def _wal_message(event: Any, scope: Scope) -> Message:
        """The contract of a WalArchive event, field by field."""
        if isinstance(event, WalArchive.Opened | WalArchive.StatusChanged):
            return WalArchivingStatusChanged(
                environment_id=scope.environment_id,
                organization_id=scope.organization_id,
                status=event.status,
                reason=event.reason,
                wal_retention_days=event.wal_retention_days,
                changed_at=event.changed_at,
            )
        if isinstance(event, WalArchive.GapDetected):
            return WalGapDetected(
                environment_id=scope.environment_id,
                after_segment=event.after_segment,
                resumed_at=event.resumed_at,
                reason=event.reason,
                detected_at=event.detected_at,
            )
        return WalSegmentArchived(
            environment_id=scope.environment_id,
            timeline=event.timeline,
            segment=event.segment,
            start_lsn=event.start_lsn,
            end_lsn=event.end_lsn,
            size_bytes=event.size_bytes,
            checksum=event.checksum,
            compression=event.compression,
            first_record_at=event.first_record_at,
            last_record_at=event.last_record_at,
            copies=[
                WalSegmentCopy(destination_id=UUID(c["destination_id"]), location=c["location"])
                for c in event.copies
            ],
            archived_at=event.archived_at,
        )

    @staticmethod
    def _deletion_message(event: Any, environment_id: UUID) -> Message:
        """The contract of a deletion event, field by field."""
        backup_id: UUID = event.originator_id
        if isinstance(event, Backup.DeletionRequested):
            return BackupDeletionRequested(
                backup_id=backup_id,
                environment_id=environment_id,
                requested_by=event.requested_by,
                requested_at=event.requested_at,
            )
        if isinstance(event, Backup.CleanupFailed):
            return BackupCleanupFailed(
                backup_id=backup_id,
                environment_id=environment_id,
                destination_id=UUID(event.destination_id),
                error=event.error,
                attempt=event.attempt,
                final=event.final,
                failed_at=event.failed_at,
            )
        return BackupDeleted(
            backup_id=backup_id, environment_id=environment_id, deleted_at=event.deleted_at
        )

    def _remember_scope(self, backup_id: UUID, scope: Scope) -> None:
        self._scopes[backup_id] = scope
        self._scopes.move_to_end(backup_id)
        while len(self._scopes) > 10_000:
            self._scopes.popitem(last=False)

    def _scope(self, backup_id: UUID) -> Scope:
        scope = self._scopes.get(backup_id)
        if scope is None:
            # Relay restarted mid-stream: the creation event is older than this process.
            backup: Backup = self.repository.get(backup_id, version=1)
            scope = Scope(backup.organization_id, backup.environment_id, backup.correlation_id)
            self._remember_scope(backup_id, scope)
        return scope
