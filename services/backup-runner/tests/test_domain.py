"""The Backup aggregate's rules, without I/O."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup, BackupError, WorkPolicy

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def new_backup(destinations: int = 1) -> Backup:
    return Backup(
        backup_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        type="db",
        trigger="manual",
        label=None,
        requested_by="someone",
        requested_at=T0,
        database={"host": "h", "port": 5432, "dbname": "d", "user": "u", "password_ref": None},
        destinations=[{"destination_id": f"d{i}"} for i in range(destinations)],
        correlation_id=uuid.uuid4(),
    )


def test_the_issuer_chooses_the_id() -> None:
    backup = new_backup()
    assert backup.id == backup.backup_id
    assert backup.status == "pending"


def test_a_backup_completes_only_once_stored_in_every_destination() -> None:
    backup = new_backup(destinations=2)
    backup.start(T0, 100)
    backup.record_upload("d0", "/a", 10, T0)
    with pytest.raises(BackupError, match="every destination"):
        backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)
    backup.record_upload("d1", "/b", 10, T0)
    backup.complete(10, "sha256:" + "0" * 64, "zstd", T0 + timedelta(seconds=2))
    assert backup.status == "completed"
    assert backup.is_terminal
    events = backup.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Requested",
        "Started",
        "Uploaded",
        "Uploaded",
        "Completed",
    ]
    assert events[-1].duration_ms == 2000


def test_state_transitions_are_guarded() -> None:
    backup = new_backup()
    with pytest.raises(BackupError):
        backup.complete(1, "sha256:x", "zstd", T0)
    with pytest.raises(BackupError):
        backup.record_upload("d0", "/a", 1, T0)
    backup.start(T0, None)
    with pytest.raises(BackupError):
        backup.start(T0, None)
    with pytest.raises(BackupError, match="not one of this backup's"):
        backup.record_upload("elsewhere", "/a", 1, T0)
    backup.fail("pg_dump exited with 1: boom", T0)
    assert backup.status == "failed"
    assert backup.error == "pg_dump exited with 1: boom"
    with pytest.raises(BackupError):
        backup.fail("again", T0)


def test_a_pending_backup_can_fail_before_it_starts() -> None:
    backup = new_backup()
    backup.fail("credential reference 'env:X': environment variable is not set", T0)
    assert backup.status == "failed"
    assert backup.started_at is None


# -- attempts and leases ------------------------------------------------------------------


def test_a_cut_off_attempt_is_followed_by_a_later_one_that_starts_over() -> None:
    backup = new_backup()
    backup.start(T0, 100, attempt=1)
    backup.record_upload("d0", "/a", 10, T0)
    backup.start(T0 + timedelta(minutes=1), 100, attempt=2)
    assert (backup.status, backup.attempt, backup.started_at) == (
        "running",
        2,
        T0 + timedelta(minutes=1),
    )
    assert backup.uploads == {}, "the earlier attempt's upload was discarded with it"
    with pytest.raises(BackupError, match="every destination"):
        backup.complete(10, "sha256:" + "0" * 64, "zstd", T0 + timedelta(minutes=2))


def test_an_attempt_is_never_started_twice_or_out_of_order() -> None:
    backup = new_backup()
    backup.start(T0, None, attempt=2)  # attempt 1 was claimed, then cut off before starting
    with pytest.raises(BackupError, match="not after attempt 2"):
        backup.start(T0, None, attempt=2)
    with pytest.raises(BackupError, match="not after attempt 2"):
        backup.start(T0, None, attempt=1)


def test_a_finished_backup_is_not_started_again() -> None:
    backup = new_backup()
    backup.start(T0, None)
    backup.fail("boom", T0)
    with pytest.raises(BackupError, match="failed"):
        backup.start(T0, None, attempt=2)


def test_giving_up_fails_the_backup_naming_the_attempts_and_the_reason() -> None:
    backup = new_backup()
    backup.start(T0, None, attempt=3)
    backup.give_up(3, "the runner running it stopped", T0 + timedelta(minutes=5))
    assert backup.status == "failed"
    assert backup.error == "gave up after 3 attempts: the runner running it stopped"


def test_attempts_are_bounded_by_the_policy() -> None:
    policy = WorkPolicy(lease_seconds=30, max_attempts=3)
    assert [policy.next_attempt(made) for made in range(5)] == [1, 2, 3, None, None]
    assert WorkPolicy(max_attempts=1).next_attempt(1) is None


def test_a_lease_is_renewed_well_before_it_expires_and_trusted_only_until_then() -> None:
    policy = WorkPolicy(lease_seconds=30, renew_fraction=1 / 3)
    assert policy.renew_every == pytest.approx(10)
    # Counted from when the last renewal was *sent*: the server's expiry is later.
    assert policy.still_held(29.9)
    assert not policy.still_held(30.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"lease_seconds": 0}, {"max_attempts": 0}, {"renew_fraction": 1.0}, {"renew_fraction": 0}],
)
def test_a_policy_that_could_never_hold_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        WorkPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_started_event_stored_before_attempts_loads_as_the_first_attempt() -> None:
    # As stored by the previous version: no ``attempt``, no ``class_version``.
    app = BackupRunnerApplication()
    backup = new_backup()
    backup.start(T0, 100)
    started = backup.collect_events()[1]
    stored = app.mapper.to_stored_event(started)
    state = json.loads(stored.state)
    del state["attempt"], state["class_version"]
    old = dataclasses.replace(stored, state=json.dumps(state).encode())
    loaded = app.mapper.to_domain_event(old)
    assert isinstance(loaded, Backup.Started)
    assert (loaded.attempt, loaded.bytes_total_estimate) == (1, 100)


# -- deletion -----------------------------------------------------------------------------


def completed_backup(destinations: int = 1) -> Backup:
    backup = new_backup(destinations)
    backup.start(T0, 100)
    for i in range(destinations):
        backup.record_upload(f"d{i}", f"e/b{i}", 10, T0)
    backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)
    return backup


def test_a_completed_backup_is_deleted_through_deleting() -> None:
    backup = completed_backup()
    assert backup.request_deletion("someone", T0)
    assert backup.status == "deleting"
    assert backup.is_terminal
    assert backup.mark_deleted(T0 + timedelta(seconds=1))
    assert backup.status == "deleted"
    names = [type(e).__name__ for e in backup.collect_events()]
    assert names[-2:] == ["DeletionRequested", "Deleted"]


def test_a_failed_backup_can_be_deleted_and_keeps_its_error_while_deleting() -> None:
    backup = new_backup()
    backup.fail("dump failed", T0)
    assert backup.request_deletion("someone", T0)
    assert backup.status == "deleting"
    assert backup.error == "dump failed"
    backup.mark_deleted(T0)
    assert backup.error is None


@pytest.mark.parametrize("running", [False, True])
def test_a_pending_or_running_backup_refuses_deletion(running: bool) -> None:
    backup = new_backup()
    if running:
        backup.start(T0, None)
    backup.collect_events()
    with pytest.raises(BackupError, match="cannot delete a backup that is"):
        backup.request_deletion("someone", T0)
    assert backup.status == ("running" if running else "pending")
    assert backup.collect_events() == []


def test_deleting_again_records_nothing() -> None:
    backup = completed_backup()
    assert backup.request_deletion("someone", T0)
    backup.collect_events()
    assert backup.request_deletion("someone else", T0) is False
    backup.mark_deleted(T0)
    backup.collect_events()
    assert backup.request_deletion("someone else", T0) is False
    assert backup.mark_deleted(T0) is False
    assert backup.collect_events() == []
    assert backup.status == "deleted"


def test_a_backup_being_deleted_cannot_be_started_failed_or_completed_again() -> None:
    backup = completed_backup()
    backup.request_deletion("someone", T0)
    with pytest.raises(BackupError):
        backup.start(T0, None, attempt=2)
    with pytest.raises(BackupError):
        backup.fail("late", T0)
    with pytest.raises(BackupError):
        backup.complete(10, "sha256:" + "0" * 64, "zstd", T0)


def test_a_cleanup_failure_keeps_the_backup_deleting_with_the_reason() -> None:
    backup = completed_backup(destinations=2)
    backup.request_deletion("someone", T0)
    backup.record_cleanup_failure("d1", "destination 'x': permission denied", 1, False, T0)
    assert backup.status == "deleting"
    assert backup.error == "destination 'x': permission denied"
    failed = backup.collect_events()[-1]
    assert isinstance(failed, Backup.CleanupFailed)
    assert (failed.destination_id, failed.attempt, failed.final) == ("d1", 1, False)
    backup.mark_deleted(T0)
    assert (backup.status, backup.error) == ("deleted", None)


def test_a_cleanup_failure_is_recorded_only_while_deleting_and_for_its_destinations() -> None:
    backup = completed_backup()
    with pytest.raises(BackupError, match="completed"):
        backup.record_cleanup_failure("d0", "x", 1, False, T0)
    with pytest.raises(BackupError, match="cannot mark a backup that is completed deleted"):
        backup.mark_deleted(T0)
    backup.request_deletion("someone", T0)
    with pytest.raises(BackupError, match="not one of this backup's"):
        backup.record_cleanup_failure("elsewhere", "x", 1, False, T0)


def test_deletion_events_replay_to_the_same_state() -> None:
    app = BackupRunnerApplication()
    backup = completed_backup()
    backup.request_deletion("someone", T0)
    backup.record_cleanup_failure("d0", "reason", 1, True, T0)
    app.save(backup)
    stored = app.get_backup(backup.id)
    assert (stored.status, stored.error) == ("deleting", "reason")
    stored.mark_deleted(T0)
    app.save(stored)
    assert app.get_backup(backup.id).status == "deleted"
