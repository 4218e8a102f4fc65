"""`tidemark dlq list | redrive` on real Kafka: a record parked the way the relay parks one
(original key, value and headers plus the ``dlq.*`` headers) is listed and re-driven once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from tidemark_contracts import Topic
from tidemark_devstack.e2e import topic_records
from tidemark_platform import dead_letters
from tidemark_platform.kafka import ensure_topics

pytestmark = pytest.mark.integration

SECRET_VALUE = b'{"password": "hunter2-in-the-value"}'


@dataclass(frozen=True)
class Parked:
    topic: str
    dlq: str
    key: bytes


def cli(kafka: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run(
        [sys.executable, "-m", "tidemark_cli", *args],
        env={
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "TIDEMARK_STATE_DIR": "/nonexistent",
            "COLUMNS": "250",  # a table row on one line
        },
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("tidemark: ")
    return line


async def park(kafka: str, topic: str, key: bytes, *, value_omitted: bool = False) -> None:
    """Put a record on ``topic``'s dead-letter topic as the relay does when Kafka refuses it."""
    extra = {dead_letters.RELAY: "test", dead_letters.RELAY_POSITION: "7"}
    if value_omitted:
        extra[dead_letters.VALUE_OMITTED] = "2000000"
    headers = dead_letters.dead_letter_headers(
        [("message-type", b"ServiceHeartbeat")],
        reason=dead_letters.Reason.REFUSED_BY_KAFKA,
        error="MessageSizeTooLargeError: too large",
        service="cli-test",
        attempts=1,
        original_topic=topic,
        extra=extra,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        value = b"" if value_omitted else SECRET_VALUE
        await producer.send_and_wait(dead_letters.dlq_name(topic), value, key=key, headers=headers)
    finally:
        await producer.stop()


@pytest.fixture
async def parked(kafka_bootstrap: str) -> Parked:
    topic = Topic(f"test.cli-dlq.{uuid.uuid4().hex[:8]}", "cli dlq test", (), partitions=1)
    await ensure_topics(kafka_bootstrap, [topic])  # and its .dlq, with one partition
    key = str(uuid.uuid4()).encode()
    await park(kafka_bootstrap, topic.name, key)
    return Parked(topic.name, topic.dlq_name, key)


# Eight runs of the CLI: on a loaded machine each may take a minute just to start.
@pytest.mark.timeout(900)
async def test_a_parked_record_is_listed_without_its_value_then_redriven_once(
    kafka_bootstrap: str, parked: Parked
) -> None:
    listed = cli(kafka_bootstrap, "dlq", "list", "--topic", parked.topic, "--json")
    assert listed.returncode == 0, listed.stderr
    [record] = json.loads(listed.stdout)
    assert record["dlqTopic"] == parked.dlq
    assert record["offset"] == 0
    assert record["redriven"] is False
    assert record["originalTopic"] == parked.topic
    assert record["reason"] == "refused_by_kafka"
    assert record["service"] == "cli-test"
    assert record["relayPosition"] == "7"
    assert record["key"] == parked.key.decode()
    assert record["valueBytes"] == len(SECRET_VALUE)
    assert "hunter2" not in listed.stdout

    # The .dlq name lists the same; the table names it too, never the value.
    assert json.loads(cli(kafka_bootstrap, "dlq", "list", "--topic", parked.dlq, "--json").stdout)
    table = cli(kafka_bootstrap, "dlq", "list", "--topic", parked.topic)
    assert table.returncode == 0, table.stderr
    assert "1 parked record(s)" in table.stdout
    assert "refused_by_kafka" in table.stdout
    assert "hunter2" not in table.stdout

    redriven = cli(kafka_bootstrap, "dlq", "redrive", parked.topic, "--json")
    assert redriven.returncode == 0, redriven.stderr
    assert json.loads(redriven.stdout) == {
        "dlqTopic": parked.dlq,
        "redriven": 1,
        "records": [{"offset": 0, "originalTopic": parked.topic}],
    }
    [back] = await topic_records(kafka_bootstrap, parked.topic)
    assert back.key == parked.key
    assert back.value == SECRET_VALUE
    assert list(back.headers) == [("message-type", b"ServiceHeartbeat")]  # no dlq.* headers

    [after] = json.loads(
        cli(kafka_bootstrap, "dlq", "list", "--topic", parked.topic, "--json").stdout
    )
    assert after["redriven"] is True
    again = cli(kafka_bootstrap, "dlq", "redrive", parked.topic)
    assert again.returncode == 0, again.stderr
    assert f"0 record(s) re-driven from {parked.dlq}" in again.stdout
    assert len(await topic_records(kafka_bootstrap, parked.topic)) == 1


@pytest.mark.timeout(600)
async def test_redrive_by_offset_takes_only_that_record(
    kafka_bootstrap: str, parked: Parked
) -> None:
    second_key = str(uuid.uuid4()).encode()
    await park(kafka_bootstrap, parked.topic, second_key)
    result = cli(kafka_bootstrap, "dlq", "redrive", parked.topic, "--offset", "1")
    assert result.returncode == 0, result.stderr
    assert f"1 record(s) re-driven from {parked.dlq}" in result.stdout
    assert f"re-drove {parked.dlq} offset 1 to {parked.topic}" in result.stderr
    [back] = await topic_records(kafka_bootstrap, parked.topic)
    assert back.key == second_key
    states = json.loads(
        cli(kafka_bootstrap, "dlq", "list", "--topic", parked.topic, "--json").stdout
    )
    assert [(s["offset"], s["redriven"]) for s in states] == [(0, False), (1, True)]


async def test_an_unknown_offset_is_one_line_and_redrives_nothing(
    kafka_bootstrap: str, parked: Parked
) -> None:
    line = one_line_error(cli(kafka_bootstrap, "dlq", "redrive", parked.topic, "--offset", "5"))
    assert line == f"tidemark: {parked.dlq} has no record at offset(s) [5]"
    assert await topic_records(kafka_bootstrap, parked.topic) == []


async def test_a_record_parked_without_its_value_cannot_be_redriven(
    kafka_bootstrap: str, parked: Parked
) -> None:
    await park(kafka_bootstrap, parked.topic, b"k", value_omitted=True)
    line = one_line_error(cli(kafka_bootstrap, "dlq", "redrive", parked.topic, "--offset", "1"))
    assert "offset 1 was parked without its value" in line


def test_an_unknown_topic_is_refused_without_repeating_its_name(kafka_bootstrap: str) -> None:
    name = f"no-such-{uuid.uuid4().hex[:8]}"
    for args in (("list", "--topic", name), ("redrive", name)):
        line = one_line_error(cli(kafka_bootstrap, "dlq", *args))
        assert line.startswith("tidemark: no such dead-letter topic on Kafka (there are: ")
        assert name not in line


def test_a_negative_offset_is_a_usage_error(kafka_bootstrap: str) -> None:
    line = one_line_error(cli(kafka_bootstrap, "dlq", "redrive", "x", "--offset", "-1"), code=2)
    assert line == "tidemark: --offset: offsets are 0 or more"


def test_without_kafka_it_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    result = subprocess.run(
        [sys.executable, "-m", "tidemark_cli", "dlq", "list"],
        env={**env, "TIDEMARK_STATE_DIR": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = one_line_error(result)
    assert line.startswith("tidemark: no Kafka: KAFKA_BOOTSTRAP_SERVERS is not set")


def test_an_unreachable_kafka_is_one_line() -> None:
    line = one_line_error(cli("127.0.0.1:1", "dlq", "list"))
    assert line.startswith("tidemark: Kafka: ")
