"""A consumer killed after its effect but before Kafka's offset commit repeats nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from tidemark_contracts import Envelope, Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.kafka import ensure_topics, make_broker

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("tracked_consumer_process.py")


async def publish_one(bootstrap: str, topic: str) -> None:
    await ensure_topics(bootstrap, [Topic(topic, "crash test", (), partitions=1)])
    broker = make_broker(bootstrap, "tracked-consumer-test-producer")
    await broker.start()
    try:
        beat = ServiceHeartbeat(
            service="test",
            instance_id=uuid.uuid4(),
            started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
            at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
            ready=True,
        )
        envelope = Envelope.wrap(
            beat, producer="test", organization_id=uuid.uuid4(), environment_id=uuid.uuid4()
        )
        await broker.publish(envelope.to_bytes(), topic, key=envelope.key)
    finally:
        await broker.stop()


def run_consumer(args: list[str], crash: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "1" if crash else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def effects(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.tracked_consumer_test_events").fetchone()
    assert row is not None
    return int(row[0])


def test_a_consumer_killed_between_effect_and_offset_commit_does_not_repeat_the_effect(
    kafka_bootstrap: str, database_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, group, schema = f"test.crash.{suffix}", f"crash-{suffix}", f"crash_{suffix}"
    asyncio.run(publish_one(kafka_bootstrap, topic))
    args = [kafka_bootstrap, database_url, schema, topic, group]

    first = run_consumer(args, crash=True)
    assert first.returncode == 17, first.stdout + first.stderr
    assert first.stdout.split() == ["recorded"]
    assert effects(database_url, schema) == 1

    # Kafka never saw the offset commit, so the message comes again: tracking skips it.
    second = run_consumer(args, crash=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.split() == ["skipped"]
    assert effects(database_url, schema) == 1

    # Handled (even as a skip) means acknowledged: a third consumer gets nothing.
    third = run_consumer(args, crash=False)
    assert third.returncode == 3, third.stdout + third.stderr
    assert third.stdout.split() == []
    assert effects(database_url, schema) == 1
