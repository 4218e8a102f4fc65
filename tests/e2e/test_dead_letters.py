"""Commands that can never be handled are parked on backup.commands.dlq; the partition goes on."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tidemark_contracts import BACKUP_COMMANDS, Envelope
from tidemark_devstack.e2e import Api, dead_letters_counted
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


async def publish(bootstrap: str, key: bytes, values: list[bytes]) -> list[tuple[int, int]]:
    """Write ``values`` to backup.commands as an outside client; their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        positions = []
        for value in values:
            sent = await producer.send_and_wait(
                BACKUP_COMMANDS.name, value, key=key, headers=[("origin", b"outside")]
            )
            positions.append((sent.partition, sent.offset))
        return positions
    finally:
        await producer.stop()


async def parked_records(
    bootstrap: str, positions: list[tuple[int, int]], seconds: float = 120
) -> dict[tuple[int, int], Any]:
    """The records on backup.commands.dlq parked from ``positions``, once all are there."""
    consumer = AIOKafkaConsumer(
        BACKUP_COMMANDS.dlq_name, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[tuple[int, int], Any] = {}
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while len(found) < len(positions):
            assert asyncio.get_running_loop().time() < deadline, f"parked so far: {found}"
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    origin = (
                        int(headers.get("dlq.original-partition", b"-1")),
                        int(headers.get("dlq.original-offset", b"-1")),
                    )
                    if origin in positions:
                        found[origin] = record
        return found
    finally:
        await consumer.stop()


def test_undecodable_and_invalid_commands_are_parked_and_later_work_completes(
    api: Api, source_database: str, kafka_bootstrap: str, stack: Stack
) -> None:
    runner_metrics = f"{stack.service('backup-runner').url}/metrics"
    counted_before = {
        reason: dead_letters_counted(httpx.get(runner_metrics).text, reason)
        for reason in ("undecodable", "invalid_payload")
    }
    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    valid = Envelope.wrap(
        command,
        producer="e2e",
        organization_id=api.org_id,
        environment_id=command.environment_id,
    )
    not_an_envelope = b'{"this is": "not an envelope", "secret": "s3cr3t-e2e"}'
    invalid = valid.model_copy(
        update={
            "message_id": uuid.uuid4(),
            "payload": {**valid.payload, "backupId": "not-a-uuid", "type": "s3cr3t-e2e"},
        }
    ).to_bytes()
    # Same key, so the same partition: the valid command waits behind the bad ones.
    positions = asyncio.run(
        publish(kafka_bootstrap, valid.key, [not_an_envelope, invalid, valid.to_bytes()])
    )
    assert len({partition for partition, _ in positions}) == 1

    backup = api.wait_for(str(command.backup_id), missing_ok=True, timeout=120)
    assert backup["status"] == "completed", backup

    parked = asyncio.run(parked_records(kafka_bootstrap, positions[:2]))
    for (partition, offset), value, reason in (
        (positions[0], not_an_envelope, b"undecodable"),
        (positions[1], invalid, b"invalid_payload"),
    ):
        record = parked[(partition, offset)]
        assert record.key == valid.key
        assert record.value == value
        headers = dict(record.headers)
        assert headers["origin"] == b"outside"
        assert headers["dlq.reason"] == reason
        assert headers["dlq.service"] == b"backup-runner"
        assert headers["dlq.group"] == b"backup-runner"
        assert headers["dlq.attempts"] == b"1"
        assert headers["dlq.original-topic"] == BACKUP_COMMANDS.name.encode()
        assert headers["dlq.original-partition"] == str(partition).encode()
        assert headers["dlq.original-offset"] == str(offset).encode()
        assert headers["dlq.error"]
        assert b"s3cr3t-e2e" not in headers["dlq.error"], "the error never echoes the payload"
    invalid_error = dict(parked[positions[1]].headers)["dlq.error"].decode()
    assert "type" in invalid_error
    assert "backupId" in invalid_error
    metrics = httpx.get(runner_metrics).text
    for reason, before in counted_before.items():
        assert dead_letters_counted(metrics, reason) == before + 1, reason
