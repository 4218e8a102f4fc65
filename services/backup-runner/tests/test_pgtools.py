"""pg_dump streamed through zstd and SHA-256, against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.pgtools import (
    DumpError,
    TargetError,
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
            target, "pw", [writer], lambda _: None, pg_dump=str(silent), stall_timeout_seconds=1
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


def the_runners_own_libpq_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, password: str
) -> None:
    """A runner whose environment, password files and service file all hold a valid way
    into the database of ``url``: what a tenant's connection must never fall back on."""
    info = conninfo_to_dict(url)
    line = f"*:*:*:*:{password}\n"
    home = tmp_path / "home"
    home.mkdir()
    for pgpass in (home / ".pgpass", tmp_path / "pgpass"):
        pgpass.write_text(line)
        pgpass.chmod(0o600)
    service = (
        f"[runner]\nhost={info['host']}\nport={info['port']}\ndbname={info['dbname']}\n"
        f"user={info['user']}\npassword={password}\n"
    )
    (home / ".pg_service.conf").write_text(service)
    (tmp_path / "pg_service.conf").write_text(service)
    for name, value in {
        "HOME": str(home),
        "PGPASSFILE": str(tmp_path / "pgpass"),
        "PGSERVICEFILE": str(tmp_path / "pg_service.conf"),
        "PGHOST": str(info["host"]),
        "PGPORT": str(info["port"]),
        "PGDATABASE": str(info["dbname"]),
        "PGUSER": str(info["user"]),
        "PGPASSWORD": password,
    }.items():
        monkeypatch.setenv(name, value)


def test_the_runners_pg_variables_and_password_files_never_serve_a_tenants_connection(
    create_database: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create_database("envleak", owner_password="pw-envleak-test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
    target, _ = target_of(url)
    the_runners_own_libpq_settings(tmp_path, monkeypatch, url, "pw-envleak-test")
    # The setup is real: plain libpq, given no password, gets in with the runner's.
    with psycopg.connect("", connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (target.user,)
    plain = subprocess.run(
        [
            PG_DUMP,
            "--schema-only",
            "--no-password",
            f"--host={target.host}",
            f"--port={target.port}",
            f"--username={target.user}",
            f"--dbname={target.dbname}",
        ],
        env={"HOME": os.environ["HOME"]},
        capture_output=True,
    )
    assert plain.returncode == 0, plain.stderr

    writer = LocalArtifactWriter(tmp_path, ORG, "out", "a.zst")
    with pytest.raises(DumpError) as raised:
        dump_database(target, "the-wrong-one", [writer], lambda _: None, pg_dump=PG_DUMP)
    assert "password authentication failed" in str(raised.value)
    writer.abort()
    assert estimate_size(target, "the-wrong-one") is None
    assert stop_earlier_attempts(target, "the-wrong-one", uuid.uuid4(), 2) == 0
    # No password is no fallback to any of the runner's.
    with pytest.raises(TargetError, match="empty password"):
        dump_database(target, "", [writer], lambda _: None, pg_dump=PG_DUMP)
    assert estimate_size(target, "") is None
    # With the tenant's own password the same runner dumps the tenant's database.
    result = dump_database(target, "pw-envleak-test", [writer], lambda _: None, pg_dump=PG_DUMP)
    assert result.raw_bytes > 0
    assert estimate_size(target, "pw-envleak-test")


def test_names_with_quotes_spaces_and_backslashes_reach_pg_dump_as_themselves(
    database_url: str, tmp_path: Path
) -> None:
    name = f'tm it\'s "odd" \\ {uuid.uuid4().hex[:6]}'
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal("pw-odd-test")
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
    try:
        info = conninfo_to_dict(database_url)
        target = DatabaseTarget(
            host=str(info["host"]), port=int(str(info["port"])), dbname=name, user=name
        )
        writer = LocalArtifactWriter(tmp_path, ORG, "out", "a.zst")
        result = dump_database(target, "pw-odd-test", [writer], lambda _: None, pg_dump=PG_DUMP)
        raw = (
            zstandard.ZstdDecompressor()
            .decompressobj()
            .decompress((tmp_path / str(ORG) / "out" / writer.commit()).read_bytes())
        )
        assert raw.startswith(b"PGDMP")
        assert result.raw_bytes == len(raw)
        assert estimate_size(target, "pw-odd-test")
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
