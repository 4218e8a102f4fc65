"""Full backups: the files directory's confinement (unit, on a real filesystem), the
archive's layout and manifest, and the executor's failures, on a real PostgreSQL cluster
of its own (a base backup copies a whole cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard
from eventsourcing.persistence import Tracking
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.basebackup import (
    FilesError,
    check_files_directory,
    files_directory,
    take_full_backup,
)
from tidemark_backup_runner.domain import Backup, WorkPolicy
from tidemark_backup_runner.executor import BackupExecutor, artifact_key
from tidemark_backup_runner.pgtools import (
    DumpError,
    dump_application_name,
    find_tool,
    stop_earlier_attempts,
)
from tidemark_backup_runner.registry import Registrations
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.work import WorkTable
from tidemark_contracts import Envelope
from tidemark_contracts.backup import (
    BackupProgress,
    DatabaseTarget,
    DestinationTarget,
    RequestBackup,
)
from tidemark_contracts.catalog import EnvironmentRegistered
from tidemark_devstack.e2e import SOURCE_SCHEMA, backup_request
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool

PASSWORD = "pw-basebackup-test"
PASSWORD_ENV = "TIDEMARK_SECRET_BASEBACKUP_TEST"
ORG = uuid.UUID(int=7)
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# -- the files directory is confined (unit) ------------------------------------------------


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    (root / str(ORG) / "site" / "sub").mkdir(parents=True)
    return root


def test_a_files_directory_inside_the_organizations_directory_opens(files_root: Path) -> None:
    with files_directory(files_root, ORG, "site/sub") as fd:
        assert os.path.samestat(os.fstat(fd), os.stat(files_root / str(ORG) / "site" / "sub"))


def test_without_a_files_root_a_files_directory_is_refused_saying_which_setting() -> None:
    with pytest.raises(FilesError, match=r"no files root configured.*FILES_ROOT"):
        check_files_directory(None, ORG, "site")


@pytest.mark.parametrize(
    ("files_path", "reason"),
    [
        ("/etc", "not absolute"),
        ("../other", r"'\.\.'"),
        ("site/../../x", r"'\.\.'"),
        ("site//x", "empty"),
    ],
)
def test_a_files_path_outside_the_organizations_directory_is_refused(
    files_root: Path, files_path: str, reason: str
) -> None:
    with pytest.raises(FilesError, match=reason) as caught:
        check_files_directory(files_root, ORG, files_path)
    assert files_path not in str(caught.value)


def test_a_files_path_that_is_a_symbolic_link_is_refused(files_root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (files_root / str(ORG) / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FilesError, match="symbolic link, which the runner does not follow"):
        check_files_directory(files_root, ORG, "link")


def test_a_files_path_through_a_symbolic_link_is_refused(files_root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "site").mkdir(parents=True)
    (files_root / str(ORG) / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FilesError, match="symbolic link"):
        check_files_directory(files_root, ORG, "link/site")


def test_an_organization_directory_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (tmp_path / "other-org").mkdir()
    (root / str(ORG)).symlink_to(tmp_path / "other-org")
    with pytest.raises(FilesError, match="organization's files directory is or passes"):
        check_files_directory(root, ORG, "site")


def test_a_missing_files_directory_is_refused(files_root: Path) -> None:
    with pytest.raises(FilesError, match="does not exist"):
        check_files_directory(files_root, ORG, "nowhere")


def test_a_files_path_naming_a_file_is_refused(files_root: Path) -> None:
    (files_root / str(ORG) / "site" / "f").write_text("x")
    with pytest.raises(FilesError, match="not a directory"):
        check_files_directory(files_root, ORG, "site/f")


# -- the archive, on a real cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def source() -> Iterator[SourceCluster]:
    cluster = start_source_cluster(password=PASSWORD, schema_sql=SOURCE_SCHEMA)
    yield cluster
    remove_source_cluster(cluster)


def target_of(cluster: SourceCluster, password_ref: str | None = None) -> DatabaseTarget:
    info = conninfo_to_dict(cluster.database_url)
    return DatabaseTarget(
        host=str(info["host"]),
        port=int(str(info["port"])),
        dbname=str(info["dbname"]),
        user=str(info["user"]),
        password_ref=password_ref,
    )


class Captured:
    """A writer keeping the artifact in memory (what every real writer receives)."""

    def __init__(self) -> None:
        self.data = io.BytesIO()

    def open(self) -> None:
        self.data = io.BytesIO()

    def write(self, chunk: bytes) -> None:
        self.data.write(chunk)


def members(artifact: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(artifact)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return [
            (m, archive.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
            for m in archive.getmembers()
        ]


def test_the_archive_holds_pgdata_then_files_then_the_manifest_of_every_file(
    source: SourceCluster, files_root: Path
) -> None:
    site = files_root / str(ORG) / "site"
    (site / "a.txt").write_text("hello")
    (site / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (site / "sub" / "link").symlink_to("../a.txt")
    os.mkfifo(site / "pipe")
    writer = Captured()
    progress: list[int] = []
    backup_id = uuid.uuid4()

    result = take_full_backup(
        target_of(source),
        PASSWORD,
        [writer],
        progress.append,
        backup_id=backup_id,
        created=T0,
        files=(files_root, ORG, "site"),
        pg_basebackup=find_tool("pg_basebackup"),
    )

    artifact = writer.data.getvalue()
    assert result.size_bytes == len(artifact)
    entries = members(artifact)
    names = [m.name for m, _ in entries]
    # pgdata/ first, as a directory postgres starts from (0700)
    assert entries[0][0].isdir()
    assert names[0] == "pgdata"
    assert entries[0][0].mode == 0o700
    assert all(m.mode & 0o077 == 0 for m, _ in entries if m.name.startswith("pgdata/"))
    assert "pgdata/PG_VERSION" in names
    assert "pgdata/backup_manifest" in names
    assert "files/a.txt" in names
    assert "files/sub/b.bin" in names
    assert "files/pipe" not in names
    link = next(m for m, _ in entries if m.name == "files/sub/link")
    assert link.issym()
    assert link.linkname == "../a.txt"
    # manifest.json last, with every file's size and SHA-256
    assert names[-1] == "manifest.json"
    manifest = json.loads(entries[-1][1] or b"")
    assert manifest["backupId"] == str(backup_id)
    assert manifest["skipped"] == ["files/pipe"]
    listed = {e["path"]: e for e in manifest["files"]}
    regular = {m.name: data for m, data in entries[:-1] if m.isreg()}
    assert set(regular) <= set(listed)
    for name, data in regular.items():
        assert listed[name]["size"] == len(data or b"")
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert listed["files/sub/link"] == {
        "path": "files/sub/link",
        "type": "symlink",
        "target": "../a.txt",
    }
    # the WAL range is pg_basebackup's own
    wal_ranges = json.loads(regular["pgdata/backup_manifest"] or b"")["WAL-Ranges"]
    assert result.wal_start_lsn == wal_ranges[0]["Start-LSN"] == manifest["walStartLsn"]
    assert result.wal_end_lsn == wal_ranges[-1]["End-LSN"] == manifest["walEndLsn"]
    # backup_label's START TIMELINE: what PITR from this base replays.
    label = regular["pgdata/backup_label"] or b""
    assert f"START TIMELINE: {result.wal_timeline}\n".encode() in label
    assert result.wal_timeline == 1
    assert progress
    assert progress[-1] >= sum(len(d or b"") for d in regular.values())


def test_a_wrong_password_is_pg_basebackups_reason(source: SourceCluster) -> None:
    with pytest.raises(DumpError, match=r"pg_basebackup exited with 1: .*password authentication"):
        take_full_backup(
            target_of(source),
            "not-the-password",
            [Captured()],
            lambda _: None,
            backup_id=uuid.uuid4(),
            created=T0,
            pg_basebackup=find_tool("pg_basebackup"),
        )


# -- the executor ---------------------------------------------------------------------------


async def no_progress(*_: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def running(executor: BackupExecutor) -> AsyncIterator[None]:
    task = asyncio.create_task(executor.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return value


def finished(work: WorkTable, backup_id: uuid.UUID) -> bool:
    row = work.row(backup_id)
    return row is not None and row["state"] == "finished"


def full_request(cluster: SourceCluster) -> RequestBackup:
    command = backup_request(
        organization_id=ORG,
        database=target_of(cluster, f"env:{PASSWORD_ENV}"),
        destinations=[DestinationTarget.of(uuid.uuid4(), "local", "local", {"path": "dest"})],
    )
    return command.model_copy(update={"type": "full"})


def basebackup_processes(backup_id: uuid.UUID) -> list[int]:
    """The pids of pg_basebackup processes serving ``backup_id`` (by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"pg_basebackup")
            and str(backup_id).encode() in b" ".join(argv)
        ):
            pids.append(int(entry.name))
    return pids


