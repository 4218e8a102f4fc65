"""Delivery guarantees across the system: duplicates, Kafka outages, progress."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tidemark_contracts import BACKUP_COMMANDS, BACKUP_PROGRESS, Envelope
from tidemark_devstack.e2e import Api
from tidemark_devstack.pytest_plugin import BrokerControl

pytestmark = pytest.mark.integration


async def publish_raw(bootstrap: str, topic: str, key: bytes, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def stored_events(database_url: str, backup_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic FROM backup_runner.backup_runner_events WHERE originator_id = %s "
            "ORDER BY originator_version",
            (backup_id,),
        ).fetchall()
    return [row[0].rsplit(".", 1)[-1] for row in rows]


def test_the_same_command_delivered_twice_yields_one_backup(
    api: Api, source_database: str, kafka_bootstrap: str, database_url: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    envelope = Envelope.wrap(
        command,
        producer="e2e",
        organization_id=api.org_id,
        environment_id=command.environment_id,
    )
    # Two deliveries of one message (as a producer retry or a relay re-publish makes).
    asyncio.run(
        publish_raw(kafka_bootstrap, BACKUP_COMMANDS.name, envelope.key, [envelope.to_bytes()] * 2)
    )
    backup = api.wait_for(str(command.backup_id), missing_ok=True)
    assert backup["status"] == "completed", backup
    # Give the second delivery time to be processed before counting effects.
    second = api.request_backup(environment["id"])
    api.wait_for(second.json()["id"])
    assert stored_events(database_url, str(command.backup_id)) == [
        "Requested",
        "Started",
        "Uploaded",
        "Completed",
    ]
    artifacts = [p for p in api.organization_directory.rglob("*") if p.is_file()]
    assert len(artifacts) == 2, artifacts  # one per backup, none doubled
    listed = api.get(f"/api/v1/environments/{environment['id']}/backups").json()
    assert listed["total"] == 2


def test_gateway_accepts_commands_while_kafka_is_down_and_they_run_once_it_is_back(
    api: Api,
    source_database: str,
    kafka_broker_control: BrokerControl | None,
    database_url: str,
) -> None:
    if kafka_broker_control is None:
        pytest.skip("Kafka is external here; this test stops and starts the local broker")
    environment = api.environment(source_database)
    api.destination()
    kafka_broker_control.stop()
    accepted = api.request_backup(environment["id"], label="during outage")
    assert accepted.status_code == 202, accepted.text
    backup_id = accepted.json()["id"]
    assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "pending"
    with psycopg.connect(database_url) as conn:
        waiting = conn.execute("SELECT count(*) FROM gateway.outbox").fetchone()
    assert waiting is not None
    assert waiting[0] >= 1, "the command waits in the outbox while Kafka is down"
    kafka_broker_control.start()
    backup = api.wait_for(backup_id, timeout=180)
    assert backup["status"] == "completed", backup
    assert stored_events(database_url, backup_id).count("Requested") == 1


async def collect_progress(bootstrap: str, backup_id: str, seconds: float) -> list[dict]:
    consumer = AIOKafkaConsumer(
        BACKUP_PROGRESS.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"e2e-{uuid.uuid4()}",
    )
    await consumer.start()
    ticks: list[dict] = []
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    envelope = Envelope.from_bytes(record.value)
                    if envelope.payload.get("backupId") == backup_id:
                        ticks.append(envelope.payload)
            if ticks and ticks[-1]["status"] in ("completed", "failed"):
                break
    finally:
        await consumer.stop()
    return ticks


def test_progress_ticks_reach_the_progress_topic(
    api: Api, source_database: str, kafka_bootstrap: str
) -> None:
    environment = api.environment(source_database)
    api.destination()
    backup_id = api.request_backup(environment["id"]).json()["id"]
    assert api.wait_for(backup_id)["status"] == "completed"
    ticks = asyncio.run(collect_progress(kafka_bootstrap, backup_id, 30))
    assert ticks, "no progress published"
    final = ticks[-1]
    assert final["status"] == "completed"
    assert final["percent"] == 100.0
    assert final["bytesDone"] > 0
