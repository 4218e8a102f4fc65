"""The Restore aggregate and the restore-runner's event store on the in-memory recorder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import Tracking
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget
from tidemark_contracts.catalog import ClusterSpec
from tidemark_contracts.restore import ArtifactCopy, RequestRestore, RestoreSource, RestoreTarget
from tidemark_contracts.topics import RESTORE_EVENTS
from tidemark_restore_runner.application import RestoreRunnerApplication
from tidemark_restore_runner.domain import (
    Restore,
    RestoreError,
    next_step,
    scratch_database,
    stopped_reason,
    takeover,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORG = uuid.uuid4()


def command(
    *,
    backup_type: str = "db",
    cluster: ClusterSpec | None = None,
    dbname: str = "shop",
    organization_id: uuid.UUID = ORG,
) -> RequestRestore:
    source_env, target_env = uuid.uuid4(), uuid.uuid4()
    backup_id = uuid.uuid4()
    return RequestRestore(
        restore_id=uuid.uuid4(),
        organization_id=ORG,
        backup_id=backup_id,
        source_environment_id=source_env,
        target_type="other",
        safety_backup_id=uuid.uuid4(),
        requested_by="alice",
        requested_at=T0,
        source=RestoreSource(
            backup_id=backup_id,
            environment_id=source_env,
            type=backup_type,  # type: ignore[arg-type]
            size_bytes=10,
            checksum="sha256:" + "0" * 64,
            compression="zstd",
            copies=[
                ArtifactCopy(
                    destination=DestinationTarget.of(uuid.uuid4(), "d", "local", {"path": "p"}),
                    location=f"{source_env}/{backup_id}.db.pgdump.zst",
                )
            ],
        ),
        target=RestoreTarget(
            environment_id=target_env,
            organization_id=organization_id,
            project_id=uuid.uuid4(),
            database=DatabaseTarget(host="127.0.0.1", port=5432, dbname=dbname, user="u"),
            cluster=cluster,
        ),
    )


def relayed_types(app: RestoreRunnerApplication) -> list[str]:
    types = []
    for notification in app.recorder.select_notifications(start=1, limit=100):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        assert mapped is not None
        assert mapped[0] is RESTORE_EVENTS
        types.append(mapped[1].message_type)
    return types


def test_a_duplicate_command_records_one_restore() -> None:
    app = RestoreRunnerApplication()
    cmd = command()
    assert app.request_restore(cmd, Tracking("restore.commands:0", 1))
    assert not app.request_restore(cmd, Tracking("restore.commands:0", 2))
    assert relayed_types(app) == ["restore.RestoreRequested"]
    assert app.get_restore(cmd.restore_id).status == "pending"


def test_a_restore_relays_its_life_keyed_by_the_target() -> None:
    app = RestoreRunnerApplication()
    cmd = command()
    app.request_restore(cmd, Tracking("restore.commands:0", 1), uuid.uuid4())
    restore = app.get_restore(cmd.restore_id)
    restore.start(T0, 1)
    restore.pass_milestone("safety_backup", T0)
    restore.pass_milestone("verified", T0)
    restore.pass_milestone("target_replaced", T0)
    restore.complete(T0 + timedelta(seconds=3))
    app.save(restore)
    assert relayed_types(app) == [
        "restore.RestoreRequested",
        "restore.RestoreStarted",
        "restore.RestoreMilestone",
        "restore.RestoreMilestone",
        "restore.RestoreMilestone",
        "restore.RestoreCompleted",
    ]
    notifications = app.recorder.select_notifications(start=1, limit=100)
    envelopes = [app.to_envelope(app.mapper.to_domain_event(n)) for n in notifications]
    assert {e[1].environment_id for e in envelopes if e} == {cmd.target.environment_id}
    requested = envelopes[0]
    assert requested is not None
    assert requested[1].payload["baseBackupId"] == str(cmd.source.backup_id)
    assert requested[1].payload["restoreType"] == "db"
    assert app.get_restore(cmd.restore_id).status == "completed"


def test_unusable_target_settings_fail_the_restore_at_once_with_the_reason() -> None:
    app = RestoreRunnerApplication()
    cmd = command(dbname="host=evil dbname=x")
    assert app.request_restore(cmd, Tracking("restore.commands:0", 1))
    restore = app.get_restore(cmd.restore_id)
    assert restore.status == "failed"
    assert restore.error is not None
    assert "database.dbname" in restore.error
    assert restore.target_unchanged is True


def test_a_full_restore_into_a_target_without_a_cluster_fails_with_the_reason() -> None:
    app = RestoreRunnerApplication()
    cmd = command(backup_type="full")
    app.request_restore(cmd, Tracking("restore.commands:0", 1))
    restore = app.get_restore(cmd.restore_id)
    assert restore.status == "failed"
    assert restore.error == "a full restore needs the target environment's cluster; it has none"


def test_a_target_of_another_organization_fails_the_restore() -> None:
    app = RestoreRunnerApplication()
    cmd = command(organization_id=uuid.uuid4())
    app.request_restore(cmd, Tracking("restore.commands:0", 1))
    assert app.get_restore(cmd.restore_id).status == "failed"


def test_a_restore_completes_only_after_its_target_was_replaced() -> None:
    app = RestoreRunnerApplication()
    cmd = command()
    app.request_restore(cmd, Tracking("restore.commands:0", 1))
    restore = app.get_restore(cmd.restore_id)
    with pytest.raises(RestoreError):
        restore.complete(T0)
    restore.start(T0, 1)
    with pytest.raises(RestoreError, match="not replaced"):
        restore.complete(T0)
    assert restore.pass_milestone("verified", T0)
    assert not restore.pass_milestone("verified", T0), "a milestone is passed once"
    with pytest.raises(RestoreError):
        restore.start(T0, 1)


def test_a_failure_after_the_swap_never_claims_the_target_unchanged() -> None:
    restore = Restore(
        restore_id=uuid.uuid4(),
        organization_id=ORG,
        project_id=uuid.uuid4(),
        backup_id=uuid.uuid4(),
        source_environment_id=uuid.uuid4(),
        target_environment_id=uuid.uuid4(),
        target_type="same",
        pitr_timestamp=None,
        safety_backup_id=None,
        requested_by="a",
        requested_at=T0,
        source={"type": "db", "backup_id": str(uuid.uuid4())},
        target={},
        correlation_id=None,
    )
    restore.start(T0, 1)
    restore.pass_milestone("target_replaced", T0)
    restore.fail("boom", T0, target_unchanged=True)
    assert restore.target_unchanged is False
    with pytest.raises(RestoreError):
        restore.fail("again", T0)


@pytest.mark.parametrize(
    ("phase", "decision"),
    [
        (None, "run"),
        ("waiting_for_safety_backup", "run"),
        ("downloading", "run"),
        ("verifying", "run"),
        ("restoring", "recover"),
        ("swapping", "recover"),
        ("swapped", "recover"),
        ("replaying", "recover"),
    ],
)
def test_a_takeover_reruns_only_restores_that_had_not_touched_the_target(
    phase: str | None, decision: str
) -> None:
    assert takeover(phase) == decision


@pytest.mark.parametrize(
    ("attempts_left", "owner_known", "phase", "step"),
    [
        (True, False, None, "run"),
        (True, True, "downloading", "run"),
        (True, True, "replaying", "recover"),
        (True, True, "swapped", "recover"),
        (False, True, "downloading", "give_up"),
        # A recovery that keeps failing ends too (it used to be retried forever, the
        # restore left running and its target refusing every later restore).
        (False, True, "replaying", "give_up_recovering"),
        (False, True, "restoring", "give_up_recovering"),
    ],
)
def test_the_attempt_bound_comes_before_a_recovery(
    attempts_left: bool, owner_known: bool, phase: str | None, step: str
) -> None:
    assert next_step(attempts_left, owner_known, phase) == step


def test_the_reason_of_a_stopped_restore_names_the_phase_and_the_target() -> None:
    assert stopped_reason("restoring", "db") == (
        "the restore-runner stopped during restoring; the target was left as it was"
    )
    assert stopped_reason("replaying", "full").endswith("the target was rolled back")


def test_scratch_databases_fit_postgresql_identifiers() -> None:
    restore_id = uuid.UUID("12345678-0000-0000-0000-000000000000")
    assert scratch_database("shop", restore_id, "tmr") == "shop_tmr_12345678"
    assert scratch_database("shop", restore_id, "tmo") == "shop_tmo_12345678"
    long = scratch_database("x" * 63, restore_id, "tmr")
    assert len(long.encode()) == 63
    assert long.endswith("_tmr_12345678")
