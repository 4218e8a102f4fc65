"""The physical restore on a real PostgreSQL cluster of its own: a full backup taken by the
backup-runner's own code, WAL archived by a real pg_receivewal, rows written at t1, t2, t3;
restores with and without a target time, every refusal before the cluster is touched,
rollbacks, and a runner killed during replay and after promotion (in a subprocess).
The archive checks that need no server run on the filesystem alone (unit)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.basebackup import take_full_backup
from tidemark_backup_runner.pgtools import find_tool
from tidemark_contracts.backup import DatabaseTarget
from tidemark_contracts.catalog import ClusterSpec
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_restore_runner.full_archive import ArchiveError, extract_verified, read_manifest
from tidemark_restore_runner.physical import (
    JOURNAL_SUFFIX,
    LOCK_SUFFIX,
    OLD_SUFFIX,
    RESTORED_SUFFIX,
    ClusterBusy,
    PhysicalRestore,
    PhysicalRestoreError,
    restore_full,
    resume_interrupted,
)

PASSWORD = "pw-physical-restore-test"
ORG = uuid.UUID(int=9)
SCHEMA = "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());"
SEGMENTS_AFTER_BACKUP = 10
TIMES: dict[str, float] = {}


# -- fixtures: a cluster, its base backup and its archived WAL -------------------------------


class FileWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def open(self) -> None:
        self.handle = open(self.path, "wb")  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)


@dataclass
class History:
    cluster: SourceCluster
    superuser_url: str
    artifact: Path
    wal: Path
    files_root: Path
    site_tree: dict[str, tuple[str, str]]
    base_timeline: int
    t2: datetime
    t3: datetime
    work: Path

    @property
    def spec(self) -> ClusterSpec:
        return ClusterSpec(
            data_directory=str(self.cluster.postgres.data_dir),
            bin_directory=str(self.cluster.postgres.bin_dir),
            port=self.cluster.port,
        )

    @property
    def site(self) -> Path:
        return self.files_root / str(ORG) / "site"

    def fetch_segment(self, name: str, into: Path) -> bool:
        source = self.wal / name
        if not source.exists():
            return False
        shutil.copyfile(source, into)
        return True

    def job(self, **changes: Any) -> PhysicalRestore:
        values: dict[str, Any] = {
            "restore_id": uuid.uuid4(),
            "cluster": self.spec,
            "artifact": self.artifact,
            "files_directory": self.site,
            "pitr_target": None,
            "fetch_segment": None,
            "work_dir": self.work,
        }
        values.update(changes)
        return PhysicalRestore(**values)

    def marks(self) -> list[int]:
        with psycopg.connect(self.superuser_url, dbname="shop") as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM marks ORDER BY id")]

    def timeline(self) -> int:
        with psycopg.connect(self.superuser_url) as conn:
            row = conn.execute("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
            return int(str(row.fetchone()[0]), 16)  # type: ignore[index]

    def postmaster_pid(self) -> int:
        pid_file = self.cluster.postgres.data_dir / "postmaster.pid"
        return int(pid_file.read_text().splitlines()[0])


def tree(root: Path) -> dict[str, tuple[str, str]]:
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            entries[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[relative] = ("dir", oct(path.stat().st_mode & 0o777))
        else:
            entries[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def _switch(conn: psycopg.Connection[Any]) -> str:
    """Finish the current segment; its name (the archive must get it)."""
    row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn()), pg_switch_wal()").fetchone()
    assert row is not None
    return str(row[0])


def _wait_archived(wal: Path, name: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not (wal / name).exists():
        assert time.monotonic() < deadline, f"pg_receivewal did not archive {name}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    cluster = start_source_cluster(password=PASSWORD, schema_sql=SCHEMA)
    work = tmp_path_factory.mktemp("physical")
    receiver: subprocess.Popen[bytes] | None = None
    try:
        superuser_url = cluster.postgres.start()
        wal = work / "wal"
        wal.mkdir()
        receivewal = find_tool("pg_receivewal", str(cluster.postgres.bin_dir))
        subprocess.run(
            [receivewal, "--create-slot", "--if-not-exists", "--slot=t", "-d", superuser_url],
            check=True,
            capture_output=True,
        )
        receiver = subprocess.Popen(
            [receivewal, "-D", str(wal), "--slot=t", "-d", superuser_url, "--no-loop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        files_root = work / "files"
        site = files_root / str(ORG) / "site"
        (site / "uploads").mkdir(parents=True)
        (site / "index.html").write_text("<h1>shop</h1>\n")
        (site / "uploads" / "photo.bin").write_bytes(os.urandom(200_000))
        (site / "latest").symlink_to("uploads/photo.bin")
        site_tree = tree(site)
        with psycopg.connect(cluster.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO marks (id) VALUES (0)")
        info = conninfo_to_dict(cluster.database_url)
        target = DatabaseTarget(
            host=str(info["host"]),
            port=int(str(info["port"])),
            dbname=str(info["dbname"]),
            user=str(info["user"]),
        )
        artifact = work / "backup.full.tar.zst"
        started = time.monotonic()
        result = take_full_backup(
            target,
            PASSWORD,
            [FileWriter(artifact)],
            lambda _: None,
            backup_id=uuid.uuid4(),
            created=datetime.now(UTC),
            files=(files_root, ORG, "site"),
            pg_basebackup=find_tool("pg_basebackup", str(cluster.postgres.bin_dir)),
        )
        TIMES["take_full_backup"] = time.monotonic() - started
        TIMES["artifact_mib"] = artifact.stat().st_size / 2**20
        started = time.monotonic()
        manifest = read_manifest(artifact)
        TIMES["read_manifest"] = time.monotonic() - started
        TIMES["restored_mib"] = manifest.bytes_under("pgdata") / 2**20
        assert result.wal_start_lsn
        # Whatever the test's site gets afterwards, a restore brings the backup's back.
        with psycopg.connect(superuser_url, autocommit=True) as admin:
            # Segments to replay: the base backup's range and several after it.
            last = ""
            for index in range(SEGMENTS_AFTER_BACKUP):
                admin.execute(f"CREATE TABLE IF NOT EXISTS ballast_{index} AS SELECT 1 AS x")
                last = _switch(admin)
            with psycopg.connect(cluster.database_url, autocommit=True) as conn:
                conn.execute("INSERT INTO marks (id) VALUES (1)")
                time.sleep(0.3)
                conn.execute("INSERT INTO marks (id) VALUES (2)")
                t2 = datetime.now(UTC)
                time.sleep(1.2)
                conn.execute("INSERT INTO marks (id) VALUES (3)")
                t3 = datetime.now(UTC)
            last = _switch(admin)
            _wait_archived(wal, last)
            base_timeline = int(last[:8], 16)
        receiver.send_signal(signal.SIGINT)
        receiver.wait(timeout=30)
        receiver = None
        for path in wal.iterdir():
            path.chmod(0o644)
        yield History(
            cluster=cluster,
            superuser_url=superuser_url,
            artifact=artifact,
            wal=wal,
            files_root=files_root,
            site_tree=site_tree,
            base_timeline=base_timeline,
            t2=t2,
            t3=t3,
            work=work,
        )
    finally:
        if receiver is not None:
            receiver.kill()
        remove_source_cluster(cluster)
        print("\nmeasured seconds:", json.dumps({k: round(v, 2) for k, v in TIMES.items()}))


class Recorded:
    def __init__(self) -> None:
        self.phases: list[tuple[str, float | None, str | None]] = []
        self.started = time.monotonic()
        self.at: dict[str, float] = {}

    def __call__(self, phase: str, percent: float | None, message: str | None) -> None:
        self.phases.append((phase, percent, message))
        self.at.setdefault(phase, time.monotonic() - self.started)

    def names(self) -> list[str]:
        return list(dict.fromkeys(p for p, _, _ in self.phases))


def leftovers(history: History) -> list[str]:
    data = history.cluster.postgres.data_dir
    return sorted(
        p.name
        for p in data.parent.iterdir()
        if p.name.startswith(data.name + ".tidemark-")
        and not p.name.endswith((".tidemark-server.log", LOCK_SUFFIX, RESTORED_SUFFIX))
    ) + sorted(p.name for p in history.site.parent.iterdir() if "tidemark" in p.name)


def corrupted_copy(artifact: Path, into: Path, member: str) -> Path:
    """The artifact with one byte of ``member``'s data changed (same size), recompressed."""
    raw = bytearray(zstandard.ZstdDecompressor().stream_reader(artifact.read_bytes()).read())
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as archive:
        info = archive.getmember(member)
    raw[info.offset_data] ^= 0x01
    into.write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
    return into


