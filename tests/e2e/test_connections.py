"""Connections only to what the environment says: no field carries other libpq settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from tidemark_contracts import Envelope
from tidemark_devstack.e2e import SOURCE_PASSWORD, Api, publish

pytestmark = pytest.mark.integration

HOSTILE = "host=/var/run/postgresql user=postgres"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dbname", HOSTILE),
        ("dbname", "postgresql://postgres@/x?host=/tmp"),
        ("dbname", "service=x"),
        ("dbname", "app\nhost=/tmp"),
        ("user", "passfile=/etc/shadow"),
        ("user", "postgres://postgres@localhost/postgres"),
        ("host", "/var/run/postgresql"),
        ("host", "db.example sslkey=/x"),
        ("host", "db1,db2"),
    ],
)
def test_an_environment_whose_database_fields_carry_libpq_settings_is_422(
    api: Api, field: str, value: str
) -> None:
    project = api.project()
    database = {"host": "db.example", "port": 5432, "dbname": "app", "user": "app"}
    response = api.post(
        f"/api/v1/projects/{project['id']}/environments",
        json={
            "name": "e",
            "database": {**database, field: value, "passwordRef": "env:TIDEMARK_SECRET_X"},
        },
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [error["field"] for error in body["errors"]] == [f"database.{field}"]
    assert all(error["message"] for error in body["errors"])
    assert value not in response.text, "the refused value is not echoed"
    assert api.get(f"/api/v1/projects/{project['id']}/environments").json()["total"] == 0


def sessions_of(database_url: str, dbname: str) -> int:
    """Sessions ever established to ``dbname`` (the server's cumulative statistics)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_sessions(database_url: str, dbname: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (seen := sessions_of(database_url, dbname)) < at_least:
        if time.monotonic() > deadline:
            return seen
        time.sleep(0.2)
    return seen


def test_a_command_whose_dbname_is_a_connection_string_fails_before_reaching_the_server(
    api: Api,
    source_database: str,
    create_database: Callable[..., str],
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    # What the dbname would lead to: another database of the same server, whose owner
    # has the environment's password (so on a runner that let libpq expand the dbname,
    # the dump would get in).
    decoy_url = create_database("decoy", owner_password=SOURCE_PASSWORD)
    decoy = conninfo_to_dict(decoy_url)
    with psycopg.connect(decoy_url):
        pass  # one session, so the count is known to work before the attack
    before = wait_for_sessions(database_url, str(decoy["dbname"]), 1, timeout=30)
    assert before >= 1, "the server counts sessions"

    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    hostile = (
        f"host={decoy['host']} port={decoy['port']} dbname={decoy['dbname']} user={decoy['user']}"
    )
    command = command.model_copy(
        update={"database": command.database.model_copy(update={"dbname": hostile})}
    )
    envelope = Envelope.wrap(
        command,
        producer="e2e",
        organization_id=api.org_id,
        environment_id=command.environment_id,
    )
    asyncio.run(publish(kafka_bootstrap, envelope))
    backup = api.wait_for(str(command.backup_id), missing_ok=True)
    assert backup["status"] == "failed"
    assert "database.dbname" in backup["error"]
    assert hostile not in backup["error"]
    assert backup["startedAt"] is None, "it ended before it started"
    # No session of the runner's reached the decoy (statistics of a session that had
    # reached it would be counted by now: the count above took far less).
    assert wait_for_sessions(database_url, str(decoy["dbname"]), before + 1, timeout=3) == before
    written = api.organization_directory
    assert not written.exists() or not [p for p in written.rglob("*") if p.is_file()]
