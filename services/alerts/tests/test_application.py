"""The alert rules, the Alert aggregate and the subjects' index, on eventsourcing's
in-memory store: every kind raises, repeats, resolves and reopens; late and repeated
source events change nothing; read and dismiss happen once."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_alerts import domain
from tidemark_alerts.application import AlertsApplication, ConcurrentChange, Effect
from tidemark_alerts.domain import (
    ERROR_MAX,
    MESSAGE_MAX,
    RULES,
    TITLE_MAX,
    Alert,
    AlertError,
    Place,
    clean_error,
)
from tidemark_contracts import Envelope
from tidemark_contracts.alert import ALERT_KINDS, DismissAlert, MarkAlertRead
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

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ORG = uuid.uuid4()
PROJECT = uuid.uuid4()
PLACE = Place(PROJECT, "shop-prod", "vault")
CHECKSUM = "sha256:" + "0" * 64


class Feed:
    """Source events handed to the application as the handlers would, each at a
    position of its own (a redelivery reuses one)."""

    def __init__(self, app: AlertsApplication) -> None:
        self.app = app
        self._offsets = itertools.count(1)

    def tracking(self) -> Tracking:
        return Tracking("test-cluster/source:0", next(self._offsets))


@dataclass(frozen=True)
class Case:
    """One alert kind: how to fail and how to succeed on one subject."""

    kind: str
    fail: Callable[[AlertsApplication, datetime, Tracking], Effect | None]
    succeed: Callable[[AlertsApplication, datetime, Tracking], Effect | None]
    environment_id: uuid.UUID | None
    links: dict[str, uuid.UUID | None]


ENV = uuid.uuid4()
BACKUP = uuid.uuid4()
DEST = uuid.uuid4()
RESTORE = uuid.uuid4()


def _sid() -> uuid.UUID:
    return uuid.uuid4()


def cases() -> list[Case]:
    return [
        Case(
            "backup_failed",
            lambda app, at, t: app.backup_failed(
                BackupFailed(backup_id=BACKUP, environment_id=ENV, error="boom", failed_at=at),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.backup_completed(
                BackupCompleted(
                    backup_id=uuid.uuid4(),
                    environment_id=ENV,
                    size_bytes=1,
                    checksum=CHECKSUM,
                    compression="zstd",
                    completed_at=at,
                    duration_ms=1,
                ),
                ORG,
                _sid(),
                t,
            ),
            ENV,
            {
                "environment_id": ENV,
                "backup_id": BACKUP,
                "restore_id": None,
                "destination_id": None,
                "project_id": PROJECT,
            },
        ),
        Case(
            "restore_failed",
            lambda app, at, t: app.restore_failed(
                RestoreFailed(
                    restore_id=RESTORE, target_environment_id=ENV, error="boom", failed_at=at
                ),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.restore_completed(
                RestoreCompleted(
                    restore_id=uuid.uuid4(),
                    target_environment_id=ENV,
                    completed_at=at,
                    duration_ms=1,
                ),
                ORG,
                _sid(),
                t,
            ),
            ENV,
            {
                "environment_id": ENV,
                "backup_id": None,
                "restore_id": RESTORE,
                "destination_id": None,
                "project_id": PROJECT,
            },
        ),
        Case(
            "schedule_missed",
            lambda app, at, t: app.schedule_missed(
                ScheduleMissed(
                    schedule_id=uuid.uuid4(),
                    organization_id=ORG,
                    environment_id=ENV,
                    type="db",
                    scheduled_for=at,
                    first_scheduled_for=at - timedelta(hours=2),
                    missed_count=3,
                    reason="the scheduler was down",
                    detected_at=at,
                ),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.schedule_fired(
                ScheduleFired(
                    schedule_id=uuid.uuid4(),
                    organization_id=ORG,
                    environment_id=ENV,
                    type="db",
                    backup_id=uuid.uuid4(),
                    scheduled_for=at,
                    fired_at=at,
                ),
                ORG,
                _sid(),
                t,
            ),
            ENV,
            {
                "environment_id": ENV,
                "backup_id": None,
                "restore_id": None,
                "destination_id": None,
                "project_id": PROJECT,
            },
        ),
        Case(
            "wal_archiving_stalled",
            lambda app, at, t: app.wal_status_changed(
                WalArchivingStatusChanged(
                    environment_id=ENV,
                    organization_id=ORG,
                    status="stalled",
                    reason="no segment",
                    changed_at=at,
                ),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.wal_status_changed(
                WalArchivingStatusChanged(
                    environment_id=ENV, organization_id=ORG, status="active", changed_at=at
                ),
                ORG,
                Place(),
                _sid(),
                t,
            ),
            ENV,
            {
                "environment_id": ENV,
                "backup_id": None,
                "restore_id": None,
                "destination_id": None,
                "project_id": PROJECT,
            },
        ),
        Case(
            "backup_cleanup_failed",
            lambda app, at, t: app.backup_cleanup_failed(
                BackupCleanupFailed(
                    backup_id=BACKUP,
                    environment_id=ENV,
                    destination_id=DEST,
                    error="refused",
                    attempt=1,
                    failed_at=at,
                ),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.backup_deleted(
                BackupDeleted(backup_id=BACKUP, environment_id=ENV, deleted_at=at),
                ORG,
                _sid(),
                t,
            ),
            ENV,
            {
                "environment_id": ENV,
                "backup_id": BACKUP,
                "restore_id": None,
                "destination_id": DEST,
                "project_id": PROJECT,
            },
        ),
        Case(
            "destination_unreachable",
            lambda app, at, t: app.backup_upload_failed(
                BackupUploadFailed(
                    backup_id=BACKUP,
                    environment_id=ENV,
                    destination_id=DEST,
                    error="connection refused",
                    failed_at=at,
                ),
                ORG,
                PLACE,
                _sid(),
                t,
            ),
            lambda app, at, t: app.backup_uploaded(
                BackupUploaded(
                    backup_id=uuid.uuid4(),
                    environment_id=uuid.uuid4(),
                    destination_id=DEST,
                    location="x/y",
                    size_bytes=1,
                    uploaded_at=at,
                ),
                ORG,
                _sid(),
                t,
            ),
            None,
            {
                "environment_id": None,
                "backup_id": None,
                "restore_id": None,
                "destination_id": DEST,
                "project_id": None,
            },
        ),
    ]


CASES = {case.kind: case for case in cases()}


def relayed(app: AlertsApplication) -> list[Envelope]:
    envelopes = []
    for notification in app.recorder.select_notifications(start=1, limit=1000):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        if mapped is not None:
            assert mapped[0] is ALERT_EVENTS
            envelopes.append(mapped[1])
    return envelopes


def types(app: AlertsApplication) -> list[str]:
    return [e.message_type for e in relayed(app)]


def test_every_kind_has_a_rule_and_a_case() -> None:
    assert set(RULES) == set(ALERT_KINDS) == set(CASES)


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_a_failure_raises_an_alert_with_its_kind_severity_and_links(kind: str) -> None:
    case, app = CASES[kind], AlertsApplication()
    feed = Feed(app)
    effect = case.fail(app, T0, feed.tracking())
    assert effect is not None
    assert effect.change == "raised"
    assert effect.kind == kind
    alert = app.get_alert(effect.alert_id)
    assert alert is not None
    assert (alert.kind, alert.severity) == (kind, RULES[kind].severity)
    assert alert.occurrences == 1
    assert alert.raised_at == T0
    assert alert.is_open
    for link, value in case.links.items():
        assert getattr(alert, link) == value, link
    [raised] = relayed(app)
    assert raised.message_type == "alert.AlertRaised"
    assert raised.organization_id == ORG
    assert raised.environment_id == case.environment_id
    # One alert's events share the partition of its environment (the organization's
    # when it has none).
    assert raised.key == str(case.environment_id or ORG).encode()
    assert raised.payload["kind"] == kind
    assert raised.payload["severity"] == alert.severity


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_a_repeated_failure_updates_the_one_open_alert(kind: str) -> None:
    case, app = CASES[kind], AlertsApplication()
    feed = Feed(app)
    first = case.fail(app, T0, feed.tracking())
    second = case.fail(app, T0 + timedelta(minutes=5), feed.tracking())
    third = case.fail(app, T0 + timedelta(minutes=9), feed.tracking())
    assert first is not None
    assert second is not None
    assert third is not None
    assert first.alert_id == second.alert_id == third.alert_id
    assert (second.change, third.change) == ("repeated", "repeated")
    alert = app.get_alert(first.alert_id)
    assert alert is not None
    assert alert.occurrences == 3
    assert alert.last_seen_at == T0 + timedelta(minutes=9)
    assert types(app) == ["alert.AlertRaised", "alert.AlertRepeated", "alert.AlertRepeated"]
    assert relayed(app)[-1].payload["occurrences"] == 3
    assert all(e.environment_id == case.environment_id for e in relayed(app))


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_a_later_success_resolves_and_a_new_failure_opens_a_new_alert(kind: str) -> None:
    case, app = CASES[kind], AlertsApplication()
    feed = Feed(app)
    first = case.fail(app, T0, feed.tracking())
    resolved = case.succeed(app, T0 + timedelta(minutes=1), feed.tracking())
    assert first is not None
    assert resolved is not None
    assert resolved.change == "resolved"
    assert resolved.alert_id == first.alert_id
    alert = app.get_alert(first.alert_id)
    assert alert is not None
    assert alert.resolved_at == T0 + timedelta(minutes=1)
    # A second success resolves nothing more.
    assert case.succeed(app, T0 + timedelta(minutes=2), feed.tracking()) is None
    again = case.fail(app, T0 + timedelta(minutes=3), feed.tracking())
    assert again is not None
    assert again.change == "raised"
    assert again.alert_id != first.alert_id
    assert types(app) == ["alert.AlertRaised", "alert.AlertResolved", "alert.AlertRaised"]
    assert relayed(app)[1].payload["resolvedAt"] == "2026-11-30T08:01:00.000000Z"


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_an_older_event_arriving_late_neither_reopens_nor_resolves(kind: str) -> None:
    case, app = CASES[kind], AlertsApplication()
    feed = Feed(app)
    # A success at T0+10 seen first: a failure from T0+5 arriving after it opens nothing.
    assert case.succeed(app, T0 + timedelta(minutes=10), feed.tracking()) is None
    assert case.fail(app, T0 + timedelta(minutes=5), feed.tracking()) is None
    assert types(app) == []
    # A failure at T0+20 opens one; a success from T0+15 arriving later leaves it open.
    opened = case.fail(app, T0 + timedelta(minutes=20), feed.tracking())
    assert opened is not None
    assert opened.change == "raised"
    assert case.succeed(app, T0 + timedelta(minutes=15), feed.tracking()) is None
    alert = app.get_alert(opened.alert_id)
    assert alert is not None
    assert alert.is_open
    assert types(app) == ["alert.AlertRaised"]


def test_another_kind_on_the_same_environment_is_a_separate_alert() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    effects = [CASES[kind].fail(app, T0, feed.tracking()) for kind in ALERT_KINDS]
    ids = {effect.alert_id for effect in effects if effect is not None}
    assert len(ids) == len(ALERT_KINDS)
    # The backup's success resolves only the backup alert.
    resolved = CASES["backup_failed"].succeed(app, T0 + timedelta(minutes=1), feed.tracking())
    assert resolved is not None
    assert resolved.kind == "backup_failed"
    still_open = [app.get_alert(i) for i in ids]
    assert sorted(a.kind for a in still_open if a is not None and a.is_open) == sorted(
        k for k in ALERT_KINDS if k != "backup_failed"
    )


def test_the_same_subject_in_another_organization_is_another_alert() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    event = BackupFailed(backup_id=BACKUP, environment_id=ENV, error="x", failed_at=T0)
    mine = app.backup_failed(event, ORG, PLACE, _sid(), feed.tracking())
    theirs = app.backup_failed(event, uuid.uuid4(), Place(), _sid(), feed.tracking())
    assert mine is not None
    assert theirs is not None
    assert mine.alert_id != theirs.alert_id
    assert theirs.change == "raised"


def test_a_redelivered_event_changes_nothing() -> None:
    app = AlertsApplication()
    event = BackupFailed(backup_id=BACKUP, environment_id=ENV, error="x", failed_at=T0)
    source = _sid()
    tracking = Tracking("test-cluster/backup.events:0", 7)
    assert app.backup_failed(event, ORG, PLACE, source, tracking) is not None
    # The same record again (same position): nothing written.
    assert app.backup_failed(event, ORG, PLACE, source, tracking) is None
    # The same event published again by a relay (a new position, the same message id).
    again = Tracking("test-cluster/backup.events:0", 8)
    assert app.backup_failed(event, ORG, PLACE, source, again) is None
    assert types(app) == ["alert.AlertRaised"]


def test_a_subject_changed_meanwhile_is_a_retry_not_a_lost_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events of one destination come from several partitions: two instances may load its
    index at once. The later save is refused, and the handler raises so the consumer
    retries it on the index as it now is."""
    app = AlertsApplication()
    feed = Feed(app)
    case = CASES["destination_unreachable"]
    assert case.fail(app, T0, feed.tracking()) is not None
    stale = app.get_subject(ORG, domain.destination_subject(DEST))
    assert case.fail(app, T0 + timedelta(minutes=1), feed.tracking()) is not None
    # Another instance's copy loaded before that repetition:
    monkeypatch.setattr(app, "get_subject", lambda *_: stale)
    with pytest.raises(ConcurrentChange):
        case.fail(app, T0 + timedelta(minutes=2), feed.tracking())
    monkeypatch.undo()
    retried = case.fail(app, T0 + timedelta(minutes=2), feed.tracking())
    assert retried is not None
    assert retried.change == "repeated"
    alert = app.get_alert(retried.alert_id)
    assert alert is not None
    assert alert.occurrences == 3