# -- refused before the cluster is touched ---------------------------------------------------


def test_a_corrupted_member_is_refused_before_the_cluster_is_stopped(
    history: History, tmp_path: Path
) -> None:
    bad = corrupted_copy(history.artifact, tmp_path / "bad.tar.zst", "pgdata/global/pg_control")
    pid = history.postmaster_pid()
    before = history.marks()

    with pytest.raises(PhysicalRestoreError) as caught:
        restore_full(history.job(artifact=bad), Recorded())

    assert "pgdata/global/pg_control" in caught.value.reason
    assert "SHA-256" in caught.value.reason
    assert caught.value.target_unchanged is True
    assert history.postmaster_pid() == pid
    assert history.marks() == before
    assert tree(history.site) == history.site_tree
    assert leftovers(history) == []


def test_a_corrupted_file_of_the_files_directory_is_refused_too(
    history: History, tmp_path: Path
) -> None:
    bad = corrupted_copy(history.artifact, tmp_path / "bad.tar.zst", "files/uploads/photo.bin")
    pid = history.postmaster_pid()

    with pytest.raises(PhysicalRestoreError, match=r"files/uploads/photo\.bin"):
        restore_full(history.job(artifact=bad), Recorded())

    assert history.postmaster_pid() == pid
    assert leftovers(history) == []


