"""One request, one id: a command's correlation id is on everything the backup causes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from tidemark_contracts import BACKUP_EVENTS, BACKUP_PROGRESS, Envelope, Topic
from tidemark_devstack.e2e import Api, send_backup_command
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


async def read_to_end(bootstrap: str, topic: Topic) -> list[Envelope]:
    """Every envelope on ``topic``, from the beginning to the end offsets of now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    envelopes: list[Envelope] = []
    try:
        partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                envelopes += [Envelope.from_bytes(r.value) for r in records if r.value]
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return envelopes


def log_lines_about(log: Path, backup_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue  # not one of ours (a library printing plain text)
        if isinstance(line, dict) and backup_id in raw:
            lines.append(line)
    return lines


def test_a_commands_correlation_id_is_on_every_event_progress_tick_and_log_line(
    api: Api, source_database: str, kafka_bootstrap: str, stack: Stack
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    correlation_id = uuid.uuid4()
    send_backup_command(kafka_bootstrap, command, correlation_id)
    backup_id = str(command.backup_id)
    assert api.wait_for(backup_id, missing_ok=True)["status"] == "completed"

    events = [
        e
        for e in asyncio.run(read_to_end(kafka_bootstrap, BACKUP_EVENTS))
        if e.aggregate_id == command.backup_id
    ]
    assert [e.message_type for e in events] == [
        "backup.BackupRequested",
        "backup.BackupStarted",
        "backup.BackupUploaded",
        "backup.BackupCompleted",
    ]
    assert {e.correlation_id for e in events} == {correlation_id}

    ticks = [
        e
        for e in asyncio.run(read_to_end(kafka_bootstrap, BACKUP_PROGRESS))
        if e.payload.get("backupId") == backup_id
    ]
    assert ticks, "no progress published"
    assert ticks[-1].payload["status"] == "completed"
    assert {t.correlation_id for t in ticks} == {correlation_id}

    log = stack.log_dir / "backup-runner.log"
    deadline = time.monotonic() + 10
    while not any(
        line.get("event") == "backup_completed" for line in log_lines_about(log, backup_id)
    ):
        assert time.monotonic() < deadline, "the runner never logged the backup's completion"
        time.sleep(0.2)
    about = log_lines_about(log, backup_id)
    assert {line.get("correlation_id") for line in about} == {str(correlation_id)}, about
