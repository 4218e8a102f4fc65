"""The restore-runner's tests on real PostgreSQL: tables in a schema of their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from tidemark_restore_runner.work import WorkTable


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    name = f"rr_test_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def work(database_url: str, schema: str) -> Iterator[WorkTable]:
    table = WorkTable(database_url, schema)
    table.open()
    yield table
    table.close()
