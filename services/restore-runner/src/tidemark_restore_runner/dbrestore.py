"""A ``db`` restore on the target's server: pg_restore into a new database, then a swap.

The target is touched only by ``swap``: ALLOW_CONNECTIONS off, its sessions ended, then
both renames in ONE transaction (target → ``…_tmo_…``, new → target), so the target is
either the old database or the restored one, never half of each. ``recover`` finishes
or undoes what a stopped runner left, from what the server holds.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from uuid import UUID

import psycopg
import zstandard
from psycopg import sql
from tidemark_backup_runner.pgtools import (
    DumpError,
    connect,
    libpq_env,
    summarize_stderr,
    target_conninfo,
)
from tidemark_contracts.backup import DatabaseTarget

from tidemark_restore_runner.domain import scratch_database

MAINTENANCE_DATABASE = "postgres"
STATEMENT_TIMEOUT_MS = 60_000
CHUNK = 1 << 20


class RestoreFailure(Exception):
    """The restore cannot go on; the message is fit for the event (no path, no secret)."""


def restore_application_name(restore_id: UUID) -> str:
    return f"tidemark-restore {restore_id}"


def _maintenance(target: DatabaseTarget, password: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = connect(
        target.model_copy(update={"dbname": MAINTENANCE_DATABASE}),
        password,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )
    conn.autocommit = True
    return conn


def _exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_scratch(target: DatabaseTarget, password: str, restore_id: UUID) -> str:
    """The new, empty database the dump goes into (a leftover of an earlier try dropped)."""
    name = scratch_database(target.dbname, restore_id, "tmr")
    try:
        with _maintenance(target, password) as conn:
            _drop(conn, name)
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
    except psycopg.Error as exc:
        raise RestoreFailure(
            f"the target's server refused a new database for the restore: {_sqlstate(exc)}"
        ) from None
    return name


def pg_restore(
    target: DatabaseTarget,
    password: str,
    into: str,
    artifact: Path,
    on_progress: Callable[[int], None],
    *,
    pg_restore_binary: str,
    application_name: str,
    on_process: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> None:
    """Decompress ``artifact`` (zstd of a custom-format dump) into ``pg_restore`` of
    database ``into``; ``on_progress(compressed bytes fed)``."""
    conninfo = target_conninfo(
        target.model_copy(update={"dbname": into}), application_name=application_name
    )
    process = subprocess.Popen(
        [
            pg_restore_binary,
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "--dbname",
            conninfo,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=libpq_env(password),
    )
    if on_process is not None:
        on_process(process)
    stderr = bytearray()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if len(stderr) < 64 * 1024:
                stderr.extend(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    fed = 0
    assert process.stdin is not None
    try:
        with artifact.open("rb") as source:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            while chunk := source.read(CHUNK):
                fed += len(chunk)
                data = decompressor.decompress(chunk)
                if data:
                    process.stdin.write(data)
                on_progress(fed)
        process.stdin.close()
    except (BrokenPipeError, zstandard.ZstdError) as exc:
        process.kill()
        process.wait()
        reader.join(5)
        if isinstance(exc, zstandard.ZstdError):
            raise RestoreFailure("the artifact is not a valid zstd stream") from None
        raise RestoreFailure(
            f"pg_restore failed: {summarize_stderr(bytes(stderr), 'pg_restore')}"
        ) from None
    code = process.wait()
    reader.join(5)
    if code != 0:
        raise RestoreFailure(
            f"pg_restore failed (exit {code}): {summarize_stderr(bytes(stderr), 'pg_restore')}"
        )


def swap(target: DatabaseTarget, password: str, restore_id: UUID) -> None:
    """Put the restored database in the target's place, in one transaction; the old one is
    kept as ``…_tmo_…`` until ``drop_old``."""
    new = scratch_database(target.dbname, restore_id, "tmr")
    old = scratch_database(target.dbname, restore_id, "tmo")
    try:
        with _maintenance(target, password) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(target.dbname)
                )
            )
            try:
                # Client sessions only: an autovacuum worker (a superuser process the
                # target's role may not signal) is told to leave by the rename itself.
                conn.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = ANY(%s) AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'",
                    ([target.dbname, new],),
                )
                with conn.transaction():
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(target.dbname), sql.Identifier(old)
                        )
                    )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(new), sql.Identifier(target.dbname)
                        )
                    )
            finally:
                # Whichever database has the target's name now takes connections.
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                        sql.Identifier(target.dbname)
                    )
                )
    except psycopg.Error as exc:
        raise RestoreFailure(
            f"replacing the target database failed: {_sqlstate(exc)}; the target was left as it was"
        ) from None


def drop_old(target: DatabaseTarget, password: str, restore_id: UUID) -> None:
    with _maintenance(target, password) as conn:
        _drop(conn, scratch_database(target.dbname, restore_id, "tmo"))


def drop_scratch(target: DatabaseTarget, password: str, restore_id: UUID) -> None:
    with _maintenance(target, password) as conn:
        _drop(conn, scratch_database(target.dbname, restore_id, "tmr"))


def recover(
    target: DatabaseTarget, password: str, restore_id: UUID
) -> Literal["swapped", "untouched"]:
    """Clean up after a runner that stopped mid-restore: the swap had committed when the
    new database is gone and the old one kept (drop the old: "swapped"); otherwise the
    target is the old database, and the new one is dropped ("untouched")."""
    new = scratch_database(target.dbname, restore_id, "tmr")
    old = scratch_database(target.dbname, restore_id, "tmo")
    with _maintenance(target, password) as conn:
        swapped = _exists(conn, old) and not _exists(conn, new)
        if swapped:
            _drop(conn, old)
            return "swapped"
        _drop(conn, new)
        if _exists(conn, target.dbname):
            # Stopped between disallowing connections and the renames.
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(target.dbname)
                )
            )
        return "untouched"


def _sqlstate(exc: psycopg.Error) -> str:
    """A server error in words that carry no value of ours: its SQLSTATE and class."""
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or type(exc).__name__
    return f"{text} (SQLSTATE {state})" if state else text


__all__ = ["DumpError", "RestoreFailure"]