def test_a_restore_the_disk_cannot_hold_is_refused_before_anything_is_written(
    history: History,
) -> None:
    pid = history.postmaster_pid()

    with pytest.raises(PhysicalRestoreError, match="not enough disk space") as caught:
        restore_full(history.job(keep_free_bytes=1 << 60), Recorded())

    assert caught.value.target_unchanged is True
    assert history.postmaster_pid() == pid
    assert leftovers(history) == []


def test_a_truncated_artifact_is_refused(history: History, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(history.artifact.read_bytes()[: history.artifact.stat().st_size // 2])
    pid = history.postmaster_pid()

    with pytest.raises(PhysicalRestoreError, match="not a readable zstd-compressed tar"):
        restore_full(history.job(artifact=cut), Recorded())

    assert history.postmaster_pid() == pid


# -- restores --------------------------------------------------------------------------------


def test_a_restore_without_a_target_time_has_the_backups_rows_and_files(
    history: History,
) -> None:
    (history.site / "index.html").write_text("changed after the backup\n")
    (history.site / "new.txt").write_text("not in the backup\n")
    assert history.marks() == [0, 1, 2, 3]
    recorded = Recorded()

    job = history.job()
    started = time.monotonic()
    restore_full(job, recorded)
    TIMES["restore_without_pitr"] = time.monotonic() - started
    TIMES.update({f"no_pitr_reached_{k}": v for k, v in recorded.at.items()})

    assert history.marks() == [0]
    assert tree(history.site) == history.site_tree
    assert history.timeline() == history.base_timeline  # no recovery target, no promotion
    assert recorded.names() == [
        "verifying",
        "stopping",
        "laying_down",
        "starting",
        "verifying_restore",
        "swapped",
        "done",
    ]
    assert leftovers(history) == []
    assert resume_interrupted(history.spec) == "nothing"
    # A takeover of this very restore after its journal was discarded: it completed.
    assert resume_interrupted(history.spec, job.restore_id) == "completed"
    assert resume_interrupted(history.spec, uuid.uuid4()) == "nothing"


def test_a_restore_to_a_time_between_t2_and_t3_has_exactly_the_rows_up_to_t2(
    history: History,
) -> None:
    target = history.t2 + (history.t3 - history.t2) / 2
    recorded = Recorded()

    started = time.monotonic()
    restore_full(history.job(pitr_target=target, fetch_segment=history.fetch_segment), recorded)
    TIMES["restore_pitr"] = time.monotonic() - started
    TIMES.update({f"pitr_reached_{k}": v for k, v in recorded.at.items()})

    assert history.marks() == [0, 1, 2]
    assert history.timeline() > history.base_timeline
    data = history.cluster.postgres.data_dir
    assert not (data / "recovery.signal").exists()
    assert "restore_command" not in (data / "postgresql.auto.conf").read_text()
    assert "replaying" in recorded.names()
    assert recorded.names()[-1] == "done"
    assert leftovers(history) == []


def test_a_target_beyond_the_archived_wal_is_rolled_back_and_the_cluster_runs(
    history: History,
) -> None:
    before = history.marks()
    timeline = history.timeline()

    started = time.monotonic()
    with pytest.raises(PhysicalRestoreError) as caught:
        restore_full(
            history.job(
                pitr_target=history.t3 + timedelta(hours=1), fetch_segment=history.fetch_segment
            ),
            Recorded(),
        )
    TIMES["restore_beyond_wal_and_rollback"] = time.monotonic() - started

    assert "does not reach the target time" in caught.value.reason
    assert "rolled back" in caught.value.reason
    assert caught.value.target_unchanged is True
    assert history.marks() == before
    assert history.timeline() == timeline
    assert leftovers(history) == []


def test_a_failing_wal_source_is_rolled_back_saying_so(history: History) -> None:
    before = history.marks()

    def broken(name: str, into: Path) -> bool:
        raise RuntimeError("the destination is unreachable")

    with pytest.raises(PhysicalRestoreError, match="fetching archived WAL failed") as caught:
        restore_full(history.job(pitr_target=history.t2, fetch_segment=broken), Recorded())

    assert caught.value.target_unchanged is True
    assert history.marks() == before
    assert leftovers(history) == []


# -- a runner killed in the middle -----------------------------------------------------------

RUNNER = """
import json, os, shutil, signal, sys, uuid
from datetime import datetime
from pathlib import Path
from tidemark_contracts.catalog import ClusterSpec
from tidemark_restore_runner.physical import PhysicalRestore, restore_full

args = json.loads(sys.argv[1])
wal = Path(args["wal"])

def fetch(name, into):
    if not (wal / name).exists():
        return False
    shutil.copyfile(wal / name, into)
    return True

def progress(phase, percent, message):
    if [phase, percent] == args["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)

restore_full(
    PhysicalRestore(
        restore_id=uuid.uuid4(),
        cluster=ClusterSpec.model_validate(args["cluster"]),
        artifact=Path(args["artifact"]),
        files_directory=Path(args["files"]),
        pitr_target=datetime.fromisoformat(args["target"]),
        fetch_segment=fetch,
        work_dir=Path(args["work"]),
        segment_delay_seconds=args["delay"],
    ),
    progress,
)
"""


def run_restore(history: History, target: datetime, *, delay: float, kill_at: Any) -> Any:
    arguments = {
        "wal": str(history.wal),
        "cluster": history.spec.model_dump(mode="json"),
        "artifact": str(history.artifact),
        "files": str(history.site),
        "target": target.isoformat(),
        "work": str(history.work),
        "delay": delay,
        "kill_at": kill_at,
    }
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_runner_killed_during_wal_replay_is_rolled_back_by_resume(history: History) -> None:
    before = history.marks()
    timeline = history.timeline()
    data = history.cluster.postgres.data_dir
    server_log = data.with_name(data.name + ".tidemark-server.log")
    log_start = server_log.stat().st_size if server_log.exists() else 0
    runner = run_restore(history, history.t2, delay=1.0, kill_at=None)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert runner.poll() is None, runner.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "replay never started"
            replaying = (data / "recovery.signal").exists() and (
                server_log.exists()
                and "restored log file" in server_log.read_bytes()[log_start:].decode()
            )
            if replaying:
                break
            time.sleep(0.1)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert Path(str(data) + JOURNAL_SUFFIX).exists()
    assert Path(str(data) + OLD_SUFFIX).exists()

    started = time.monotonic()
    assert resume_interrupted(history.spec) == "rolled_back"
    TIMES["resume_rollback_after_kill"] = time.monotonic() - started

    assert history.marks() == before
    assert history.timeline() == timeline
    assert leftovers(history) == []
    assert resume_interrupted(history.spec) == "nothing"  # safe to run again


@pytest.mark.parametrize(
    ("kill_at", "restarted"),
    [
        (["stopping", None], False),  # staged, nothing touched yet
        (["laying_down", None], True),  # stopped, not swapped
        (["starting", None], True),  # swapped, not started
    ],
)
def test_a_runner_killed_before_replay_is_rolled_back_by_resume(
    history: History, kill_at: list[Any], restarted: bool
) -> None:
    before = history.marks()
    pid = history.postmaster_pid()
    runner = run_restore(history, history.t2, delay=0.0, kill_at=kill_at)
    runner.wait(timeout=300)
    assert runner.returncode == -signal.SIGKILL, runner.stdout.read()  # type: ignore[union-attr]
    data = history.cluster.postgres.data_dir
    assert Path(str(data) + JOURNAL_SUFFIX).exists()

    assert resume_interrupted(history.spec) == "rolled_back"

    assert history.marks() == before
    assert (history.postmaster_pid() != pid) is restarted
    assert tree(history.site) == history.site_tree
    assert leftovers(history) == []
    assert resume_interrupted(history.spec) == "nothing"


def test_a_rollback_that_fails_too_says_the_target_is_not_unchanged(history: History) -> None:
    """A pg_ctl that stops but never starts: the restored cluster does not start, nor does
    the old one put back; the error says so and the old data directory is in place."""
    real = history.cluster.postgres.bin_dir
    broken = history.cluster.postgres.base_dir / "broken-bin"
    broken.mkdir()
    try:
        for tool in real.iterdir():
            (broken / tool.name).symlink_to(tool)
        (broken / "pg_ctl").unlink()
        (broken / "pg_ctl").write_text(
            f'#!/bin/sh\ncase " $* " in *" start "*) exit 1 ;; esac\nexec {real}/pg_ctl "$@"\n'
        )
        (broken / "pg_ctl").chmod(0o755)
        before = history.marks()
        spec = history.spec.model_copy(update={"bin_directory": str(broken)})

        with pytest.raises(PhysicalRestoreError) as caught:
            restore_full(history.job(cluster=spec), Recorded())

        assert caught.value.target_unchanged is False
        assert "the restored cluster did not start" in caught.value.reason
        assert "rolling the target back failed too" in caught.value.reason
        assert not history.cluster.postgres.data_dir.joinpath("postmaster.pid").exists()
        # Once pg_ctl works again, resume finishes the rollback the journal still holds.
        (broken / "pg_ctl").unlink()
        (broken / "pg_ctl").symlink_to(real / "pg_ctl")

        assert resume_interrupted(history.spec) == "rolled_back"

        assert history.marks() == before
        assert tree(history.site) == history.site_tree
        assert leftovers(history) == []
    finally:
        shutil.rmtree(broken)
        history.cluster.postgres.start()


def test_a_runner_killed_after_promotion_is_completed_by_resume(history: History) -> None:
    target = history.t2 + (history.t3 - history.t2) / 2
    # Something new before the restore, so "completed" is the restore's rows, not these.
    with psycopg.connect(history.superuser_url, dbname="shop") as conn:
        conn.execute("INSERT INTO marks (id) VALUES (99) ON CONFLICT DO NOTHING")
    runner = run_restore(history, target, delay=0.0, kill_at=["verifying_restore", 100.0])
    runner.wait(timeout=300)
    assert runner.returncode == -signal.SIGKILL, runner.stdout.read()  # type: ignore[union-attr]
    data = history.cluster.postgres.data_dir
    assert Path(str(data) + OLD_SUFFIX).exists()

    assert resume_interrupted(history.spec) == "completed"

    assert history.marks() == [0, 1, 2]
    assert tree(history.site) == history.site_tree
    assert leftovers(history) == []
    assert resume_interrupted(history.spec) == "nothing"


# -- the archive's checks (unit, filesystem only) --------------------------------------------


def _artifact(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], manifest: Any
) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o700
    return info, None


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _entry(name: str, data: bytes) -> dict[str, Any]:
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _extract(path: Path, tmp_path: Path) -> Path:
    manifest = read_manifest(path)
    staging = tmp_path / "staging"
    staging.mkdir()
    extract_verified(path, manifest, {"pgdata": staging, "files": staging}, {})
    return staging


def test_a_well_formed_archive_extracts_with_its_links(tmp_path: Path) -> None:
    data = b"15\n"
    path = _artifact(
        tmp_path / "a.tar.zst",
        [
            _dir("pgdata"),
            _file("pgdata/PG_VERSION", data),
            _dir("files"),
            _file("files/a.txt", b"a"),
            _link("files/l", "a.txt"),
        ],
        {
            "files": [
                _entry("pgdata/PG_VERSION", data),
                _entry("files/a.txt", b"a"),
                {"path": "files/l", "type": "symlink", "target": "a.txt"},
            ]
        },
    )

    staging = _extract(path, tmp_path)

    assert (staging / "pgdata" / "PG_VERSION").read_bytes() == data
    assert os.readlink(staging / "files" / "l") == "a.txt"
    assert (staging / "pgdata").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("members", "files", "reason"),
    [
        ([_file("/etc/evil", b"x")], [_entry("/etc/evil", b"x")], "unsafe name"),
        (
            [_dir("pgdata"), _file("pgdata/../evil", b"x")],
            [_entry("pgdata/../evil", b"x")],
            "unsafe name",
        ),
        ([_file("elsewhere/x", b"x")], [_entry("elsewhere/x", b"x")], "unexpected member"),
        (
            [_dir("files"), _link("files/l", "../../etc")],
            [{"path": "files/l", "type": "symlink", "target": "../../etc"}],
            "leads outside",
        ),
        (
            [_dir("files"), _link("files/l", "/etc/passwd")],
            [{"path": "files/l", "type": "symlink", "target": "/etc/passwd"}],
            "leads outside",
        ),
        (
            [_dir("pgdata"), _link("pgdata/h", "pgdata/x", tarfile.LNKTYPE)],
            [],
            "neither a file",
        ),
        ([_file("pgdata/x", b"x")], [_entry("pgdata/x", b"x")], "outside its directories"),
        ([_dir("pgdata"), _file("pgdata/x", b"x")], [], "does not list"),
        ([_dir("pgdata"), _file("pgdata/x", b"x")], [_entry("pgdata/x", b"xy")], "size"),
        (
            [_dir("pgdata")],
            [_entry("pgdata/x", b"x")],
            "lacks 1 member",
        ),
    ],
)
def test_an_unsafe_or_mismatched_archive_is_refused(
    tmp_path: Path, members: Any, files: Any, reason: str
) -> None:
    path = _artifact(tmp_path / "a.tar.zst", members, {"files": files})

    with pytest.raises(ArchiveError, match=reason):
        _extract(path, tmp_path)

    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "evil").exists()


