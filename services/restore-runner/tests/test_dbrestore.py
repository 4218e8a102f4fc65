"""The db restore's database work on real PostgreSQL: a new database, the swap, recovery."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.pgtools import find_tool
from tidemark_contracts.backup import DatabaseTarget
from tidemark_devstack.e2e import table_fingerprints
from tidemark_restore_runner import dbrestore

PASSWORD = "Restore-Pa55word"


@pytest.fixture
def target(create_database: Callable[..., str], database_url: str) -> tuple[DatabaseTarget, str]:
    url = create_database("tgt", owner_password=PASSWORD)
    info = conninfo_to_dict(url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{info["user"]}" CREATEDB')
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 10) g")
    database = DatabaseTarget(
        host=str(info["host"]),
        port=int(str(info["port"])),
        dbname=str(info["dbname"]),
        user=str(info["user"]),
    )
    return database, url


def dump_of_rows(database_url: str, tmp_path: Path, create_database: Callable[..., str]) -> Path:
    source = create_database("src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 50) g")
    raw = subprocess.run(
        [find_tool("pg_dump"), "--format=custom", "--dbname", source],
        check=True,
        capture_output=True,
    ).stdout
    artifact = tmp_path / "artifact"
    artifact.write_bytes(zstandard.ZstdCompressor().compress(raw))
    return artifact


def databases(database_url: str, like: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,)
            )
        ]


def test_the_restored_database_replaces_the_target_and_nothing_is_left(
    target: tuple[DatabaseTarget, str],
    database_url: str,
    tmp_path: Path,
    create_database: Callable[..., str],
) -> None:
    database, url = target
    artifact = dump_of_rows(database_url, tmp_path, create_database)
    restore_id = uuid.uuid4()
    into = dbrestore.create_scratch(database, PASSWORD, restore_id)
    fed: list[int] = []
    dbrestore.pg_restore(
        database,
        PASSWORD,
        into,
        artifact,
        fed.append,
        pg_restore_binary=find_tool("pg_restore"),
        application_name="t",
    )
    assert fed[-1] == artifact.stat().st_size
    assert table_fingerprints(url)["t"][0] == 10, "the target is untouched before the swap"
    dbrestore.swap(database, PASSWORD, restore_id)
    dbrestore.drop_old(database, PASSWORD, restore_id)
    assert table_fingerprints(url)["t"][0] == 50
    assert databases(database_url, f"{database.dbname}_tm%") == []


def test_a_dump_that_fails_leaves_the_target_and_says_why(
    target: tuple[DatabaseTarget, str], database_url: str, tmp_path: Path
) -> None:
    database, url = target
    artifact = tmp_path / "artifact"
    artifact.write_bytes(zstandard.ZstdCompressor().compress(b"PGDMP not really a dump"))
    restore_id = uuid.uuid4()
    into = dbrestore.create_scratch(database, PASSWORD, restore_id)
    with pytest.raises(dbrestore.RestoreFailure, match="pg_restore failed"):
        dbrestore.pg_restore(
            database,
            PASSWORD,
            into,
            artifact,
            lambda _: None,
            pg_restore_binary=find_tool("pg_restore"),
            application_name="t",
        )
    assert dbrestore.recover(database, PASSWORD, restore_id) == "untouched"
    assert table_fingerprints(url)["t"][0] == 10
    assert databases(database_url, f"{database.dbname}_tm%") == []


def test_recovery_after_the_swap_keeps_the_restored_database(
    target: tuple[DatabaseTarget, str],
    database_url: str,
    tmp_path: Path,
    create_database: Callable[..., str],
) -> None:
    database, url = target
    artifact = dump_of_rows(database_url, tmp_path, create_database)
    restore_id = uuid.uuid4()
    into = dbrestore.create_scratch(database, PASSWORD, restore_id)
    dbrestore.pg_restore(
        database,
        PASSWORD,
        into,
        artifact,
        lambda _: None,
        pg_restore_binary=find_tool("pg_restore"),
        application_name="t",
    )
    dbrestore.swap(database, PASSWORD, restore_id)
    # The runner stopped here, before dropping the old database.
    assert dbrestore.recover(database, PASSWORD, restore_id) == "swapped"
    assert table_fingerprints(url)["t"][0] == 50
    assert databases(database_url, f"{database.dbname}_tm%") == []


def test_recovery_before_the_swap_reopens_a_target_closed_for_the_swap(
    target: tuple[DatabaseTarget, str], database_url: str
) -> None:
    database, url = target
    restore_id = uuid.uuid4()
    dbrestore.create_scratch(database, PASSWORD, restore_id)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database.dbname}" WITH ALLOW_CONNECTIONS false')
    assert dbrestore.recover(database, PASSWORD, restore_id) == "untouched"
    assert table_fingerprints(url)["t"][0] == 10
    assert databases(database_url, f"{database.dbname}_tm%") == []