# -- read and dismiss ---------------------------------------------------------------------


def _raise(app: AlertsApplication, feed: Feed) -> uuid.UUID:
    effect = CASES["backup_failed"].fail(app, T0, feed.tracking())
    assert effect is not None
    return effect.alert_id


def read(alert_id: uuid.UUID, at: datetime, org: uuid.UUID = ORG) -> MarkAlertRead:
    return MarkAlertRead(
        alert_id=alert_id,
        organization_id=org,
        environment_id=ENV,
        requested_by="alice",
        requested_at=at,
    )


def dismiss(alert_id: uuid.UUID, at: datetime, org: uuid.UUID = ORG) -> DismissAlert:
    return DismissAlert(
        alert_id=alert_id,
        organization_id=org,
        environment_id=ENV,
        requested_by="bob",
        requested_at=at,
    )


def test_marking_read_is_recorded_the_first_time_only() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    alert_id = _raise(app, feed)
    first = app.mark_read(read(alert_id, T0 + timedelta(minutes=1)), feed.tracking())
    assert first is not None
    assert first.change == "read"
    assert app.mark_read(read(alert_id, T0 + timedelta(minutes=2)), feed.tracking()) is None
    alert = app.get_alert(alert_id)
    assert alert is not None
    assert alert.read_at == T0 + timedelta(minutes=1)
    assert alert.dismissed_at is None
    assert types(app) == ["alert.AlertRaised", "alert.AlertRead"]
    read_event = relayed(app)[1]
    assert read_event.payload["readBy"] == "alice"
    assert read_event.payload["readAt"] == "2026-11-30T08:01:00.000000Z"
    assert read_event.environment_id == ENV