async def test_a_killed_pg_basebackup_fails_the_backup_and_leaves_no_partial_artifact(
    app: BackupRunnerApplication,
    work: WorkTable,
    source: SourceCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    command = full_request(source)
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    work.ensure(command.backup_id)
    destinations = tmp_path / "destinations"
    destinations.mkdir()
    ticks: list[BackupProgress] = []

    async def progress(tick: BackupProgress, *_: Any) -> None:
        ticks.append(tick)

    executor = BackupExecutor(
        app,
        work,
        progress,
        lambda: None,
        owner=uuid.uuid4(),
        pg_dump="pg_dump",
        pg_basebackup=find_tool("pg_basebackup"),
        policy=WorkPolicy(lease_seconds=5.0, max_attempts=3),
        poll_seconds=0.2,
        credential_policy=CredentialPolicy(allow_operator_refs=True),
        destination_root=destinations,
        # Slow enough (a cluster is ~40 MB) to be caught in the middle.
        basebackup_max_rate_kb=2048,
        progress_interval=0.2,
    )
    directory = destinations / str(ORG) / "dest"
    async with running(executor):
        pids = await until(
            lambda: basebackup_processes(command.backup_id), 30, "pg_basebackup never ran"
        )
        # Partway: some of the artifact is written already.
        await until(
            lambda: any(p.is_file() and p.stat().st_size > 0 for p in directory.rglob("*")),
            30,
            "nothing was written",
        )
        # Progress ticks while it runs: phase basebackup, bytes against the cluster's size.
        running_ticks = await until(
            lambda: [t for t in ticks if t.status == "running" and t.bytes_done > 0],
            30,
            "no progress while pg_basebackup ran",
        )
        assert {t.phase for t in running_ticks} == {"basebackup"}
        assert running_ticks[-1].bytes_total is not None
        assert running_ticks[-1].percent is not None
        assert 0 < running_ticks[-1].percent < 100
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await until(lambda: finished(work, command.backup_id), 30, "the backup never ended")

    backup: Backup = app.get_backup(command.backup_id)
    assert backup.status == "failed"
    assert backup.error == "pg_basebackup was stopped by signal 9"
    assert backup.wal_start_lsn is None
    assert [p for p in directory.rglob("*") if p.is_file()] == []
    assert [a["outcome"] for a in work.attempts(command.backup_id)] == ["failed"]


async def test_a_full_backup_through_the_executor_records_its_wal_range_and_key(
    app: BackupRunnerApplication,
    work: WorkTable,
    source: SourceCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    command = full_request(source)
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    work.ensure(command.backup_id)
    destinations = tmp_path / "destinations"
    destinations.mkdir()
    executor = BackupExecutor(
        app,
        work,
        no_progress,
        lambda: None,
        owner=uuid.uuid4(),
        pg_dump="pg_dump",
        pg_basebackup=find_tool("pg_basebackup"),
        policy=WorkPolicy(lease_seconds=5.0, max_attempts=3),
        poll_seconds=0.2,
        credential_policy=CredentialPolicy(allow_operator_refs=True),
        destination_root=destinations,
    )
    async with running(executor):
        await until(lambda: finished(work, command.backup_id), 60, "the backup never ended")

    backup: Backup = app.get_backup(command.backup_id)
    assert backup.status == "completed", backup.error
    assert backup.wal_start_lsn
    assert backup.wal_end_lsn
    assert backup.wal_timeline == 1
    key = artifact_key(backup)
    assert key == f"{command.environment_id}/{command.backup_id}.full.tar.zst"
    assert backup.uploads[str(command.destinations[0].destination_id)]["location"] == key
    assert (destinations / str(ORG) / "dest" / key).stat().st_size == backup.size_bytes


async def test_without_a_files_root_a_full_backup_of_an_environment_with_files_fails_clearly(
    app: BackupRunnerApplication,
    work: WorkTable,
    source: SourceCluster,
    database_url: str,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    command = full_request(source)
    # The runner's catalog view, as the gateway's registration makes it.
    view = CatalogView()
    pool = connection_pool(database_url)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(view.ddl(schema))  # type: ignore[arg-type]
            registered = EnvironmentRegistered(
                environment_id=command.environment_id,
                organization_id=ORG,
                project_id=command.project_id,
                name="production",
                database=command.database,
                files_path="site",
                registered_at=T0,
            )
            await view.apply(
                conn,
                schema,
                Envelope.wrap(
                    registered,
                    producer="test",
                    organization_id=ORG,
                    environment_id=command.environment_id,
                ),
                registered,
            )
            destination = command.destinations[0]
            await conn.execute(
                f"INSERT INTO {schema}.destinations (id, organization_id, name, type, config, "
                "is_default, created_at) VALUES (%s, %s, %s, 'local', %s, true, now())",
                (
                    destination.destination_id,
                    ORG,
                    destination.name,
                    Jsonb({"path": "dest"}),
                ),
            )
        assert app.request_backup(command, Tracking("backup.commands:0", 1))
        work.ensure(command.backup_id)
        executor = BackupExecutor(
            app,
            work,
            no_progress,
            lambda: None,
            owner=uuid.uuid4(),
            pg_dump="pg_dump",
            pg_basebackup=find_tool("pg_basebackup"),
            policy=WorkPolicy(lease_seconds=5.0, max_attempts=3),
            poll_seconds=0.2,
            credential_policy=CredentialPolicy(allow_operator_refs=True),
            destination_root=tmp_path / "destinations",
            registrations=Registrations(pool, schema, wait_seconds=5),
            files_root=None,
        )
        async with running(executor):
            await until(lambda: finished(work, command.backup_id), 30, "the backup never ended")
    finally:
        await pool.close()

    backup: Backup = app.get_backup(command.backup_id)
    assert backup.status == "failed"
    assert backup.error is not None
    assert "no files root configured (TIDEMARK_BACKUP_RUNNER_FILES_ROOT)" in backup.error
    assert backup.started_at is None


def test_a_new_attempt_ends_an_earlier_attempts_pg_basebackup_session(
    source: SourceCluster,
) -> None:
    backup_id = uuid.uuid4()
    # What a dead runner's pg_basebackup leaves: a WAL sender (in no database) named for
    # attempt 1.
    earlier = psycopg.connect(
        source.database_url,
        replication="true",
        application_name=dump_application_name(backup_id, 1),
        autocommit=True,
    )
    try:
        assert earlier.pgconn.exec_(b"IDENTIFY_SYSTEM").status == pq.ExecStatus.TUPLES_OK
        assert stop_earlier_attempts(target_of(source), PASSWORD, backup_id, 2) == 1
        assert earlier.pgconn.exec_(b"IDENTIFY_SYSTEM").status != pq.ExecStatus.TUPLES_OK
    finally:
        earlier.close()
