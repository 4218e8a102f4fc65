"""Alerts: the rules that turn domain events into alerts, the Alert aggregate, and the index
of each subject's open alert. No I/O.

An alert is one *episode* of a condition on a subject (``environment:<id>:backup``,
``destination:<id>``, ...). A failure while the subject's alert is open repeats it
(``occurrences``, ``lastSeenAt``); a later success of the same kind on the same subject
resolves it; a failure after that opens a new alert (the next episode). The subject's
index (``AlertSubject``) holds the open alert, the episode number and the time of the
last event it took, so an older event that arrives late (another partition, a relay that
published again) neither reopens nor resolves, and a source event seen already changes
nothing.

Alert ids are derived from (organization, subject, episode): the same event handled twice
can never open two alerts.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from tidemark_contracts.alert import AlertKind, AlertSeverity
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupUploaded,
    BackupUploadFailed,
)
from tidemark_contracts.restore import RestoreCompleted, RestoreFailed
from tidemark_contracts.schedule import ScheduleFired, ScheduleMissed
from tidemark_contracts.wal import WalArchivingStatusChanged

ALERT_NAMESPACE = UUID("0d7a4a52-6a43-4f43-9a55-3f1c8e2b7a10")

# Bounds: an alert is read in a list and POSTed to webhooks; an error text of a source
# event is unbounded, a name is whatever the organization registered.
TITLE_MAX = 200
MESSAGE_MAX = 2000
ERROR_MAX = 1000
NAME_MAX = 80
# Source events remembered per subject to recognise one seen already (a relay that
# published a batch again), beside the time rule.
RECENT_SOURCES = 32


class AlertError(Exception):
    """A change the alert's current state does not allow."""


@dataclass(frozen=True)
class Rule:
    """One kind of alert: what raises it, what its subject is, what resolves it."""

    kind: AlertKind
    severity: AlertSeverity
    raised_by: str
    subject: str
    resolved_by: str


RULES: dict[str, Rule] = {
    rule.kind: rule
    for rule in (
        Rule(
            "backup_failed",
            "critical",
            BackupFailed.message_type,
            "environment:<env>:backup",
            f"a later {BackupCompleted.message_type} of the environment",
        ),
        Rule(
            "restore_failed",
            "critical",
            RestoreFailed.message_type,
            "environment:<target env>:restore",
            f"a later {RestoreCompleted.message_type} into the environment",
        ),
        Rule(
            "schedule_missed",
            "warning",
            ScheduleMissed.message_type,
            "environment:<env>:schedule",
            f"a later {ScheduleFired.message_type} of the environment",
        ),
        Rule(
            "wal_archiving_stalled",
            "critical",
            f"{WalArchivingStatusChanged.message_type} (stalled)",
            "environment:<env>:wal",
            f"{WalArchivingStatusChanged.message_type} (active or disabled)",
        ),
        Rule(
            "backup_cleanup_failed",
            "warning",
            BackupCleanupFailed.message_type,
            "backup:<backup>:cleanup",
            f"{BackupDeleted.message_type} of the backup",
        ),
        Rule(
            "destination_unreachable",
            "critical",
            BackupUploadFailed.message_type,
            "destination:<destination>",
            f"a later {BackupUploaded.message_type} to the destination",
        ),
    )
}


# -- what the rules produce ---------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """What the catalog view knows, for the event's organization, of where it happened:
    the environment's project and the names to put in messages (None: not known)."""

    project_id: UUID | None = None
    environment_name: str | None = None
    destination_name: str | None = None


@dataclass(frozen=True)
class Condition:
    """One occurrence of a failure: raises or repeats the subject's alert."""

    kind: AlertKind
    severity: AlertSeverity
    organization_id: UUID
    subject: str
    project_id: UUID | None
    environment_id: UUID | None
    backup_id: UUID | None
    restore_id: UUID | None
    destination_id: UUID | None
    title: str
    message: str
    at: datetime
    source_id: UUID  # the source event's message id (stable across re-publication)


@dataclass(frozen=True)
class Recovery:
    """A success that resolves the subject's open alert, if any."""

    organization_id: UUID
    subject: str
    reason: str
    at: datetime
    source_id: UUID


def environment_subject(environment_id: UUID, aspect: str) -> str:
    return f"environment:{environment_id}:{aspect}"


def backup_cleanup_subject(backup_id: UUID) -> str:
    return f"backup:{backup_id}:cleanup"


def destination_subject(destination_id: UUID) -> str:
    return f"destination:{destination_id}"