def test_a_second_process_never_works_on_a_cluster_another_one_holds(tmp_path: Path) -> None:
    # A runner whose lease was taken over may still run its restore thread: while it holds
    # the cluster, a new restore is refused before anything (ClusterBusy, retried later),
    # and resume_interrupted waits for it instead of rolling back under its feet.
    data = tmp_path / "data"
    data.mkdir()
    spec = ClusterSpec(data_directory=str(data), bin_directory="/nonexistent", port=1)
    job = PhysicalRestore(
        restore_id=uuid.uuid4(),
        cluster=spec,
        artifact=tmp_path / "artifact",
        files_directory=None,
        pitr_target=None,
        fetch_segment=None,
        work_dir=tmp_path / "work",
    )
    held = os.open(tmp_path / f"data{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    resumed: list[str] = []
    waiter = threading.Thread(target=lambda: resumed.append(resume_interrupted(spec)))
    try:
        with pytest.raises(ClusterBusy, match="still working on this cluster"):
            restore_full(job, Recorded())
        waiter.start()
        time.sleep(0.5)
        assert resumed == []  # waiting for the holder
    finally:
        os.close(held)  # the holder ends
    waiter.join(timeout=10)
    assert resumed == ["nothing"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", f"data{LOCK_SUFFIX}"]
