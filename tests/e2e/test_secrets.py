"""Rule 4: secrets never enter events, logs or responses (events are kept forever).

Every stored secret value, the keys that seal them, the JWT secret and the control
plane's own password are searched for in every table of every schema, every record of
every topic (to its end offsets), every service log and every response."""

from __future__ import annotations

import asyncio
import base64

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_devstack.e2e import (
    JWT_SECRET,
    SOURCE_PASSWORD,
    SOURCE_PASSWORD_REF,
    Api,
    topic_records,
)
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
    # Stored secrets of every kind of use: a database password (replaced once, so an old
    # value exists too), S3 keys of a destination, one nobody uses, one deleted.
    old_password = "first-value-of-the-source-password-0451"
    responses = [
        api.post("/api/v1/secrets", json={"name": "source-password", "value": old_password}).content
    ]
    environment = api.environment(source_database)  # replaces it with SOURCE_PASSWORD
    s3_access, s3_secret = "AKIA-LEAKTEST-7F3Q9Z", "s3-secret-key-LEAKTEST-b9c1d7e5"
    for name, value in [("s3-access", s3_access), ("s3-secret", s3_secret)]:
        responses.append(api.post("/api/v1/secrets", json={"name": name, "value": value}).content)
    unused, deleted = "unused-secret-LEAKTEST-93ab", "deleted-secret-LEAKTEST-27cd"
    responses.append(api.post("/api/v1/secrets", json={"name": "unused", "value": unused}).content)
    responses.append(api.post("/api/v1/secrets", json={"name": "gone", "value": deleted}).content)
    assert api.delete("/api/v1/secrets/gone").status_code == 204
    s3 = api.post(
        "/api/v1/destinations",
        json={
            "name": "s3-leak-test",
            "type": "s3",
            "config": {
                "bucket": "leak-test",
                "accessKeyRef": "secret:s3-access",
                "secretKeyRef": "secret:s3-secret",
            },
            "isDefault": False,
        },
    )
    assert s3.status_code == 201, s3.text
    responses.append(s3.content)
    api.destination()
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "completed"
    # A failure's reason is a response and an event too: a wrong password's.
    wrong = api.environment(source_database, password_ref=api.secret("wrong", "wrong-LEAKTEST-5e"))
    failed = api.wait_for(api.request_backup(wrong["id"]).json()["id"])
    assert failed["status"] == "failed", failed
    secrets = [
        SOURCE_PASSWORD.encode(),
        old_password.encode(),
        s3_access.encode(),
        s3_secret.encode(),
        unused.encode(),
        deleted.encode(),
        b"wrong-LEAKTEST-5e",
        JWT_SECRET.encode(),
    ]
    # The keys that seal stored secrets: their text and their raw bytes.
    for entry in stack.secrets_keys.split(","):
        encoded = entry.partition(":")[2]
        secrets += [encoded.encode(), base64.b64decode(encoded)]
    control_plane_password = conninfo_to_dict(database_url).get("password")
    if control_plane_password:
        secrets.append(str(control_plane_password).encode())

    responses += [
        api.get("/api/v1/secrets").content,
        api.get(f"/api/v1/backups/{failed['id']}").content,
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
        "secrets.values",
        "secrets.uses",
    } <= set(tables)
    assert len(tables["secrets.values"]) >= 5 * 6, "the stored secrets were searched"
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
    assert any(SOURCE_PASSWORD_REF.encode() in blob for blob in stored)
    assert any(SOURCE_PASSWORD_REF.encode() in blob for blob in on_kafka)
