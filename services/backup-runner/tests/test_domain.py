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
