"""The work table on real PostgreSQL: one holder per backup, takeovers, fencing, give-up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup, WorkPolicy
from tidemark_backup_runner.executor import BackupExecutor, artifact_key
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.storage import writer_for
from tidemark_backup_runner.work import Lease, LeaseLost, WorkTable
from tidemark_contracts import utc_now
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget
from tidemark_devstack.e2e import backup_request

pytestmark = pytest.mark.integration

SHORT = WorkPolicy(lease_seconds=0.3, max_attempts=3)
LONG = WorkPolicy(lease_seconds=30, max_attempts=3)


def request(
    app: BackupRunnerApplication,
    offset: int = 1,
    database: DatabaseTarget | None = None,
    path: str = "/nonexistent",
) -> uuid.UUID:
    command = backup_request(
        database=database,
        destinations=[DestinationTarget.of(uuid.uuid4(), "n", "local", {"path": path})],
    )
    assert app.request_backup(command, Tracking("backup.commands:0", offset))
    return command.backup_id


def test_a_request_whose_row_was_never_written_gets_it_from_the_log(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    # Recorded in the event store, then the runner died before writing the row.
    lost = request(app, 1)
    assert work.row(lost) is None
    assert work.index_log("requests", app.log_changes) > 0
    row = work.row(lost)
    assert row is not None
    assert row["state"] == "queued"
    # The log is read after the kept position only, and a repeat changes nothing.
    assert work.index_log("requests", app.log_changes) == 0
    work.ensure(lost)
    assert work.row(lost) == row


def test_only_one_of_many_instances_claims_a_backup(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    backup_id = request(app)
    work.ensure(backup_id)
    owners = [uuid.uuid4() for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(owners)) as pool:
        claims = list(pool.map(lambda owner: work.claim(owner, LONG), owners))
    taken = [c for c in claims if c is not None]
    assert len(taken) == 1
    [claim] = taken
    assert (claim.step, claim.lease.attempt, claim.previous_owner) == ("run", 1, None)
    assert work.renew(claim.lease, LONG)
    # Nobody else can renew it: not another instance, not a stale attempt of the owner.
    other = next(owner for owner in owners if owner != claim.lease.owner)
    assert not work.renew(Lease(backup_id, other, 1), LONG)
    stale = Lease(backup_id, claim.lease.owner, 0)
    assert not work.renew(stale, LONG)


def test_an_expired_lease_is_taken_over_and_its_old_owner_can_no_longer_write(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    backup_id = request(app)
    work.ensure(backup_id)
    first_owner, second_owner = uuid.uuid4(), uuid.uuid4()
    first = work.claim(first_owner, SHORT)
    assert first is not None
    assert work.claim(second_owner, SHORT) is None, "held: nobody else takes it"
    time.sleep(SHORT.lease_seconds + 0.2)  # the first owner stops renewing (it died)
    second = work.claim(second_owner, LONG)
    assert second is not None
    assert (second.lease.attempt, second.previous_owner) == (2, first_owner)
    assert not work.renew(first.lease, LONG)
    # Fencing: the old owner's write is refused in the transaction that would store it.
    stale = app.get_backup(backup_id)
    stale.start(utc_now(), None, attempt=1)
    with pytest.raises(LeaseLost):
        app.save(*stale.collect_events(), fence=work.fence(first.lease))
    assert app.get_backup(backup_id).status == "pending", "nothing was written"
    current = app.get_backup(backup_id)
    current.start(utc_now(), None, attempt=2)
    app.save(*current.collect_events(), fence=work.fence(second.lease))
    assert app.get_backup(backup_id).attempt == 2
    attempts = work.attempts(backup_id)
    assert [(a["attempt"], a["owner"], a["outcome"]) for a in attempts] == [
        (1, first_owner, "lease expired"),
        (2, second_owner, None),
    ]
    assert attempts[0]["ended_at"] <= attempts[1]["started_at"], "attempts never overlap"


async def test_a_backup_whose_attempts_run_out_ends_failed_naming_them(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    backup_id = request(app)
    work.ensure(backup_id)
    # Three instances in turn claim it and die before renewing.
    for attempt in (1, 2, 3):
        claim = work.claim(uuid.uuid4(), SHORT)
        assert claim is not None
        assert claim.lease.attempt == attempt
        if attempt == 3:
            work.note_error(claim.lease, "pg_dump's runner vanished")
        await asyncio.sleep(SHORT.lease_seconds + 0.2)

    async def no_progress(*_: Any) -> None:
        return None

    executor = BackupExecutor(
        app, work, no_progress, lambda: None, owner=uuid.uuid4(), pg_dump="pg_dump", policy=SHORT
    )
    running = asyncio.create_task(executor.run())
    try:
        deadline = time.monotonic() + 20
        while (row := work.row(backup_id)) is None or row["state"] != "finished":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.1)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    backup: Backup = app.get_backup(backup_id)
    assert backup.status == "failed"
    assert backup.error == "gave up after 3 attempts: pg_dump's runner vanished"
    assert row["attempts"] == 3
    assert [a["outcome"] for a in work.attempts(backup_id)] == ["lease expired"] * 3


async def test_hand_overs_at_shutdown_do_not_use_up_the_attempts(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    backup_id = request(app)
    work.ensure(backup_id)
    # A rolling restart hands the backup from runner to runner more often than it may fail.
    for attempt in range(1, SHORT.max_attempts + 3):
        claim = work.claim(uuid.uuid4(), SHORT)
        assert claim is not None
        assert (claim.step, claim.lease.attempt) == ("run", attempt)
        work.release(claim.lease, "released at shutdown")
    # Attempts that really were cut off still count: the lease runs out each time.
    steps = []
    for _ in range(SHORT.max_attempts + 1):
        claim = work.claim(uuid.uuid4(), SHORT)
        assert claim is not None
        steps.append(claim.step)
        await asyncio.sleep(SHORT.lease_seconds + 0.2)
    assert steps == ["run"] * SHORT.max_attempts + ["give_up"]
    outcomes = [a["outcome"] for a in work.attempts(backup_id)]
    assert outcomes.count("released at shutdown") == SHORT.max_attempts + 2
    # A runner stopped while giving up ran no attempt: its hand-over buys no new run.
    giving_up = work.claim(uuid.uuid4(), SHORT)
    assert giving_up is not None
    assert giving_up.step == "give_up"
    work.release(giving_up.lease, "released at shutdown")
    again = work.claim(uuid.uuid4(), SHORT)
    assert again is not None
    assert again.step == "give_up"


def partial_files(root: Path) -> list[Path]:
    return list(root.rglob(".*.partial"))


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def pg_dump_children() -> list[int]:
    """This process's pg_dump children that are alive (not yet exited)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if name == "pg_dump" and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("how", ["taken over", "shutdown"])