def test_dismissing_is_recorded_the_first_time_only_and_does_not_mark_read() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    alert_id = _raise(app, feed)
    assert app.dismiss(dismiss(alert_id, T0 + timedelta(minutes=1)), feed.tracking())
    assert app.dismiss(dismiss(alert_id, T0 + timedelta(minutes=3)), feed.tracking()) is None
    alert = app.get_alert(alert_id)
    assert alert is not None
    assert alert.dismissed_at == T0 + timedelta(minutes=1)
    assert alert.read_at is None
    assert types(app) == ["alert.AlertRaised", "alert.AlertDismissed"]


def test_commands_for_an_unknown_or_foreign_alert_have_no_effect() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    alert_id = _raise(app, feed)
    assert app.mark_read(read(uuid.uuid4(), T0), feed.tracking()) is None
    assert app.dismiss(dismiss(uuid.uuid4(), T0), feed.tracking()) is None
    other_org = uuid.uuid4()
    assert app.mark_read(read(alert_id, T0, other_org), feed.tracking()) is None
    assert app.dismiss(dismiss(alert_id, T0, other_org), feed.tracking()) is None
    # An id that is not an alert's (a subject's index) is unknown too.
    index_id = domain.AlertSubject.create_id(ORG, domain.environment_subject(ENV, "backup"))
    assert app.mark_read(read(index_id, T0), feed.tracking()) is None
    assert types(app) == ["alert.AlertRaised"]


