"""Deleting backups on real PostgreSQL and a real filesystem: the artifact goes from every
destination, a destination that cannot be cleaned is retried and then given up, and two
runners at one backup break nothing."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.persistence import Tracking
from psycopg.types.json import Jsonb
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.deletion import (
    Deleter,
    DeletionClaim,
    DeletionPolicy,
    DeletionTable,
)
from tidemark_backup_runner.domain import Backup
from tidemark_backup_runner.executor import artifact_key
from tidemark_backup_runner.registry import Registrations
from tidemark_backup_runner.storage import writer_for
from tidemark_contracts import utc_now
from tidemark_contracts.backup import DeleteBackup, DestinationTarget, RequestBackup
from tidemark_devstack.e2e import backup_request
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool

OWNER = uuid.uuid4()
# No waiting between tries: the test says when the next one is due.
POLICY = DeletionPolicy(max_attempts=2, first_delay_seconds=0.0, max_delay_seconds=0.0)


@pytest.fixture
def table(database_url: str, schema: str) -> Iterator[DeletionTable]:
    deletions = DeletionTable(database_url, schema)
    deletions.open()
    yield deletions
    deletions.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    directory.mkdir()
    return directory


def stored_backup(
    app: BackupRunnerApplication, root: Path, paths: tuple[str, ...] = ("a", "b")
) -> tuple[Backup, list[Path]]:
    """A completed backup whose artifact lies in a local destination at each of ``paths``."""
    destinations = [
        DestinationTarget.of(uuid.uuid4(), f"dest-{p}", "local", {"path": p}) for p in paths
    ]
    command: RequestBackup = backup_request(destinations=destinations)
    app.request_backup(command, Tracking("backup.commands:0", 1))
    backup = app.get_backup(command.backup_id)
    key = artifact_key(backup)
    files = []
    for destination in destinations:
        writer = writer_for(destination, backup.organization_id, key, "t", local_root=root)
        writer.open()
        writer.write(b"artifact")
        writer.commit()
        files.append(root / str(backup.organization_id) / destination.config.path / key)
    backup.start(utc_now(), None)
    for destination in destinations:
        backup.record_upload(str(destination.destination_id), key, 8, utc_now())
    backup.complete(8, "sha256:" + "0" * 64, "zstd", utc_now())
    app.save(backup)
    return backup, files


def request_deletion(app: BackupRunnerApplication, backup: Backup, offset: int = 2) -> str:
    command = DeleteBackup(
        backup_id=backup.id,
        organization_id=backup.organization_id,
        environment_id=backup.environment_id,
        requested_by="t",
        requested_at=utc_now(),
    )
    return app.request_deletion(command, Tracking("backup.commands:0", offset))


def deleter(app: BackupRunnerApplication, table: DeletionTable, root: Path) -> Deleter:
    return Deleter(app, table, lambda: None, owner=OWNER, policy=POLICY, destination_root=root)


def events_of(app: BackupRunnerApplication, backup: Backup) -> list[str]:
    return [type(e).__name__ for e in app.events.get(backup.id)]


def claim(table: DeletionTable) -> DeletionClaim:
    claimed = table.claim(OWNER, POLICY)
    assert claimed is not None
    return claimed


async def test_a_deleted_backups_artifact_goes_from_every_destination(
    app: BackupRunnerApplication, table: DeletionTable, root: Path
) -> None:
    backup, files = stored_backup(app, root)
    assert all(f.is_file() for f in files)
    assert request_deletion(app, backup) == "accepted"
    runner = deleter(app, table, root)
    await runner.submit(backup.id)
    await runner.carry_out(claim(table))
    assert not any(f.exists() for f in files)
    assert app.get_backup(backup.id).status == "deleted"
    assert events_of(app, backup)[-2:] == ["DeletionRequested", "Deleted"]
    assert table.row(backup.id)["state"] == "done"  # type: ignore[index]
    assert table.claim(OWNER, POLICY) is None


async def test_a_destination_not_registered_as_recorded_is_never_touched(
    app: BackupRunnerApplication,
    table: DeletionTable,
    root: Path,
    database_url: str,
    schema: str,
) -> None:
    """A backup refused for naming a destination other than the registered one keeps what
    it named; deleting it must not open the organization's credentials for that (an s3
    endpoint of the sender's choosing) nor touch it: only registered destinations are
    cleaned."""
    backup, (registered_file, forged_file) = stored_backup(app, root)
    registered, forged = (DestinationTarget.model_validate(d) for d in backup.destinations)
    view = CatalogView()
    pool = connection_pool(database_url)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await conn.execute(view.ddl(schema))  # type: ignore[arg-type]
            for destination, path in ((registered, "a"), (forged, "elsewhere")):
                await conn.execute(
                    f"INSERT INTO {schema}.destinations (id, organization_id, name, type, "
                    "config, is_default, created_at) VALUES (%s, %s, %s, 'local', %s, true, now())",
                    (
                        destination.destination_id,
                        backup.organization_id,
                        destination.name,
                        Jsonb({"path": path}),
                    ),
                )
        assert request_deletion(app, backup) == "accepted"
        runner = Deleter(
            app,
            table,
            lambda: None,
            owner=OWNER,
            policy=POLICY,
            destination_root=root,
            registrations=Registrations(pool, schema, wait_seconds=0),
        )
        await runner.submit(backup.id)
        await runner.carry_out(claim(table))
    finally:
        await pool.close()
    assert not registered_file.exists()
    assert forged_file.is_file(), "a destination the command named, not the registered one"
    assert app.get_backup(backup.id).status == "deleted"


async def test_an_artifact_already_gone_is_no_failure(
    app: BackupRunnerApplication, table: DeletionTable, root: Path
) -> None:
    backup, files = stored_backup(app, root)
    files[0].unlink()
    shutil.rmtree(files[1].parent.parent)  # the destination's directory too
    request_deletion(app, backup)
    runner = deleter(app, table, root)
    await runner.submit(backup.id)
    await runner.carry_out(claim(table))
    assert app.get_backup(backup.id).status == "deleted"


def immutable(directory: Path, on: bool) -> None:
    # Root ignores permissions, not the immutable attribute: unlinking in such a
    # directory fails with EPERM, as on a read-only or failing filesystem.
    subprocess.run(["chattr", "+i" if on else "-i", str(directory)], check=True)


async def test_a_destination_that_cannot_be_cleaned_is_retried_then_given_up_then_rearmed(
    app: BackupRunnerApplication, table: DeletionTable, root: Path
) -> None:
    backup, files = stored_backup(app, root)
    request_deletion(app, backup)
    runner = deleter(app, table, root)
    await runner.submit(backup.id)
    stuck = files[1].parent
    immutable(stuck, True)
    try:
        await runner.carry_out(claim(table))
        first = app.get_backup(backup.id)
        assert first.status == "deleting"
        assert first.error is not None
        assert first.error.startswith("destination 'dest-b': removing the artifact failed: ")
        assert "Operation not permitted" in first.error
        assert str(root) not in first.error, "no path of the runner's machine"
        assert not files[0].exists(), "the destination that could be cleaned was"
        assert files[1].exists()
        row = table.row(backup.id)
        assert row is not None
        assert (row["state"], row["attempts"]) == ("queued", 1)

        await runner.carry_out(claim(table))  # the last try
        row = table.row(backup.id)
        assert row is not None
        assert (row["state"], row["attempts"]) == ("gave_up", 2)
        assert table.claim(OWNER, POLICY) is None, "nothing retried once it gave up"
        failures = [e for e in app.events.get(backup.id) if isinstance(e, Backup.CleanupFailed)]
        assert [(f.attempt, f.final) for f in failures] == [(1, False), (2, True)]
        assert app.get_backup(backup.id).status == "deleting"
    finally:
        immutable(stuck, False)
    # Repaired, and the deletion requested again: it records nothing new, and re-arms.
    assert request_deletion(app, backup, offset=3) == "already"
    await runner.submit(backup.id)
    await runner.carry_out(claim(table))
    assert not files[1].exists()
    deleted = app.get_backup(backup.id)
    assert (deleted.status, deleted.error) == ("deleted", None)


async def test_two_runners_at_one_deletion_delete_it_once(
    app: BackupRunnerApplication, table: DeletionTable, root: Path, database_url: str, schema: str
) -> None:
    backup, files = stored_backup(app, root)
    request_deletion(app, backup)
    other_app: BackupRunnerApplication = BackupRunnerApplication.on_postgres(database_url, schema)
    try:
        first = deleter(app, table, root)
        second = Deleter(
            other_app, table, lambda: None, owner=uuid.uuid4(), policy=POLICY, destination_root=root
        )
        await first.submit(backup.id)
        held = claim(table)
        # The first's lease ran out mid-removal, say, and the second took it over.
        taken_over = DeletionClaim(backup.id, second.owner, held.attempt + 1)
        await asyncio.gather(first.carry_out(held), second.carry_out(taken_over))
    finally:
        other_app.close()
    assert not any(f.exists() for f in files)
    assert app.get_backup(backup.id).status == "deleted"
    assert events_of(app, backup).count("Deleted") == 1


class SlowDeleter(Deleter):
    """A removal that takes longer than the lease (a store slow to refuse)."""

    def _remove_everywhere(
        self, backup: Backup, registered: set[uuid.UUID] | None = None
    ) -> list[tuple[str, str]]:
        time.sleep(2.5)
        return super()._remove_everywhere(backup, registered)


async def test_a_removal_longer_than_the_lease_keeps_it_and_nobody_takes_it_over(
    app: BackupRunnerApplication, table: DeletionTable, root: Path
) -> None:
    policy = DeletionPolicy(
        max_attempts=2, first_delay_seconds=0.0, max_delay_seconds=0.0, lease_seconds=1.0
    )
    backup, files = stored_backup(app, root)
    assert request_deletion(app, backup) == "accepted"
    slow = SlowDeleter(app, table, lambda: None, owner=OWNER, policy=policy, destination_root=root)
    await slow.submit(backup.id)
    first = table.claim(OWNER, policy)
    assert first is not None
    running = asyncio.create_task(slow.carry_out(first))
    other = uuid.uuid4()
    taken_over = []
    while not running.done():
        await asyncio.sleep(0.2)
        if (claimed := await asyncio.to_thread(table.claim, other, policy)) is not None:
            taken_over.append(claimed)
    await running
    assert taken_over == [], "the lease ran out while the removal went on"
    assert not any(f.exists() for f in files)
    assert app.get_backup(backup.id).status == "deleted"
    assert table.row(backup.id)["attempts"] == 1  # type: ignore[index]


async def test_a_deletion_row_for_a_backup_not_being_deleted_removes_nothing(
    app: BackupRunnerApplication, table: DeletionTable, root: Path
) -> None:
    backup, files = stored_backup(app, root)
    runner = deleter(app, table, root)
    await runner.submit(backup.id)  # a row without the recorded deletion
    await runner.carry_out(claim(table))
    assert all(f.exists() for f in files)
    assert app.get_backup(backup.id).status == "completed"
    assert table.row(backup.id)["state"] == "done"  # type: ignore[index]


def test_the_delay_between_tries_doubles_up_to_its_bound() -> None:
    policy = DeletionPolicy(max_attempts=5, first_delay_seconds=2, max_delay_seconds=10)
    assert [policy.delay_after(a) for a in range(1, 5)] == [2, 4, 8, 10]
    assert [policy.is_last(a) for a in (4, 5)] == [False, True]
    with pytest.raises(ValueError, match="max_attempts"):
        DeletionPolicy(max_attempts=0)
