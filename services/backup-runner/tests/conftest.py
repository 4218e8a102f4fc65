"""The runner's tests on real PostgreSQL: an event store and a work table in a schema of
their own, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.work import WorkTable


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    name = f"br_test_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def app(database_url: str, schema: str) -> Iterator[BackupRunnerApplication]:
    application: BackupRunnerApplication = BackupRunnerApplication.on_postgres(database_url, schema)
    yield application
    application.close()


@pytest.fixture
def work(database_url: str, schema: str) -> Iterator[WorkTable]:
    table = WorkTable(database_url, schema)
    table.open()
    yield table
    table.close()