def test_a_resolved_alert_can_still_be_read_and_dismissed() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    alert_id = _raise(app, feed)
    CASES["backup_failed"].succeed(app, T0 + timedelta(minutes=1), feed.tracking())
    assert app.mark_read(read(alert_id, T0 + timedelta(minutes=2)), feed.tracking())
    assert app.dismiss(dismiss(alert_id, T0 + timedelta(minutes=2)), feed.tracking())
    assert types(app)[-2:] == ["alert.AlertRead", "alert.AlertDismissed"]


def test_a_resolved_alert_refuses_to_repeat_or_resolve_again() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    alert_id = _raise(app, feed)
    CASES["backup_failed"].succeed(app, T0 + timedelta(minutes=1), feed.tracking())
    alert = app.get_alert(alert_id)
    assert alert is not None
    condition = domain.on_backup_failed(
        BackupFailed(backup_id=BACKUP, environment_id=ENV, error="x", failed_at=T0),
        ORG,
        PLACE,
        _sid(),
    )
    with pytest.raises(AlertError):
        alert.repeat(condition)
    with pytest.raises(AlertError):
        alert.resolve("again", T0)


def test_a_condition_of_another_subject_does_not_repeat_an_alert() -> None:
    alert = Alert.raise_for(
        uuid.uuid4(),
        domain.on_backup_failed(
            BackupFailed(backup_id=BACKUP, environment_id=ENV, error="x", failed_at=T0),
            ORG,
            PLACE,
            _sid(),
        ),
    )
    other = domain.on_backup_failed(
        BackupFailed(backup_id=BACKUP, environment_id=uuid.uuid4(), error="x", failed_at=T0),
        ORG,
        PLACE,
        _sid(),
    )
    with pytest.raises(AlertError):
        alert.repeat(other)


