"""WAL archiving on a real PostgreSQL cluster of its own: pg_receivewal on the
environment's slot, every finished segment stored (decompressing to exactly the server's
WAL file) with its commit times, resumed without a gap by another instance, a gap
recorded when the server no longer has the WAL, stalled, and disabled."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.walarchive import RESET_REASON, WalArchive
from tidemark_backup_runner.walsupervisor import WalArchiver, WalPolicy, slot_name
from tidemark_backup_runner.walview import WalSchedulesView, WalTables
from tidemark_contracts.backup import DatabaseTarget
from tidemark_contracts.wal import wal_archive_id
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_platform.catalog import CatalogView
from tidemark_recovery.wal import parse_segment_name

pytestmark = pytest.mark.integration

PASSWORD = "pw-wal-test"
PASSWORD_ENV = "TIDEMARK_SECRET_WAL_TEST"
QUICK = WalPolicy(
    lease_seconds=6.0,
    stall_seconds=600.0,
    switch_seconds=1.0,
    poll_seconds=0.3,
    check_seconds=0.5,
    startup_grace_seconds=0.5,
)


@pytest.fixture(scope="module")
def source() -> Iterator[SourceCluster]:
    cluster = start_source_cluster(
        password=PASSWORD, schema_sql="CREATE TABLE t (id serial PRIMARY KEY, v text);"
    )
    yield cluster
    remove_source_cluster(cluster)


@pytest.fixture
def catalog(database_url: str, schema: str) -> Iterator[str]:
    name = f"{schema}_cat"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(CatalogView().ddl(name).encode())
        conn.execute(WalSchedulesView().ddl(name).encode())
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def tables(database_url: str, schema: str, catalog: str) -> Iterator[WalTables]:
    walk = WalTables(database_url, schema, catalog)
    walk.open()
    yield walk
    walk.close()


class Environment:
    def __init__(self, database_url: str, catalog: str, source: SourceCluster) -> None:
        self.database_url = database_url
        self.catalog = catalog
        self.source = source
        self.id = uuid.uuid4()
        self.org = uuid.uuid4()
        self.destination = uuid.uuid4()
        info = conninfo_to_dict(source.database_url)
        target = DatabaseTarget(
            host=str(info["host"]),
            port=int(str(info["port"])),
            dbname=str(info["dbname"]),
            user=str(info["user"]),
            password_ref=f"env:{PASSWORD_ENV}",
        )
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{catalog}".environments (id, organization_id, project_id, name, '
                "database, cluster, files_path, created_at) VALUES (%s, %s, %s, 'e', %s, %s, "
                "NULL, now())",
                (
                    self.id,
                    self.org,
                    uuid.uuid4(),
                    Jsonb(target.model_dump(mode="json", by_alias=True)),
                    Jsonb(source.cluster_spec()),
                ),
            )
            conn.execute(
                f'INSERT INTO "{catalog}".destinations (id, organization_id, name, type, config, '
                "is_default, created_at) VALUES (%s, %s, 'd', 'local', %s, true, now())",
                (self.destination, self.org, Jsonb({"path": "wal-dest"})),
            )
        self.configure(True)

    def configure(self, wal_enabled: bool, revision: int | None = None) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{self.catalog}".wal_schedules AS s (environment_id, '
                "organization_id, revision, wal_enabled, wal_retention_days, destination_ids) "
                "VALUES (%s, %s, 1, %s, 7, %s) ON CONFLICT (environment_id) DO UPDATE SET "
                "wal_enabled = excluded.wal_enabled, revision = s.revision + 1",
                (self.id, self.org, wal_enabled, [self.destination]),
            )


@pytest.fixture
def environment(
    database_url: str, catalog: str, source: SourceCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Environment]:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    env = Environment(database_url, catalog, source)
    yield env
    with psycopg.connect(source.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NOT NULL",
            (slot_name(env.id),),
        )
        time.sleep(0.5)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot_name(env.id),),
        )


Start = Callable[..., WalArchiver]


@pytest.fixture
async def start(
    app: BackupRunnerApplication, tables: WalTables, tmp_path: Path
) -> AsyncIterator[Start]:
    running: list[asyncio.Task[None]] = []
    (tmp_path / "destinations").mkdir()

    def make(
        policy: WalPolicy = QUICK, spool: str = "state-a", destination_root: str = "destinations"
    ) -> WalArchiver:
        archiver = WalArchiver(
            app,
            tables,
            lambda: None,
            owner=uuid.uuid4(),
            policy=policy,
            spool_root=tmp_path / spool / "wal",
            pg_receivewal=find_tool("pg_receivewal"),
            pg_waldump=find_tool("pg_waldump"),
            credential_policy=CredentialPolicy(allow_operator_refs=True),
            vault=None,
            destination_root=tmp_path / destination_root,
        )
        task = asyncio.create_task(archiver.run())
        running.append(task)
        archiver.task = task  # type: ignore[attr-defined]
        return archiver

    yield make
    for task in running:
        task.cancel()
    for task in running:
        with pytest.raises(asyncio.CancelledError):
            await task


async def stop(archiver: WalArchiver) -> None:
    task: asyncio.Task[None] = archiver.task  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def events(app: BackupRunnerApplication, env: Environment) -> list[Any]:
    return list(app.events.get(wal_archive_id(env.id)))


def archived(app: BackupRunnerApplication, env: Environment) -> list[Any]:
    return [e for e in events(app, env) if isinstance(e, WalArchive.SegmentArchived)]


async def until(check: Callable[[], Any], what: str = "", seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


def write_and_switch(source: SourceCluster, rows: int = 10) -> tuple[datetime, datetime]:
    """Commit rows (the commit lies between the two times returned), then switch."""
    with psycopg.connect(source.database_url, autocommit=True) as conn:
        before = datetime.now(UTC)
        with conn.transaction():
            conn.execute(
                "INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, %s) i", (rows,)
            )
        after = datetime.now(UTC)
        conn.execute("SELECT pg_switch_wal()")
    return before, after


def stored_bytes(tmp_path: Path, env: Environment, segment: str) -> bytes:
    path = tmp_path / "destinations" / str(env.org) / "wal-dest" / str(env.id) / "wal"
    return (path / f"{segment}.zst").read_bytes()


def server_segment(source: SourceCluster, segment: str) -> bytes | None:
    path = Path(source.postgres.data_dir) / "pg_wal" / segment
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def receivers(source: SourceCluster) -> list[tuple[Any, ...]]:
    with psycopg.connect(source.database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_receivewal'"
        ).fetchall()


def contiguous(segments: list[str]) -> bool:
    numbers = [parse_segment_name(s) for s in segments]
    return all(b == (a[0], a[1] + 1) for a, b in itertools.pairwise(numbers))


async def test_segments_are_stored_as_the_servers_wal_files_with_their_commit_times(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
    tmp_path: Path,
) -> None:
    start()
    await until(
        lambda: any(isinstance(e, WalArchive.Opened) for e in events(app, environment)),
        what="the archive to open",
    )
    before, after = await asyncio.to_thread(write_and_switch, source)

    def ours() -> Any:
        return next(
            (
                e
                for e in archived(app, environment)
                if e.last_record_at is not None and before <= e.last_record_at <= after
            ),
            None,
        )

    segment = await until(ours, what="the segment holding the commit")
    assert segment.first_record_at is not None
    assert segment.first_record_at <= segment.last_record_at
    stored = stored_bytes(tmp_path, environment, segment.segment)
    assert segment.checksum == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert segment.size_bytes == len(stored)
    assert segment.copies == [
        {
            "destination_id": str(environment.destination),
            "location": f"{environment.id}/wal/{segment.segment}.zst",
        }
    ]
    on_server = server_segment(source, segment.segment)
    assert on_server is not None  # the slot holds it: the receiver confirmed it just now
    assert zstandard.ZstdDecompressor().decompress(stored) == on_server
    # Exactly one receiver streams, and it uses the environment's slot.
    assert len(receivers(source)) == 1
    statuses = [e.status for e in events(app, environment) if hasattr(e, "status")]
    assert statuses[-1] == "active"
    # The spool keeps only a sparse marker of the last archived segment.
    spool = tmp_path / "state-a" / "wal" / str(environment.id)
    finished = [p for p in spool.iterdir() if not p.name.endswith(".partial")]
    assert [p.name for p in finished] == [archived(app, environment)[-1].segment]
    assert finished[0].stat().st_blocks == 0


async def test_another_instance_with_an_empty_spool_resumes_after_the_last_archived_segment(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
) -> None:
    first = start(spool="state-a")
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: len(archived(app, environment)) >= 1, what="a first segment")
    await stop(first)
    # Written while nobody receives: must still be archived, with no gap.
    for _ in range(3):
        await asyncio.to_thread(write_and_switch, source)
    last_before = archived(app, environment)[-1].segment
    start(spool="state-b")

    def caught_up() -> bool:
        names = [e.segment for e in archived(app, environment)]
        return len(names) >= names.index(last_before) + 4

    await until(caught_up, what="the segments written while nobody received")
    names = [e.segment for e in archived(app, environment)]
    assert contiguous(names), names
    assert not [e for e in events(app, environment) if isinstance(e, WalArchive.GapDetected)]
    assert len(receivers(source)) == 1


async def test_a_slot_that_was_gone_resets_the_archive_and_streams_from_the_new_slot(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
) -> None:
    first = start(spool="state-a")
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: len(archived(app, environment)) >= 1, what="a first segment")
    await stop(first)
    last = archived(app, environment)[-1].segment
    # The slot goes (an operator dropped it), and the server recycles the WAL after it.
    admin = source.postgres.start()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name(environment.id),))
        for _ in range(4):
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS x (v int)")
            conn.execute("INSERT INTO x VALUES (1)")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        conn.execute("CHECKPOINT")
    start(spool="state-b")
    await asyncio.to_thread(write_and_switch, source)
    gap = await until(
        lambda: next(
            (e for e in events(app, environment) if isinstance(e, WalArchive.GapDetected)), None
        ),
        what="the gap",
    )
    # A new slot (as after a restore, whose cluster has none and may be on another
    # history): the archive is reset, not continued from the spool's old head.
    assert gap.after_segment == last
    assert gap.resumed_at is None
    assert gap.reason == RESET_REASON
    await until(
        lambda: [e.segment for e in archived(app, environment)][-1] != last,
        what="a segment after the reset",
    )
    after = [e.segment for e in archived(app, environment)]
    assert parse_segment_name(after[after.index(last) + 1])[1] > parse_segment_name(last)[1] + 1
    kinds = [type(e).__name__ for e in events(app, environment)]
    assert kinds.index("GapDetected") < len(kinds) - 1
    assert len([k for k in kinds if k == "GapDetected"]) == 1


async def test_a_receiver_that_stops_receiving_is_stalled_and_restarted(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
) -> None:
    archiver = start(
        WalPolicy(
            lease_seconds=6.0,
            stall_seconds=3.0,
            switch_seconds=1.0,
            poll_seconds=0.3,
            check_seconds=0.5,
            startup_grace_seconds=0.5,
        )
    )
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: len(archived(app, environment)) >= 1, what="a first segment")
    process = archiver.receivers[environment.id].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    for _ in range(3):
        await asyncio.to_thread(write_and_switch, source)

    def status_history() -> list[str]:
        return [e.status for e in events(app, environment) if hasattr(e, "status")]

    await until(lambda: "stalled" in status_history(), what="stalled")
    stalled = next(e for e in events(app, environment) if getattr(e, "status", None) == "stalled")
    assert "no WAL segment archived" in stalled.reason
    # Restarted: the stopped process is gone, and archiving goes on without a gap.
    assert process.returncode is not None
    await until(lambda: status_history()[-1] == "active", what="active again")
    await asyncio.to_thread(write_and_switch, source)
    count = len(archived(app, environment))
    await until(lambda: len(archived(app, environment)) > count, what="segments after restart")
    assert contiguous([e.segment for e in archived(app, environment)])


async def test_switching_wal_off_stops_the_receiver_drops_the_slot_and_disables(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
) -> None:
    start()
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: len(archived(app, environment)) >= 1, what="a first segment")
    environment.configure(False)

    def last_status() -> str | None:
        found = [e.status for e in events(app, environment) if hasattr(e, "status")]
        return found[-1] if found else None

    await until(lambda: last_status() == "disabled", what="disabled")
    assert receivers(source) == []
    with psycopg.connect(source.database_url, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot_name(environment.id),)
        ).fetchall()
    assert slots == []


FAILING = WalPolicy(
    lease_seconds=6.0,
    stall_seconds=600.0,
    switch_seconds=1.0,
    poll_seconds=0.3,
    check_seconds=0.5,
    startup_grace_seconds=0.5,
    max_backoff_seconds=1.0,
)


def statuses(app: BackupRunnerApplication, env: Environment) -> list[tuple[str, str | None]]:
    return [(e.status, e.reason) for e in events(app, env) if hasattr(e, "status")]


async def test_a_destination_that_refuses_stalls_archiving_until_it_takes_the_segments(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
    tmp_path: Path,
) -> None:
    start(FAILING, destination_root="missing-root")
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: [s for s, _ in statuses(app, environment)][-1:] == ["stalled"], "stalled")
    _, reason = statuses(app, environment)[-1]
    assert reason is not None
    assert "could not be stored" in reason
    assert "destination root is unavailable" in reason
    assert str(tmp_path) not in reason  # never a path of the runner's machine
    assert archived(app, environment) == []
    # The segments wait in the spool; once the destination takes them, none is missing.
    (tmp_path / "missing-root").mkdir()
    await until(lambda: len(archived(app, environment)) >= 1, what="the waiting segments")
    await until(lambda: statuses(app, environment)[-1][0] == "active", what="active again")
    await asyncio.to_thread(write_and_switch, source)
    count = len(archived(app, environment))
    await until(lambda: len(archived(app, environment)) > count, what="a further segment")
    assert contiguous([e.segment for e in archived(app, environment)])


async def test_a_receiver_that_cannot_connect_is_stalled_saying_why_without_the_secret(
    app: BackupRunnerApplication,
    environment: Environment,
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    start(FAILING)

    await until(lambda: [s for s, _ in statuses(app, environment)][-1:] == ["stalled"], "stalled")
    reason = statuses(app, environment)[-1][1]
    assert reason is not None
    assert "keeps failing (3 times)" in reason
    assert "not-the-password" not in reason
    assert [s for s, _ in statuses(app, environment)] == ["stalled"]


async def test_a_receiver_whose_lease_was_taken_over_stops_receiving(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
    database_url: str,
    schema: str,
) -> None:
    archiver = start()
    await asyncio.to_thread(write_and_switch, source)
    await until(lambda: len(archived(app, environment)) >= 1, what="a first segment")
    process = archiver.receivers[environment.id].process
    assert process is not None
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET owner = %s, generation = generation + 1, "
                "lease_expires_at = now() + interval '1 hour' WHERE environment_id = %s"
            ).format(sql.Identifier(schema, "wal_receivers")),
            (uuid.uuid4(), environment.id),
        )
    await until(lambda: process.returncode is not None, what="the receiver to stop")
    await until(lambda: environment.id not in archiver.receivers, what="the receiver to end")
    count = len(events(app, environment))
    await asyncio.to_thread(write_and_switch, source)
    await asyncio.sleep(3)
    assert receivers(source) == []
    assert len(events(app, environment)) == count  # nothing written without the lease


async def test_without_the_switch_privilege_it_says_so_once_and_archives_full_segments(
    app: BackupRunnerApplication,
    environment: Environment,
    source: SourceCluster,
    start: Start,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = source.postgres.start()
    grant = sql.SQL("{} EXECUTE ON FUNCTION pg_switch_wal() {} shop")
    with psycopg.connect(admin, dbname="shop", autocommit=True) as conn:
        conn.execute(grant.format(sql.SQL("REVOKE"), sql.SQL("FROM")))
    try:
        start()
        await until(lambda: statuses(app, environment)[-1:] == [("active", "receiving WAL")], "on")
        # A new slot starts at the last checkpoint: the segments since are archived first.
        settled = -1
        while settled != len(archived(app, environment)):
            settled = len(archived(app, environment))
            await asyncio.sleep(2)
        with psycopg.connect(source.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO t (v) VALUES ('open segment')")
        await asyncio.sleep(4)  # several forced switches would have happened by now
        assert len(archived(app, environment)) == settled
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")  # the segment fills up (here: by hand)
        await until(lambda: len(archived(app, environment)) > settled, what="the full segment")
        captured = capsys.readouterr()
        assert (captured.out + captured.err).count("wal_switch_not_permitted") == 1
        assert statuses(app, environment)[-1][0] == "active"
    finally:
        with psycopg.connect(admin, dbname="shop", autocommit=True) as conn:
            conn.execute(grant.format(sql.SQL("GRANT"), sql.SQL("TO")))
