"""Integration tests: the devstack fixtures give a working PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tidemark_devstack import cli
from tidemark_devstack.kafka import LocalKafka, metadata_broker_count
from tidemark_devstack.postgres import LocalPostgres, drop_database_at
from tidemark_devstack.pytest_plugin import BrokerControl

pytestmark = pytest.mark.integration


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host, int(port)


def test_postgres_answers(database_url: str) -> None:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_local_postgres_start_is_idempotent(local_postgres: LocalPostgres | None) -> None:
    if local_postgres is None:
        pytest.skip("PostgreSQL is external or containerized")
    first = local_postgres.start()
    second = LocalPostgres(local_postgres.base_dir).start()
    assert first == second
    assert urlsplit(first).hostname == "127.0.0.1"
    assert local_postgres.running_url() == first


def test_local_postgres_create_database_with_owner(local_postgres: LocalPostgres | None) -> None:
    if local_postgres is None:
        pytest.skip("PostgreSQL is external or containerized")
    name = f"owned_{uuid.uuid4().hex[:8]}"
    url = local_postgres.create_database(name, owner_password="s3cret-pw")
    assert local_postgres.create_database(name, owner_password="s3cret-pw") == url
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_database(), current_user").fetchone()
    assert row == (name, name)
    drop_database_at(local_postgres.start(), name, drop_role=True)


def test_create_database_gives_usable_database(create_database: Callable[..., str]) -> None:
    url = create_database("src")
    database = urlsplit(url).path.lstrip("/")
    assert database.startswith("src_")
    assert len(database) == len("src_") + 8
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
        assert conn.execute("SELECT current_database()").fetchone() == (database,)
    other = create_database("src")
    assert other != url


def test_create_database_with_owner_role(create_database: Callable[..., str]) -> None:
    url = create_database("owned", owner_password="pw-for-owner")
    parts = urlsplit(url)
    assert parts.username == parts.path.lstrip("/")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user = current_database()").fetchone() == (True,)


def test_kafka_port_accepts_tcp(kafka_bootstrap: str) -> None:
    host, port = _host_port(kafka_bootstrap)
    with socket.create_connection((host, port), timeout=5):
        pass
    assert metadata_broker_count(host, port) >= 1


async def _produce_and_consume(bootstrap: str, payload: bytes) -> None:
    topic = f"devstack-{uuid.uuid4().hex[:12]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        # The first send auto-creates the topic (auto.create.topics.enable=true).
        metadata = await producer.send_and_wait(topic, payload, key=b"k")
        assert metadata.offset == 0
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"devstack-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=60)
        assert message.value == payload
        assert message.key == b"k"
        await consumer.commit()
    finally:
        await consumer.stop()


async def test_kafka_idempotent_produce_and_consume(kafka_bootstrap: str) -> None:
    await _produce_and_consume(kafka_bootstrap, b"hello tidemark")


async def test_kafka_broker_outage_and_restart(
    kafka_bootstrap: str, kafka_broker_control: BrokerControl | None
) -> None:
    if kafka_broker_control is None:
        pytest.skip("Kafka is external or containerized")
    host, port = _host_port(kafka_bootstrap)
    await asyncio.to_thread(kafka_broker_control.stop)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()
    assert await asyncio.to_thread(kafka_broker_control.start) == kafka_bootstrap
    await _produce_and_consume(kafka_bootstrap, b"after restart")


def test_local_kafka_start_reuses_running_broker(
    kafka_bootstrap: str, kafka_broker_control: BrokerControl | None
) -> None:
    if kafka_broker_control is None:
        pytest.skip("Kafka is external or containerized")
    again = LocalKafka(kafka_broker_control.kafka.base_dir)
    assert again.is_running()
    assert again.start() == kafka_bootstrap
    assert again.running_bootstrap() == kafka_bootstrap


def test_cli_start_is_skipped_when_env_is_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "example.invalid:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@example.invalid/db")
    assert cli.main(["kafka", "start"]) == 0
    assert cli.main(["postgres", "start"]) == 0
    out = capsys.readouterr()
    assert "KAFKA_BOOTSTRAP_SERVERS=example.invalid:9092" in out.out
    assert "DATABASE_URL=postgresql://u:p@example.invalid/db" in out.out
    assert "already set" in out.err
