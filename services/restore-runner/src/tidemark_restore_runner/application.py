"""The restore-runner's event store and the translation of its events into contracts."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope, Message, Topic, event_message_id, utc_now
from tidemark_contracts.restore import (
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMilestone,
    RestoreRequested,
    RestoreStarted,
)
from tidemark_contracts.topics import RESTORE_EVENTS
from tidemark_platform.eventstore import EventStoreApplication

from tidemark_restore_runner.domain import Restore

PRODUCER = "restore-runner"
LogChange = tuple[UUID, UUID, Literal["requested", "finished"]]


class Scope(NamedTuple):
    organization_id: UUID
    target_environment_id: UUID
    correlation_id: UUID | None


def command_problems(command: RequestRestore) -> str | None:
    """Why the runner cannot carry the command out whatever happens (checked again here:
    a command may come around the gateway); None when it can be tried."""
    problems = command.target.database.problems()
    if problems:
        return "the target's database settings are unusable: " + "; ".join(
            f"database.{field} {reason}" for field, reason in problems.items()
        )
    if command.source.type == "full" and command.target.cluster is None:
        return "a full restore needs the target environment's cluster; it has none"
    if command.pitr_timestamp is not None and command.source.type != "full":
        return "a point-in-time restore needs a full backup as its base"
    if command.target.organization_id != command.organization_id:
        return "the target environment is not of the restore's organization"
    return None


class RestoreRunnerApplication(EventStoreApplication):
    name = "restore_runner"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self._scopes: OrderedDict[UUID, Scope] = OrderedDict()

    def request_restore(
        self, command: RequestRestore, tracking: Tracking, correlation_id: UUID | None = None
    ) -> bool:
        """Record the request (failed at once when it cannot be carried out); False, and
        no effect, when it was recorded before (a redelivery or a duplicate command)."""
        restore = Restore(
            restore_id=command.restore_id,
            organization_id=command.organization_id,
            project_id=command.target.project_id,
            backup_id=command.backup_id,
            source_environment_id=command.source_environment_id,
            target_environment_id=command.target.environment_id,
            target_type=command.target_type,
            pitr_timestamp=command.pitr_timestamp,
            safety_backup_id=command.safety_backup_id,
            requested_by=command.requested_by,
            requested_at=command.requested_at,
            source=command.source.model_dump(mode="json"),
            target=command.target.model_dump(mode="json"),
            correlation_id=correlation_id,
        )
        problem = command_problems(command)
        if problem is not None:
            restore.fail(problem, utc_now(), target_unchanged=True)
        return self.save_tracked(tracking, restore)

    def get_restore(self, restore_id: UUID) -> Restore:
        restore: Restore = self.repository.get(restore_id)
        return restore

    def log_changes(self, after: int, limit: int) -> tuple[list[LogChange], int]:
        """Restores requested and ended after log position ``after``, with the last
        position read (what the work table follows)."""
        changes: list[LogChange] = []
        last = after
        for notification in self.recorder.select_notifications(start=after + 1, limit=limit):
            event = self.mapper.to_domain_event(notification)
            if isinstance(event, Restore.Requested):
                changes.append((event.originator_id, event.target_environment_id, "requested"))
            elif isinstance(event, Restore.Completed | Restore.Failed):
                changes.append((event.originator_id, event.originator_id, "finished"))
            last = notification.id
        return changes, last

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The public contract message for a stored domain event, field by field."""
        restore_id: UUID = event.originator_id
        message: Message
        if isinstance(event, Restore.Requested):
            self._remember(
                restore_id,
                Scope(event.organization_id, event.target_environment_id, event.correlation_id),
            )
            message = RestoreRequested(
                restore_id=restore_id,
                organization_id=event.organization_id,
                project_id=event.project_id,
                backup_id=event.backup_id,
                base_backup_id=UUID(str(event.source["backup_id"])),
                source_environment_id=event.source_environment_id,
                target_environment_id=event.target_environment_id,
                target_type=event.target_type,  # type: ignore[arg-type]
                restore_type=event.source["type"],
                pitr_timestamp=event.pitr_timestamp,
                safety_backup_id=event.safety_backup_id,
                requested_by=event.requested_by,
                requested_at=event.requested_at,
            )
        else:
            target = self._scope(restore_id).target_environment_id
            if isinstance(event, Restore.Started):
                message = RestoreStarted(
                    restore_id=restore_id,
                    target_environment_id=target,
                    started_at=event.started_at,
                    attempt=event.attempt,
                )
            elif isinstance(event, Restore.MilestoneReached):
                message = RestoreMilestone(
                    restore_id=restore_id,
                    target_environment_id=target,
                    milestone=event.milestone,  # type: ignore[arg-type]
                    message=event.message,
                    at=event.at,
                )
            elif isinstance(event, Restore.Completed):
                message = RestoreCompleted(
                    restore_id=restore_id,
                    target_environment_id=target,
                    completed_at=event.completed_at,
                    duration_ms=event.duration_ms,
                )
            elif isinstance(event, Restore.Failed):
                message = RestoreFailed(
                    restore_id=restore_id,
                    target_environment_id=target,
                    error=event.error,
                    target_unchanged=event.target_unchanged,
                    failed_at=event.failed_at,
                )
            else:
                return None
        scope = self._scope(restore_id)
        return RESTORE_EVENTS, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=scope.organization_id,
            environment_id=scope.target_environment_id,
            message_id=event_message_id(restore_id, event.originator_version),
            aggregate_id=restore_id,
            aggregate_version=event.originator_version,
            correlation_id=scope.correlation_id,
            causation_id=restore_id,
            occurred_at=event.timestamp,
        )

    def _remember(self, restore_id: UUID, scope: Scope) -> None:
        self._scopes[restore_id] = scope
        self._scopes.move_to_end(restore_id)
        while len(self._scopes) > 10_000:
            self._scopes.popitem(last=False)

    def _scope(self, restore_id: UUID) -> Scope:
        scope = self._scopes.get(restore_id)
        if scope is None:
            # The relay restarted mid-stream: the creation event is older than this process.
            restore: Restore = self.repository.get(restore_id, version=1)
            scope = Scope(
                restore.organization_id, restore.target_environment_id, restore.correlation_id
            )
            self._remember(restore_id, scope)
        return scope