def alert_id_of(organization_id: UUID, subject: str, episode: int) -> UUID:
    return uuid.uuid5(ALERT_NAMESPACE, f"alert:{organization_id}:{subject}:{episode}")


# -- texts --------------------------------------------------------------------------------

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/'\"`:;,()]+){2,}/?")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bounded(text: str, limit: int) -> str:
    # Control characters go (NUL would not fit a PostgreSQL text column: the alert's
    # event could never be projected), and whitespace runs become one space.
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def clean_error(error: str) -> str:
    """The source event's error text as an alert may carry it: credential-free already
    (by contract), here also without URLs or paths of a runner's machine, and bounded."""
    text = _URL.sub("<url>", error)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    text = _bounded(text, ERROR_MAX).rstrip(".")
    return text or "no reason given"


def _environment(place: Place, environment_id: UUID) -> str:
    if place.environment_name:
        return f'environment "{_bounded(place.environment_name, NAME_MAX)}"'
    return f"environment {environment_id}"


def _destination(place: Place, destination_id: UUID) -> str:
    if place.destination_name:
        return f'destination "{_bounded(place.destination_name, NAME_MAX)}"'
    return f"destination {destination_id}"


def _when(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _condition(
    kind: AlertKind,
    organization_id: UUID,
    subject: str,
    *,
    place: Place,
    environment_id: UUID | None,
    backup_id: UUID | None = None,
    restore_id: UUID | None = None,
    destination_id: UUID | None = None,
    title: str,
    message: str,
    at: datetime,
    source_id: UUID,
) -> Condition:
    return Condition(
        kind=kind,
        severity=RULES[kind].severity,
        organization_id=organization_id,
        subject=subject,
        project_id=place.project_id,
        environment_id=environment_id,
        backup_id=backup_id,
        restore_id=restore_id,
        destination_id=destination_id,
        title=_bounded(title, TITLE_MAX),
        message=_bounded(message, MESSAGE_MAX),
        at=at,
        source_id=source_id,
    )


# -- the rules, one per source event ------------------------------------------------------


def on_backup_failed(
    event: BackupFailed, organization_id: UUID, place: Place, source_id: UUID
) -> Condition:
    env = _environment(place, event.environment_id)
    return _condition(
        "backup_failed",
        organization_id,
        environment_subject(event.environment_id, "backup"),
        place=place,
        environment_id=event.environment_id,
        backup_id=event.backup_id,
        title=f"Backup of {env} failed",
        message=f"Backup {event.backup_id} of {env} failed: {clean_error(event.error)}. "
        "Fix what the error names (the database's connection settings or credentials, "
        "or a destination's access), then start a backup again. This alert resolves "
        "when a backup of the environment completes.",
        at=event.failed_at,
        source_id=source_id,
    )


def on_backup_completed(event: BackupCompleted, organization_id: UUID, source_id: UUID) -> Recovery:
    return Recovery(
        organization_id,
        environment_subject(event.environment_id, "backup"),
        f"backup {event.backup_id} of the environment completed",
        event.completed_at,
        source_id,
    )


def on_restore_failed(
    event: RestoreFailed,
    organization_id: UUID,
    place: Place,
    source_id: UUID,
    backup_id: UUID | None,
) -> Condition:
    env = _environment(place, event.target_environment_id)
    target = (
        "The target was left as it was."
        if event.target_unchanged
        else "The target may be partly restored: check it before using it."
    )
    return _condition(
        "restore_failed",
        organization_id,
        environment_subject(event.target_environment_id, "restore"),
        place=place,
        environment_id=event.target_environment_id,
        backup_id=backup_id,
        restore_id=event.restore_id,
        title=f"Restore into {env} failed",
        message=f"Restore {event.restore_id} into {env} failed: "
        f"{clean_error(event.error)}. {target} Fix what the error names, then request the "
        "restore again. This alert resolves when a restore into the environment completes.",
        at=event.failed_at,
        source_id=source_id,
    )


def on_restore_completed(
    event: RestoreCompleted, organization_id: UUID, source_id: UUID
) -> Recovery:
    return Recovery(
        organization_id,
        environment_subject(event.target_environment_id, "restore"),
        f"restore {event.restore_id} into the environment completed",
        event.completed_at,
        source_id,
    )


def on_schedule_missed(
    event: ScheduleMissed, organization_id: UUID, place: Place, source_id: UUID
) -> Condition:
    env = _environment(place, event.environment_id)
    count = event.missed_count
    times = (
        f"due at {_when(event.scheduled_for)}"
        if count == 1
        else f"due from {_when(event.first_scheduled_for)} to {_when(event.scheduled_for)}"
    )
    return _condition(
        "schedule_missed",
        organization_id,
        environment_subject(event.environment_id, "schedule"),
        place=place,
        environment_id=event.environment_id,
        title=f"Scheduled backups of {env} were missed",
        message=f"{count} scheduled {event.type} backup{'s' if count > 1 else ''} of {env} "
        f"did not run ({times}): {clean_error(event.reason)}. Check that the scheduler "
        "runs; take a backup by hand if the environment changed since its last one. This "
        "alert resolves when the schedule fires again.",
        at=event.detected_at,
        source_id=source_id,
    )


def on_schedule_fired(event: ScheduleFired, organization_id: UUID, source_id: UUID) -> Recovery:
    return Recovery(
        organization_id,
        environment_subject(event.environment_id, "schedule"),
        f"the schedule fired for {_when(event.scheduled_for)}",
        event.fired_at,
        source_id,
    )


def on_wal_status(
    event: WalArchivingStatusChanged, organization_id: UUID, place: Place, source_id: UUID
) -> Condition | Recovery:
    subject = environment_subject(event.environment_id, "wal")
    if event.status != "stalled":
        return Recovery(
            organization_id,
            subject,
            f"WAL archiving of the environment is {event.status}",
            event.changed_at,
            source_id,
        )
    env = _environment(place, event.environment_id)
    why = f": {clean_error(event.reason)}" if event.reason else ""
    return _condition(
        "wal_archiving_stalled",
        organization_id,
        subject,
        place=place,
        environment_id=event.environment_id,
        title=f"WAL archiving of {env} stalled",
        message=f"WAL archiving of {env} stalled{why}. Point-in-time recovery cannot reach "
        "past the last archived WAL until it resumes. Check that the database accepts the "
        "runner's replication connection and that the WAL destination takes writes. This "
        "alert resolves when archiving is active again (or switched off).",
        at=event.changed_at,
        source_id=source_id,
    )


def on_backup_cleanup_failed(
    event: BackupCleanupFailed, organization_id: UUID, place: Place, source_id: UUID
) -> Condition:
    env = _environment(place, event.environment_id)
    destination = _destination(place, event.destination_id)
    then = (
        "No further attempt is scheduled: request the backup's deletion again once the "
        "destination accepts it."
        if event.final
        else "Another attempt is scheduled."
    )
    return _condition(
        "backup_cleanup_failed",
        organization_id,
        backup_cleanup_subject(event.backup_id),
        place=place,
        environment_id=event.environment_id,
        backup_id=event.backup_id,
        destination_id=event.destination_id,
        title=f"Removing a deleted backup from {destination} failed",
        message=f"Removing deleted backup {event.backup_id} of {env} from {destination} "
        f"failed (attempt {event.attempt}): {clean_error(event.error)}. The artifact still "
        f"takes space there. {then} This alert resolves when the backup is gone from every "
        "destination.",
        at=event.failed_at,
        source_id=source_id,
    )


def on_backup_deleted(event: BackupDeleted, organization_id: UUID, source_id: UUID) -> Recovery:
    return Recovery(
        organization_id,
        backup_cleanup_subject(event.backup_id),
        "the backup is gone from every destination",
        event.deleted_at,
        source_id,
    )


def on_backup_upload_failed(
    event: BackupUploadFailed, organization_id: UUID, place: Place, source_id: UUID
) -> Condition:
    env = _environment(place, event.environment_id)
    destination = _destination(place, event.destination_id)
    return _condition(
        "destination_unreachable",
        organization_id,
        destination_subject(event.destination_id),
        place=Place(),  # an organization's destination, of no one project
        environment_id=None,
        destination_id=event.destination_id,
        title=f"{destination[0].upper()}{destination[1:]} is unreachable",
        message=f"{destination[0].upper()}{destination[1:]} did not take backup "
        f"{event.backup_id} of {env}: {clean_error(event.error)}. Check the destination's "
        "endpoint, credentials and free space; backups go on to their other destinations "
        "meanwhile. This alert resolves when a backup is stored there again.",
        at=event.failed_at,
        source_id=source_id,
    )


def on_backup_uploaded(event: BackupUploaded, organization_id: UUID, source_id: UUID) -> Recovery:
    return Recovery(
        organization_id,
        destination_subject(event.destination_id),
        f"backup {event.backup_id} was stored in the destination",
        event.uploaded_at,
        source_id,
    )


# -- the subject's index ------------------------------------------------------------------

FailureStep = Literal["raise", "repeat", "duplicate", "stale"]
RecoveryStep = Literal["resolve", "clear", "duplicate", "stale"]


class AlertSubject(Aggregate):
    """One subject of one organization: its open alert, its episode count, and the time
    of the last event it took."""

    class Opened(Aggregate.Created):
        organization_id: UUID
        subject: str

    class Observed(Aggregate.Event):
        at: datetime
        source_id: UUID
        open_alert_id: UUID | None
        episode: int

    @staticmethod
    def create_id(organization_id: UUID, subject: str) -> UUID:
        return uuid.uuid5(ALERT_NAMESPACE, f"subject:{organization_id}:{subject}")

    @event(Opened)
    def __init__(self, *, organization_id: UUID, subject: str) -> None:
        self.organization_id = organization_id
        self.subject = subject
        self.open_alert_id: UUID | None = None
        self.episode = 0
        self.last_event_at: datetime | None = None
        self.recent_sources: list[str] = []

    def _judge(self, at: datetime, source_id: UUID) -> Literal["duplicate", "stale"] | None:
        if str(source_id) in self.recent_sources:
            return "duplicate"
        if self.last_event_at is not None and at < self.last_event_at:
            return "stale"
        return None

    def fail(self, at: datetime, source_id: UUID) -> tuple[FailureStep, UUID | None]:
        """Take a failure: ``raise`` a new alert (its id), ``repeat`` the open one, or
        nothing (``duplicate``, ``stale``: older than what the subject saw last)."""
        judged = self._judge(at, source_id)
        if judged is not None:
            return judged, None
        if self.open_alert_id is not None:
            self._observed(
                at=at, source_id=source_id, open_alert_id=self.open_alert_id, episode=self.episode
            )
            return "repeat", self.open_alert_id
        episode = self.episode + 1
        alert_id = alert_id_of(self.organization_id, self.subject, episode)
        self._observed(at=at, source_id=source_id, open_alert_id=alert_id, episode=episode)
        return "raise", alert_id

    def recover(self, at: datetime, source_id: UUID) -> tuple[RecoveryStep, UUID | None]:
        """Take a success: ``resolve`` the open alert (its id), or ``clear`` (nothing was
        open; the time is kept so an older failure arriving later opens nothing), or
        nothing (``duplicate``, ``stale``)."""
        judged = self._judge(at, source_id)
        if judged is not None:
            return judged, None
        resolved = self.open_alert_id
        self._observed(at=at, source_id=source_id, open_alert_id=None, episode=self.episode)
        return ("resolve", resolved) if resolved is not None else ("clear", None)

    @event(Observed)
    def _observed(
        self, at: datetime, source_id: UUID, open_alert_id: UUID | None, episode: int
    ) -> None:
        self.open_alert_id = open_alert_id
        self.episode = episode
        if self.last_event_at is None or at > self.last_event_at:
            self.last_event_at = at
        self.recent_sources = [*self.recent_sources, str(source_id)][-RECENT_SOURCES:]


# -- the alert ----------------------------------------------------------------------------


class Alert(Aggregate):
    """One episode of a condition on a subject, from raised to resolved; read and
    dismissed at most once each."""

    class Raised(Aggregate.Created):
        alert_id: UUID
        organization_id: UUID
        project_id: UUID | None
        environment_id: UUID | None
        backup_id: UUID | None
        restore_id: UUID | None
        destination_id: UUID | None
        kind: str
        severity: str
        subject: str
        title: str
        message: str
        raised_at: datetime

    # Every later event carries the alert's organization and environment: the relay maps
    # each to its contract message (and Kafka key) on its own.
    class Repeated(Aggregate.Event):
        organization_id: UUID
        environment_id: UUID | None
        backup_id: UUID | None
        restore_id: UUID | None
        title: str
        message: str
        occurrences: int
        last_seen_at: datetime

    class Resolved(Aggregate.Event):
        organization_id: UUID
        environment_id: UUID | None
        reason: str
        resolved_at: datetime

    class Read(Aggregate.Event):
        organization_id: UUID
        environment_id: UUID | None
        read_by: str
        read_at: datetime

    class Dismissed(Aggregate.Event):
        organization_id: UUID
        environment_id: UUID | None
        dismissed_by: str
        dismissed_at: datetime

    @staticmethod
    def create_id(alert_id: UUID) -> UUID:
        return alert_id

    @classmethod
    def raise_for(cls, alert_id: UUID, condition: Condition) -> Alert:
        return cls(
            alert_id=alert_id,
            organization_id=condition.organization_id,
            project_id=condition.project_id,
            environment_id=condition.environment_id,
            backup_id=condition.backup_id,
            restore_id=condition.restore_id,
            destination_id=condition.destination_id,
            kind=condition.kind,
            severity=condition.severity,
            subject=condition.subject,
            title=condition.title,
            message=condition.message,
            raised_at=condition.at,
        )

    @event(Raised)
    def __init__(
        self,
        *,
        alert_id: UUID,
        organization_id: UUID,
        project_id: UUID | None,
        environment_id: UUID | None,
        backup_id: UUID | None,
        restore_id: UUID | None,
        destination_id: UUID | None,
        kind: str,
        severity: str,
        subject: str,
        title: str,
        message: str,
        raised_at: datetime,
    ) -> None:
        self.alert_id = alert_id
        self.organization_id = organization_id
        self.project_id = project_id
        self.environment_id = environment_id
        self.backup_id = backup_id
        self.restore_id = restore_id
        self.destination_id = destination_id
        self.kind = kind
        self.severity = severity
        self.subject = subject
        self.title = title
        self.message = message
        self.raised_at = raised_at
        self.occurrences = 1
        self.last_seen_at = raised_at
        self.resolved_at: datetime | None = None
        self.read_at: datetime | None = None
        self.dismissed_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    def repeat(self, condition: Condition) -> None:
        if not self.is_open:
            raise AlertError("a resolved alert does not repeat: its subject opens a new one")
        if condition.subject != self.subject or condition.kind != self.kind:
            raise AlertError("a condition repeats only the alert of its own kind and subject")
        self._repeated(
            organization_id=self.organization_id,
            environment_id=self.environment_id,
            backup_id=condition.backup_id,
            restore_id=condition.restore_id,
            title=condition.title,
            message=condition.message,
            occurrences=self.occurrences + 1,
            last_seen_at=max(condition.at, self.last_seen_at),
        )

    @event(Repeated)
    def _repeated(
        self,
        organization_id: UUID,
        environment_id: UUID | None,
        backup_id: UUID | None,
        restore_id: UUID | None,
        title: str,
        message: str,
        occurrences: int,
        last_seen_at: datetime,
    ) -> None:
        self.backup_id = backup_id
        self.restore_id = restore_id
        self.title = title
        self.message = message
        self.occurrences = occurrences
        self.last_seen_at = last_seen_at

    def resolve(self, reason: str, at: datetime) -> None:
        if not self.is_open:
            raise AlertError("the alert is resolved already")
        self._resolved(
            organization_id=self.organization_id,
            environment_id=self.environment_id,
            reason=reason,
            resolved_at=at,
        )

    @event(Resolved)
    def _resolved(
        self,
        organization_id: UUID,
        environment_id: UUID | None,
        reason: str,
        resolved_at: datetime,
    ) -> None:
        self.resolved_at = resolved_at

    def mark_read(self, by: str, at: datetime) -> bool:
        """Record the first read; False (no event) when it was read already."""
        if self.read_at is not None:
            return False
        self._read(
            organization_id=self.organization_id,
            environment_id=self.environment_id,
            read_by=by,
            read_at=at,
        )
        return True

    @event(Read)
    def _read(
        self, organization_id: UUID, environment_id: UUID | None, read_by: str, read_at: datetime
    ) -> None:
        self.read_at = read_at

    def dismiss(self, by: str, at: datetime) -> bool:
        """Record the first dismissal; False (no event) when it was dismissed already."""
        if self.dismissed_at is not None:
            return False
        self._dismissed(
            organization_id=self.organization_id,
            environment_id=self.environment_id,
            dismissed_by=by,
            dismissed_at=at,
        )
        return True

    @event(Dismissed)
    def _dismissed(
        self,
        organization_id: UUID,
        environment_id: UUID | None,
        dismissed_by: str,
        dismissed_at: datetime,
    ) -> None:
        self.dismissed_at = dismissed_at


class RestoreOrigin(Aggregate):
    """What a restore's request said that its failure does not: the backup it restores
    (a link of the alert) and its project."""

    class Noted(Aggregate.Created):
        restore_id: UUID
        organization_id: UUID
        project_id: UUID
        backup_id: UUID

    @staticmethod
    def create_id(restore_id: UUID) -> UUID:
        return restore_origin_id(restore_id)

    @event(Noted)
    def __init__(
        self, *, restore_id: UUID, organization_id: UUID, project_id: UUID, backup_id: UUID
    ) -> None:
        self.restore_id = restore_id
        self.organization_id = organization_id
        self.project_id = project_id
        self.backup_id = backup_id


def restore_origin_id(restore_id: UUID) -> UUID:
    return uuid.uuid5(ALERT_NAMESPACE, f"restore:{restore_id}")