async def test_a_runner_that_loses_the_lease_kills_its_dump_and_removes_its_partial_file(
    how: str,
    app: BackupRunnerApplication,
    work: WorkTable,
    schema: str,
    database_url: str,
    create_database: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = create_database("lease", owner_password="pw-lease-test")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    info = conninfo_to_dict(source)
    monkeypatch.setenv("TIDEMARK_SECRET_LEASE_TEST", "pw-lease-test")
    target = DatabaseTarget(
        host=str(info["host"]),
        port=int(str(info["port"])),
        dbname=str(info["dbname"]),
        user=str(info["user"]),
        password_ref="env:TIDEMARK_SECRET_LEASE_TEST",
    )
    backup_id = request(app, database=target, path="backups")
    work.ensure(backup_id)
    owner = uuid.uuid4()

    async def no_progress(*_: Any) -> None:
        return None

    executor = BackupExecutor(
        app,
        work,
        no_progress,
        lambda: None,
        owner=owner,
        pg_dump=find_tool("pg_dump"),
        policy=WorkPolicy(lease_seconds=1.5, max_attempts=3),
        poll_seconds=0.2,
        # The operator's env: reference, enabled here: this test is about leases.
        credential_policy=CredentialPolicy(allow_operator_refs=True),
        destination_root=tmp_path,
    )
    blocker = psycopg.connect(source)
    blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    running = asyncio.create_task(executor.run())
    try:
        deadline = time.monotonic() + 30
        while not (pg_dump_children() and partial_files(tmp_path)):
            assert time.monotonic() < deadline, "the dump never started"
            await asyncio.sleep(0.1)
        [partial] = partial_files(tmp_path)
        assert partial.name.endswith(f".{owner.hex}-1.partial")
        assert app.get_backup(backup_id).status == "running"
        if how == "taken over":
            # Another instance holds the backup now (as after this one paused past its lease).
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET owner = %s, attempts = 2, "
                        "lease_expires_at = now() + interval '1 hour' WHERE backup_id = %s"
                    ).format(sql.Identifier(schema, "work")),
                    (uuid.uuid4(), backup_id),
                )
        else:
            # The service stops (what its runtime does on SIGTERM): the backup is handed
            # over at once instead of when the lease would have run out.
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            row = work.row(backup_id)
            assert row is not None
            assert row["state"] == "running"
            assert row["lease_expires_at"] <= utc_now()
            assert work.claim(uuid.uuid4(), LONG) is not None, "claimable by another now"
        deadline = time.monotonic() + 10
        while pg_dump_children() or partial.exists():
            assert time.monotonic() < deadline, "pg_dump still running, or its file still there"
            await asyncio.sleep(0.1)
        blocker.rollback()
        await asyncio.sleep(1.0)
        # The loser wrote nothing more: no failure, no artifact, the backup is the new owner's.
        backup: Backup = app.get_backup(backup_id)
        assert (backup.status, backup.attempt) == ("running", 1)
        assert files_under(tmp_path) == []
        first = work.attempts(backup_id)[0]
        if how == "taken over":
            assert (first["owner"], first["ended_at"]) == (owner, None)
        else:
            assert (first["owner"], first["outcome"]) == (owner, "released at shutdown")
    finally:
        blocker.close()
        if not running.done():
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running