# -- restores: the backup link comes from the request -------------------------------------


def test_a_failed_restore_links_the_backup_its_request_named() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    backup_id, project_id = uuid.uuid4(), uuid.uuid4()
    requested = RestoreRequested(
        restore_id=RESTORE,
        organization_id=ORG,
        project_id=project_id,
        backup_id=backup_id,
        base_backup_id=backup_id,
        source_environment_id=ENV,
        target_environment_id=ENV,
        target_type="same",
        restore_type="db",
        requested_by="alice",
        requested_at=T0,
    )
    assert app.restore_requested(requested, feed.tracking())
    assert not app.restore_requested(requested, feed.tracking())  # published again
    failed = RestoreFailed(
        restore_id=RESTORE,
        target_environment_id=ENV,
        error="pg_restore failed",
        target_unchanged=False,
        failed_at=T0,
    )
    effect = app.restore_failed(
        failed, ORG, Place(environment_name="shop"), _sid(), feed.tracking()
    )
    assert effect is not None
    alert = app.get_alert(effect.alert_id)
    assert alert is not None
    assert (alert.backup_id, alert.restore_id, alert.project_id) == (backup_id, RESTORE, project_id)
    assert "may be partly restored" in alert.message
    assert types(app) == ["alert.AlertRaised"]  # the request itself is not an alert


def test_a_restore_request_of_another_organization_lends_no_link() -> None:
    app = AlertsApplication()
    feed = Feed(app)
    requested = RestoreRequested(
        restore_id=RESTORE,
        organization_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        backup_id=BACKUP,
        base_backup_id=BACKUP,
        source_environment_id=ENV,
        target_environment_id=ENV,
        target_type="same",
        restore_type="db",
        requested_by="mallory",
        requested_at=T0,
    )
    app.restore_requested(requested, feed.tracking())
    failed = RestoreFailed(restore_id=RESTORE, target_environment_id=ENV, error="x", failed_at=T0)
    effect = app.restore_failed(failed, ORG, Place(), _sid(), feed.tracking())
    assert effect is not None
    alert = app.get_alert(effect.alert_id)
    assert alert is not None
    assert alert.backup_id is None
    assert alert.project_id is None


