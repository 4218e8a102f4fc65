"""pg_dump streamed through zstd and SHA-256, against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.pgtools import (
    DumpError,
    dump_application_name,
    dump_database,
    estimate_size,
    find_tool,
    stop_earlier_attempts,
)
from tidemark_backup_runner.storage.local import LocalArtifactWriter
from tidemark_contracts.backup import DatabaseTarget

pytestmark = pytest.mark.integration

PG_DUMP = find_tool("pg_dump")
ORG = uuid.uuid4()


def target_of(url: str) -> tuple[DatabaseTarget, str]:
    info = conninfo_to_dict(url)
    target = DatabaseTarget(
        host=str(info["host"]),
        port=int(str(info["port"])),
        dbname=str(info["dbname"]),
        user=str(info["user"]),
    )
    return target, str(info["password"])


class FailingWriter:
    def __init__(self) -> None:
        self.aborted = False

    def open(self) -> None:
        pass

    def write(self, chunk: bytes) -> None:
        raise OSError(28, "No space left on device")

    def commit(self) -> str:
        raise AssertionError("never committed")

    def abort(self) -> None:
        self.aborted = True


def test_dump_streams_one_checksummed_artifact_into_every_writer(
    create_database: Callable[..., str], tmp_path: Path
) -> None:
    url = create_database("dump", owner_password="pw-dump-test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g"
        )
    target, password = target_of(url)
    writers = [LocalArtifactWriter(tmp_path, ORG, n, "a.zst") for n in ("one", "two")]
    progress: list[int] = []
    result = dump_database(target, password, writers, progress.append, pg_dump=PG_DUMP)
    assert [w.commit() for w in writers] == ["a.zst", "a.zst"]
    first, second = ((tmp_path / str(ORG) / n / "a.zst").read_bytes() for n in ("one", "two"))
    assert first == second
    assert result.size_bytes == len(first)
    assert result.checksum == "sha256:" + hashlib.sha256(first).hexdigest()
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(first)
    assert raw.startswith(b"PGDMP")  # pg_dump's custom format
    assert result.raw_bytes == len(raw)
    assert progress
    assert progress[-1] == len(raw)
    assert estimate_size(target, password) > 0


def test_a_failing_destination_stops_pg_dump_with_the_reason(
    create_database: Callable[..., str],
) -> None:
    url = create_database("dumpfail", owner_password="pw-dump-test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    target, password = target_of(url)
    with pytest.raises(DumpError, match="No space left on device"):
        dump_database(
            target, password, [FailingWriter()], lambda _: None, pg_dump=find_tool("pg_dump")
        )


def test_a_wrong_password_is_a_dump_error_without_the_password(
    create_database: Callable[..., str], tmp_path: Path
) -> None:
    url = create_database("dumpauth", owner_password="pw-dump-test")
    target, _ = target_of(url)
    writer = LocalArtifactWriter(tmp_path, ORG, "out", "a.zst")
    with pytest.raises(DumpError) as raised:
        dump_database(
            target, "the-wrong-one", [writer], lambda _: None, pg_dump=find_tool("pg_dump")
        )
    assert "password authentication failed" in str(raised.value)
    assert "the-wrong-one" not in str(raised.value)
    assert estimate_size(target, "the-wrong-one") is None


def test_a_lock_held_too_long_fails_the_dump_instead_of_waiting_forever(
    create_database: Callable[..., str], tmp_path: Path
) -> None:
    url = create_database("dumplock", owner_password="pw-dump-test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g")
    target, password = target_of(url)
    writer = LocalArtifactWriter(tmp_path, ORG, "out", "a.zst")
    with psycopg.connect(url) as blocker:
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DumpError, match=r"timeout.*LOCK TABLE public\.t"):
            dump_database(
                target,
                password,
                [writer],
                lambda _: None,
                pg_dump=PG_DUMP,
                lock_wait_timeout_seconds=1,
            )
        blocker.rollback()


def test_a_silent_pg_dump_is_stopped_by_the_stall_watchdog(tmp_path: Path) -> None:
    # A stand-in for pg_dump talking to a host that accepted the connection, sent a
    # little, then went silent.
    silent = tmp_path / "pg_dump"
    silent.write_text("#!/bin/sh\nprintf PGDMP\nexec sleep 60\n")
    silent.chmod(0o755)
    target = DatabaseTarget(host="127.0.0.1", port=1, dbname="d", user="u")
    writer = LocalArtifactWriter(tmp_path / "root", ORG, "out", "a.zst")
    (tmp_path / "root").mkdir()
    with pytest.raises(DumpError, match="no output for 1 s"):
        dump_database(
            target, None, [writer], lambda _: None, pg_dump=str(silent), stall_timeout_seconds=1
        )
    writer.abort()
    assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []


def test_a_new_attempt_ends_the_sessions_earlier_attempts_left_behind(
    create_database: Callable[..., str],
) -> None:
    url = create_database("attempts", owner_password="pw-attempts-test")
    target, password = target_of(url)
    backup_id = uuid.uuid4()
    # What a dead runner's pg_dump leaves: a session of the same role, named for attempt 1.
    earlier = psycopg.connect(url, application_name=dump_application_name(backup_id, 1))
    current = psycopg.connect(url, application_name=dump_application_name(backup_id, 2))
    other = psycopg.connect(url, application_name=dump_application_name(uuid.uuid4(), 1))
    try:
        assert stop_earlier_attempts(target, password, backup_id, 2) == 1
        with pytest.raises(psycopg.OperationalError):
            earlier.execute("SELECT 1")
        assert current.execute("SELECT 1").fetchone() == (1,), "its own attempt is kept"
        assert other.execute("SELECT 1").fetchone() == (1,), "other backups are not touched"
    finally:
        for conn in (earlier, current, other):
            conn.close()
