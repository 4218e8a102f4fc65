"""The alerts service's event store: source events in, alerts out (and their contracts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope, Message, Topic, event_message_id
from tidemark_contracts.alert import (
    AlertDismissed,
    AlertRaised,
    AlertRead,
    AlertRepeated,
    AlertResolved,
    DismissAlert,
    MarkAlertRead,
)
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupUploaded,
    BackupUploadFailed,
)
from tidemark_contracts.restore import RestoreCompleted, RestoreFailed, RestoreRequested
from tidemark_contracts.schedule import ScheduleFired, ScheduleMissed
from tidemark_contracts.topics import ALERT_EVENTS
from tidemark_contracts.wal import WalArchivingStatusChanged
from tidemark_platform.consumer import NotYet
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.logging import get_logger

from tidemark_alerts import domain
from tidemark_alerts.domain import (
    Alert,
    AlertSubject,
    Condition,
    Place,
    Recovery,
    RestoreOrigin,
    restore_origin_id,
)

log = get_logger(__name__)

PRODUCER = "alerts"
# A subject's index takes an event per success of its kind: load it from a snapshot.
SNAPSHOT_EVERY = 50

Change = Literal["raised", "repeated", "resolved", "read", "dismissed"]


@dataclass(frozen=True)
class Effect:
    """What one source event or command did to an alert (for metrics and logs)."""

    kind: str
    change: Change
    alert_id: UUID


class ConcurrentChange(NotYet):
    """Another instance changed the subject meanwhile (events of one destination come on
    several partitions): the consumer retries, on the aggregates as they now are. A
    ``NotYet``: however often two instances collide on a busy subject, the event is
    retried, never parked (a parked success would leave its alert open for good)."""


class AlertsApplication(EventStoreApplication):
    name = "alerts"
    is_snapshotting_enabled = True

    # -- backup.events ---------------------------------------------------------------------

    def backup_failed(
        self,
        event: BackupFailed,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        return self._fail(
            domain.on_backup_failed(event, organization_id, place, source_id), tracking
        )

    def backup_completed(
        self, event: BackupCompleted, organization_id: UUID, source_id: UUID, tracking: Tracking
    ) -> Effect | None:
        return self._recover(
            domain.on_backup_completed(event, organization_id, source_id), tracking
        )

    def backup_upload_failed(
        self,
        event: BackupUploadFailed,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        condition = domain.on_backup_upload_failed(event, organization_id, place, source_id)
        return self._fail(condition, tracking)

    def backup_uploaded(
        self, event: BackupUploaded, organization_id: UUID, source_id: UUID, tracking: Tracking
    ) -> Effect | None:
        return self._recover(domain.on_backup_uploaded(event, organization_id, source_id), tracking)

    def backup_cleanup_failed(
        self,
        event: BackupCleanupFailed,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        condition = domain.on_backup_cleanup_failed(event, organization_id, place, source_id)
        return self._fail(condition, tracking)

    def backup_deleted(
        self, event: BackupDeleted, organization_id: UUID, source_id: UUID, tracking: Tracking
    ) -> Effect | None:
        return self._recover(domain.on_backup_deleted(event, organization_id, source_id), tracking)

    def wal_status_changed(
        self,
        event: WalArchivingStatusChanged,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        outcome = domain.on_wal_status(event, organization_id, place, source_id)
        if isinstance(outcome, Condition):
            return self._fail(outcome, tracking)
        return self._recover(outcome, tracking)

    # -- schedule.events -------------------------------------------------------------------

    def schedule_missed(
        self,
        event: ScheduleMissed,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        return self._fail(
            domain.on_schedule_missed(event, organization_id, place, source_id), tracking
        )

    def schedule_fired(
        self, event: ScheduleFired, organization_id: UUID, source_id: UUID, tracking: Tracking
    ) -> Effect | None:
        return self._recover(domain.on_schedule_fired(event, organization_id, source_id), tracking)

    # -- restore.events --------------------------------------------------------------------

    def restore_requested(self, event: RestoreRequested, tracking: Tracking) -> bool:
        """Note the restore's backup and project for its failure's alert; False when noted
        before (also at another position: a relay that published it again)."""
        if self.restore_origin(event.restore_id) is not None:
            return False
        origin = RestoreOrigin(
            restore_id=event.restore_id,
            organization_id=event.organization_id,
            project_id=event.project_id,
            backup_id=event.backup_id,
        )
        try:
            return self._save(tracking, origin)
        except ConcurrentChange:
            if self.restore_origin(event.restore_id) is not None:
                return False
            raise

    def restore_origin(self, restore_id: UUID) -> RestoreOrigin | None:
        try:
            origin: Any = self.repository.get(restore_origin_id(restore_id))
        except AggregateNotFoundError:
            return None
        return origin if isinstance(origin, RestoreOrigin) else None

    def restore_failed(
        self,
        event: RestoreFailed,
        organization_id: UUID,
        place: Place,
        source_id: UUID,
        tracking: Tracking,
    ) -> Effect | None:
        origin = self.restore_origin(event.restore_id)
        backup_id = None
        if origin is not None and origin.organization_id == organization_id:
            backup_id = origin.backup_id
            if place.project_id is None:
                place = Place(origin.project_id, place.environment_name, place.destination_name)
        condition = domain.on_restore_failed(event, organization_id, place, source_id, backup_id)
        return self._fail(condition, tracking)

    def restore_completed(
        self, event: RestoreCompleted, organization_id: UUID, source_id: UUID, tracking: Tracking
    ) -> Effect | None:
        return self._recover(
            domain.on_restore_completed(event, organization_id, source_id), tracking
        )

    # -- alert.commands --------------------------------------------------------------------

    def mark_read(self, command: MarkAlertRead, tracking: Tracking) -> Effect | None:
        alert = self._commanded(command.alert_id, command.organization_id, "mark_read")
        if alert is None or not alert.mark_read(command.requested_by, command.requested_at):
            return None
        return self._changed(tracking, Effect(alert.kind, "read", alert.id), alert)

    def dismiss(self, command: DismissAlert, tracking: Tracking) -> Effect | None:
        alert = self._commanded(command.alert_id, command.organization_id, "dismiss")
        if alert is None or not alert.dismiss(command.requested_by, command.requested_at):
            return None
        return self._changed(tracking, Effect(alert.kind, "dismissed", alert.id), alert)

    # -- reading ---------------------------------------------------------------------------

    def get_alert(self, alert_id: UUID) -> Alert | None:
        try:
            alert: Any = self.repository.get(alert_id)
        except AggregateNotFoundError:
            return None
        return alert if isinstance(alert, Alert) else None

    def get_subject(self, organization_id: UUID, subject: str) -> AlertSubject | None:
        try:
            index: Any = self.repository.get(AlertSubject.create_id(organization_id, subject))
        except AggregateNotFoundError:
            return None
        return index if isinstance(index, AlertSubject) else None

    # -- the two paths every rule takes ----------------------------------------------------

    def _fail(self, condition: Condition, tracking: Tracking) -> Effect | None:
        index = self.get_subject(condition.organization_id, condition.subject)
        if index is None:
            index = AlertSubject(
                organization_id=condition.organization_id, subject=condition.subject
            )
        step, alert_id = index.fail(condition.at, condition.source_id)
        if step in ("duplicate", "stale") or alert_id is None:
            log.info("alert_source_event_skipped", subject=condition.subject, reason=step)
            return None
        if step == "raise":
            alert = Alert.raise_for(alert_id, condition)
            effect = Effect(condition.kind, "raised", alert_id)
        else:
            found = self.get_alert(alert_id)
            if found is None:  # the index names it: only a store edited by hand lacks it
                raise LookupError(f"the open alert {alert_id} of a subject is missing")
            alert = found
            alert.repeat(condition)
            effect = Effect(condition.kind, "repeated", alert_id)
        return self._changed(tracking, effect, index, alert)

    def _recover(self, recovery: Recovery, tracking: Tracking) -> Effect | None:
        index = self.get_subject(recovery.organization_id, recovery.subject)
        if index is None:
            index = AlertSubject(organization_id=recovery.organization_id, subject=recovery.subject)
        step, alert_id = index.recover(recovery.at, recovery.source_id)
        if step in ("duplicate", "stale"):
            log.info("alert_source_event_skipped", subject=recovery.subject, reason=step)
            return None
        if step == "clear" or alert_id is None:
            self._save(tracking, index)
            return None
        alert = self.get_alert(alert_id)
        if alert is None:
            raise LookupError(f"the open alert {alert_id} of a subject is missing")
        alert.resolve(recovery.reason, recovery.at)
        return self._changed(tracking, Effect(alert.kind, "resolved", alert_id), index, alert)

    def _commanded(self, alert_id: UUID, organization_id: UUID, command: str) -> Alert | None:
        alert = self.get_alert(alert_id)
        if alert is None or alert.organization_id != organization_id:
            # Another organization's alert does not exist for the caller either.
            log.warning("alert_command_for_unknown_alert", alert_id=str(alert_id), command=command)
            return None
        return alert

    def _changed(self, tracking: Tracking, effect: Effect, *aggregates: Any) -> Effect | None:
        return effect if self._save(tracking, *aggregates) else None

    def _save(self, tracking: Tracking, *aggregates: Any) -> bool:
        """Save with the tracking; False when the position was recorded before (a
        redelivery: nothing is written again)."""
        if self.save_tracked(tracking, *aggregates):
            for aggregate in aggregates:
                if isinstance(aggregate, AlertSubject) and aggregate.version % SNAPSHOT_EVERY == 0:
                    self.take_snapshot(aggregate.id, version=aggregate.version)
            return True
        if self.has_processed(tracking):
            return False
        raise ConcurrentChange(
            "an alert or its subject changed meanwhile; the event is handled again"
        )

    # -- the relay -------------------------------------------------------------------------

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The public contract message of a stored Alert event, field by field (the
        subjects' index and restore origins stay inside)."""
        alert_id: UUID = event.originator_id
        message: Message
        if isinstance(event, Alert.Raised):
            message = AlertRaised(
                alert_id=alert_id,
                organization_id=event.organization_id,
                project_id=event.project_id,
                environment_id=event.environment_id,
                backup_id=event.backup_id,
                restore_id=event.restore_id,
                destination_id=event.destination_id,
                kind=event.kind,  # type: ignore[arg-type]
                severity=event.severity,  # type: ignore[arg-type]
                subject=event.subject,
                title=event.title,
                message=event.message,
                raised_at=event.raised_at,
            )
        elif isinstance(event, Alert.Repeated):
            message = AlertRepeated(
                alert_id=alert_id,
                organization_id=event.organization_id,
                environment_id=event.environment_id,
                backup_id=event.backup_id,
                restore_id=event.restore_id,
                title=event.title,
                message=event.message,
                occurrences=event.occurrences,
                last_seen_at=event.last_seen_at,
            )
        elif isinstance(event, Alert.Resolved):
            message = AlertResolved(
                alert_id=alert_id,
                organization_id=event.organization_id,
                environment_id=event.environment_id,
                reason=event.reason,
                resolved_at=event.resolved_at,
            )
        elif isinstance(event, Alert.Read):
            message = AlertRead(
                alert_id=alert_id,
                organization_id=event.organization_id,
                environment_id=event.environment_id,
                read_by=event.read_by,
                read_at=event.read_at,
            )
        elif isinstance(event, Alert.Dismissed):
            message = AlertDismissed(
                alert_id=alert_id,
                organization_id=event.organization_id,
                environment_id=event.environment_id,
                dismissed_by=event.dismissed_by,
                dismissed_at=event.dismissed_at,
            )
        else:
            return None
        return ALERT_EVENTS, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=event.organization_id,
            environment_id=event.environment_id,
            message_id=event_message_id(alert_id, event.originator_version),
            aggregate_id=alert_id,
            aggregate_version=event.originator_version,
            causation_id=alert_id,
            occurred_at=event.timestamp,
        )