# -- texts --------------------------------------------------------------------------------


def test_titles_and_messages_name_what_happened_and_what_to_do() -> None:
    failed = BackupFailed(
        backup_id=BACKUP,
        environment_id=ENV,
        error="password authentication failed for user shop",
        failed_at=T0,
    )
    condition = domain.on_backup_failed(failed, ORG, PLACE, _sid())
    assert condition.title == 'Backup of environment "shop-prod" failed'
    assert "password authentication failed for user shop" in condition.message
    assert "start a backup again" in condition.message
    assert "resolves when a backup of the environment completes" in condition.message
    unnamed = domain.on_backup_failed(failed, ORG, Place(), _sid())
    assert unnamed.title == f"Backup of environment {ENV} failed"
    upload = domain.on_backup_upload_failed(
        BackupUploadFailed(
            backup_id=BACKUP,
            environment_id=ENV,
            destination_id=DEST,
            error="connection refused",
            failed_at=T0,
        ),
        ORG,
        PLACE,
        _sid(),
    )
    assert upload.title == 'Destination "vault" is unreachable'
    assert 'environment "shop-prod"' in upload.message


def test_errors_lose_urls_and_runner_paths_and_every_text_is_bounded() -> None:
    error = (
        "could not write /var/lib/tidemark/destinations/org/x/file.zst: permission denied; "
        "endpoint http://user:pw@10.0.0.5:9000/bucket refused " + "x" * 5000
    )
    cleaned = clean_error(error)
    assert "/var/lib" not in cleaned
    assert "10.0.0.5" not in cleaned
    assert "user:pw" not in cleaned
    assert "<path>" in cleaned
    assert "<url>" in cleaned
    assert "permission denied" in cleaned
    assert len(cleaned) <= ERROR_MAX
    long_name = Place(PROJECT, "n" * 500, "d" * 500)
    condition = domain.on_backup_cleanup_failed(
        BackupCleanupFailed(
            backup_id=BACKUP,
            environment_id=ENV,
            destination_id=DEST,
            error=error,
            attempt=5,
            final=True,
            failed_at=T0,
        ),
        ORG,
        long_name,
        _sid(),
    )
    assert len(condition.title) <= TITLE_MAX
    assert len(condition.message) <= MESSAGE_MAX
    assert "/var/lib" not in condition.message
    assert "user:pw" not in condition.message
    assert "No further attempt is scheduled" in condition.message


def test_control_characters_never_reach_an_alert_text() -> None:
    """A NUL in a source event's error (pydantic lets it through) would not fit a
    PostgreSQL text column: the alert's event could then never be projected."""
    cleaned = clean_error("pg_dump: error:\x00 bad\x1b[31m input\x7f")
    assert cleaned == "pg_dump: error: bad [31m input"
    named = Place(PROJECT, "prod\x00\n", None)
    condition = domain.on_backup_failed(
        BackupFailed(backup_id=BACKUP, environment_id=ENV, error="a\x00b", failed_at=T0),
        ORG,
        named,
        _sid(),
    )
    assert "\x00" not in condition.title + condition.message


def test_an_empty_error_still_says_something() -> None:
    assert clean_error("   ") == "no reason given"


def test_every_message_of_every_kind_is_a_valid_contract() -> None:
    """Raised, repeated, resolved, read, dismissed of every kind validate as the
    contract messages (the relay maps each field by name)."""
    app = AlertsApplication()
    feed = Feed(app)
    for case in CASES.values():
        effect = case.fail(app, T0, feed.tracking())
        case.fail(app, T0 + timedelta(minutes=1), feed.tracking())
        assert effect is not None
        app.mark_read(read(effect.alert_id, T0), feed.tracking())
        app.dismiss(dismiss(effect.alert_id, T0), feed.tracking())
        case.succeed(app, T0 + timedelta(minutes=2), feed.tracking())
    envelopes = relayed(app)
    assert len(envelopes) == 5 * len(CASES)
    for envelope in envelopes:
        message_class: Any = ALERT_EVENTS.message_class(envelope.message_type)
        assert message_class is not None
        message_class.model_validate(envelope.payload)
    assert len({e.message_id for e in envelopes}) == len(envelopes)
