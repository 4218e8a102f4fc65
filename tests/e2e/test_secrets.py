"""Rule 4: secrets never enter events, logs or responses (events are kept forever)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_devstack.e2e import JWT_SECRET, SOURCE_PASSWORD, Api, topic_records
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


async def everything_on(bootstrap: str) -> list[bytes]:
    """Every record (key, value and headers) of every topic, read to its end offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
    finally:
        await admin.close()
    blobs: list[bytes] = []
    for topic in topics:
        for record in await topic_records(bootstrap, topic):
            blobs += [record.key or b"", record.value or b""]
            blobs += [value for _, value in record.headers]
    return blobs


def every_value_of_every_table(database_url: str) -> dict[str, list[bytes]]:
    """Every value of every row of every table in every schema but PostgreSQL's own,
    per table; bytea as its raw bytes (an event's state), anything else as text."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        values: dict[str, list[bytes]] = {}
        for schema, table in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            values[f"{schema}.{table}"] = [
                bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                for row in conn.execute(query)
                for value in row
            ]
    return values


def test_no_credential_reaches_events_kafka_logs_or_responses(
    api: Api,
    stack: Stack,
    source_database: str,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    environment = api.environment(source_database)
    api.destination()
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "completed"
    secrets = [SOURCE_PASSWORD.encode(), JWT_SECRET.encode()]
    control_plane_password = conninfo_to_dict(database_url).get("password")
    if control_plane_password:
        secrets.append(str(control_plane_password).encode())

    responses = [
        api.get(f"/api/v1/projects/{environment['projectId']}").content,
        api.get("/api/v1/destinations").content,
        api.get(f"/api/v1/environments/{environment['id']}").content,
        api.get(f"/api/v1/backups/{backup['id']}").content,
        api.get(f"/api/v1/environments/{environment['id']}/backups").content,
    ]
    tables = every_value_of_every_table(database_url)
    assert {
        "backup_runner.backup_runner_events",
        "gateway_catalog.gateway_catalog_events",
        "gateway.outbox",
        "gateway.backups",
        "gateway.environments",
    } <= set(tables)
    stored = [value for values in tables.values() for value in values]
    on_kafka = asyncio.run(everything_on(kafka_bootstrap))
    logs = [path.read_bytes() for path in stack.log_dir.glob("*.log")]
    assert stored
    assert on_kafka
    assert logs
    for secret in secrets:
        for place, blobs in [
            ("responses", responses),
            ("event store and read models", stored),
            ("kafka", on_kafka),
            ("logs", logs),
        ]:
            assert not any(secret in blob for blob in blobs), f"a secret leaked into {place}"
    # The reference, not the secret, is what travels.
    assert any(b"env:TIDEMARK_SECRET_E2E_SOURCE" in blob for blob in stored)