@pytest.mark.parametrize(
    ("database", "reason"),
    [
        ({"password_ref": None}, "database.passwordRef is not set"),
        ({"password_ref": "env:TIDEMARK_SECRET_EMPTY_TEST"}, "empty password"),
        ({"dbname": "host=/var/run/postgresql user=postgres"}, "database.dbname must not"),
        ({"user": "postgresql://postgres@/x?host=/tmp"}, "database.user must not"),
        ({"host": "/var/run/postgresql"}, "database.host must be"),
    ],
    ids=["no-ref", "empty", "dbname-conninfo", "user-uri", "host-socket"],
)
async def test_unusable_settings_or_no_password_end_the_backup_before_any_connection(
    database: dict[str, Any],
    reason: str,
    app: BackupRunnerApplication,
    work: WorkTable,
    create_database: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = create_database("refused", owner_password="pw-refused-test")
    info = conninfo_to_dict(source)
    # Everything the runner has would get in: its PG* variables and its ~/.pgpass.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text("*:*:*:*:pw-refused-test\n")
    (home / ".pgpass").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PGPASSWORD", "pw-refused-test")
    monkeypatch.setenv("PGUSER", str(info["user"]))
    monkeypatch.setenv("TIDEMARK_SECRET_REFUSED_TEST", "pw-refused-test")
    monkeypatch.setenv("TIDEMARK_SECRET_EMPTY_TEST", "")
    fields: dict[str, Any] = {
        "host": str(info["host"]),
        "port": int(str(info["port"])),
        "dbname": str(info["dbname"]),
        "user": str(info["user"]),
        "password_ref": "env:TIDEMARK_SECRET_REFUSED_TEST",
    }
    target = DatabaseTarget.model_validate({**fields, **database})
    backup_id = request(app, database=target, path=str(tmp_path / "dest"))
    work.ensure(backup_id)
    started = tmp_path / "pg_dump-started"
    pg_dump = tmp_path / "pg_dump"
    pg_dump.write_text(f"#!/bin/sh\ntouch {started}\n")
    pg_dump.chmod(0o755)

    async def no_progress(*_: Any) -> None:
        return None

    executor = BackupExecutor(
        app,
        work,
        no_progress,
        lambda: None,
        owner=uuid.uuid4(),
        pg_dump=str(pg_dump),
        policy=LONG,
        # The operator's env: references, enabled here: the settings are under test.
        credential_policy=CredentialPolicy(allow_operator_refs=True),
        destination_root=tmp_path,
    )
    running = asyncio.create_task(executor.run())
    try:
        deadline = time.monotonic() + 20
        while (row := work.row(backup_id)) is None or row["state"] != "finished":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.1)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    backup: Backup = app.get_backup(backup_id)
    assert backup.status == "failed"
    assert backup.error is not None
    assert reason in backup.error
    assert "pw-refused-test" not in backup.error
    for value in database.values():
        if value and not str(value).startswith("env:"):
            assert str(value) not in backup.error, "the refused value is not repeated"
    assert backup.started_at is None, "it ended before it started"
    assert not started.exists(), "pg_dump never ran"
    destination = tmp_path / "dest"
    assert not destination.exists() or files_under(destination) == []


async def test_a_runner_whose_lease_lapsed_removes_nothing_of_the_next_owners_upload(
    app: BackupRunnerApplication, work: WorkTable, tmp_path: Path
) -> None:
    """A new attempt removes what earlier attempts left, but only once its lease is
    confirmed: a runner whose lease lapsed meanwhile must not remove the upload of the
    runner that holds the backup now."""
    root = tmp_path / "destinations"
    root.mkdir()
    backup_id = request(app, path="dest")
    work.ensure(backup_id)
    died = work.claim(uuid.uuid4(), SHORT)
    assert died is not None
    await asyncio.sleep(SHORT.lease_seconds + 0.2)
    late = work.claim(uuid.uuid4(), SHORT)  # attempt 2, after a runner that died
    assert late is not None
    assert late.previous_owner is not None
    await asyncio.sleep(SHORT.lease_seconds + 0.2)  # ...and it stalls past its lease
    now_owner = uuid.uuid4()
    current = work.claim(now_owner, LONG)
    assert current is not None
    assert current.lease.attempt == 3
    backup = app.get_backup(backup_id)
    destination = DestinationTarget.model_validate(backup.destinations[0])
    upload = writer_for(
        destination,
        backup.organization_id,
        artifact_key(backup),
        f"{now_owner.hex}-3",
        local_root=root,
    )
    upload.open()
    upload.write(b"the current owner's dump, in progress")
    partial = root / str(backup.organization_id) / "dest" / Path(artifact_key(backup)).parent
    assert [p.name for p in partial.iterdir() if p.name.endswith(".partial")]

    async def no_progress(*_: Any) -> None:
        return None

    stale = BackupExecutor(
        app,
        work,
        no_progress,
        lambda: None,
        owner=late.lease.owner,
        pg_dump="pg_dump",
        policy=SHORT,
        destination_root=root,
    )
    with pytest.raises(LeaseLost):
        await stale._execute(backup, late)
    assert [p.name for p in partial.iterdir() if p.name.endswith(".partial")], (
        "the current owner's partial upload was removed by a runner that lost the lease"
    )
    upload.abort()
