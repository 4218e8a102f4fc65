"""Rule 4: secrets never enter events, logs or responses (events are kept forever)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from tidemark_contracts import BACKUP_COMMANDS, BACKUP_EVENTS, BACKUP_PROGRESS
from tidemark_devstack.e2e import JWT_SECRET, SOURCE_PASSWORD, Api
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


async def everything_on(bootstrap: str, topics: list[str]) -> list[bytes]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            values.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    return values


def test_no_credential_reaches_events_kafka_logs_or_responses(
    api: Api,
    stack: Stack,
    source_database: str,
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    environment = api.environment(source_database)
    api.destination(tmp_path)
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "completed"
    secrets = [SOURCE_PASSWORD.encode(), JWT_SECRET.encode()]

    responses = [
        api.get(f"/api/v1/environments/{environment['id']}").content,
        api.get(f"/api/v1/backups/{backup['id']}").content,
        api.get(f"/api/v1/environments/{environment['id']}/backups").content,
    ]
    with psycopg.connect(database_url) as conn:
        stored = [
            bytes(row[0])
            for row in conn.execute("SELECT state FROM backup_runner.backup_runner_events")
        ]
        stored += [
            row[0].encode()
            for table in ("gateway.backups", "gateway.environments", "gateway.destinations")
            for row in conn.execute(f"SELECT t::text FROM {table} t")
        ]
    on_kafka = asyncio.run(
        everything_on(
            kafka_bootstrap, [BACKUP_COMMANDS.name, BACKUP_EVENTS.name, BACKUP_PROGRESS.name]
        )
    )
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
