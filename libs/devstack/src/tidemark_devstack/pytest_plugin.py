"""Pytest fixtures giving tests a real PostgreSQL and Kafka: given, containerized, or local."""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tidemark_devstack.kafka import LocalKafka
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import LocalPostgres, create_database_at, drop_database_at

KEEP_ENV = "TIDEMARK_KEEP_TEST_INFRA"
# Set to 1 to use the local servers even where a Docker engine answers.
NO_DOCKER_ENV = "TIDEMARK_NO_DOCKER"
POSTGRES_IMAGE = "postgres:15"


def _keep() -> bool:
    return os.environ.get(KEEP_ENV, "") == "1"


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers; without one the fixtures fall back to local servers."""
    if os.environ.get(NO_DOCKER_ENV, "") == "1":
        return False
    try:
        import docker

        client: Any = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        # DockerException without a daemon, but also missing sockets, permissions, or
        # the docker package itself: any of them means "no Docker" here.
        return False


@dataclass
class _PostgresSession:
    url: str
    local: LocalPostgres | None


@dataclass
class _KafkaSession:
    bootstrap: str
    local: LocalKafka | None


def test_state_dir() -> Path:
    """Where this test session keeps its local servers: ``<state>/test``, and under it a
    directory per pytest-xdist worker (``<state>/test/gw0``...), so that workers running at
    once each have a Kafka and a PostgreSQL of their own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return state_dir() / "test" / worker if worker else state_dir() / "test"


@pytest.fixture(scope="session")
def _tidemark_postgres() -> Iterator[_PostgresSession]:
    preset = os.environ.get("DATABASE_URL")
    if preset:
        yield _PostgresSession(preset, None)
        return
    if docker_available():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield _PostgresSession(container.get_connection_url(), None)
        return
    local = LocalPostgres(test_state_dir() / "postgres")
    # Another test session may be using the same local cluster: stop only what we started.
    already_running = local.is_running()
    url = local.start()
    try:
        yield _PostgresSession(url, local)
    finally:
        if not _keep() and not already_running:
            local.stop()


@pytest.fixture(scope="session")
def database_url(_tidemark_postgres: _PostgresSession) -> str:
    """A superuser PostgreSQL URL: $DATABASE_URL, a container, or the local test cluster."""
    return _tidemark_postgres.url


@pytest.fixture(scope="session")
def local_postgres(_tidemark_postgres: _PostgresSession) -> LocalPostgres | None:
    """The local test cluster behind ``database_url``, or None when it is external."""
    return _tidemark_postgres.local


@pytest.fixture(scope="session")
def _tidemark_kafka() -> Iterator[_KafkaSession]:
    preset = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if preset:
        yield _KafkaSession(preset, None)
        return
    if docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield _KafkaSession(container.get_bootstrap_server(), None)
        return
    local = LocalKafka(test_state_dir() / "kafka")
    already_running = local.is_running()
    bootstrap = local.start()
    try:
        yield _KafkaSession(bootstrap, local)
    finally:
        if not _keep() and not already_running:
            local.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_tidemark_kafka: _KafkaSession) -> str:
    """Kafka bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS, a container, or the local broker."""
    return _tidemark_kafka.bootstrap


@dataclass
class BrokerControl:
    """Stops and restarts the local test broker, to test outages; same address after start."""

    kafka: LocalKafka
    stopped: bool = field(default=False)

    def stop(self) -> None:
        self.stopped = True
        self.kafka.stop()

    def start(self) -> str:
        bootstrap = self.kafka.start()
        self.stopped = False
        return bootstrap


@pytest.fixture
def kafka_broker_control(_tidemark_kafka: _KafkaSession) -> Iterator[BrokerControl | None]:
    """Control of the local broker, or None when Kafka is external or containerized.

    The broker is started again after the test if the test left it stopped, so one outage
    test does not break the rest of the session.
    """
    if _tidemark_kafka.local is None:
        yield None
        return
    control = BrokerControl(_tidemark_kafka.local)
    try:
        yield control
    finally:
        if control.stopped:
            control.start()


@pytest.fixture
def create_database(database_url: str) -> Iterator[Callable[..., str]]:
    """A function making a fresh database ``<prefix>_<8 hex>`` and returning its URL.

    ``create_database(prefix="src", owner_password=None)``: with a password the database
    belongs to a login role of the same name. Everything it made is dropped after the test.
    """
    made: list[tuple[str, bool]] = []

    def make(prefix: str = "src", owner_password: str | None = None) -> str:
        name = f"{prefix}_{secrets.token_hex(4)}".lower()
        made.append((name, owner_password is not None))
        return create_database_at(database_url, name, owner_password)

    yield make
    for name, has_role in made:
        drop_database_at(database_url, name, drop_role=has_role)


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 HTTP endpoint for tests, with credentials it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """$TIDEMARK_TEST_S3_ENDPOINT (credentials in $TIDEMARK_TEST_S3_ACCESS_KEY and
    $TIDEMARK_TEST_S3_SECRET_KEY), else moto's standalone server on loopback, once per
    session."""
    from tidemark_devstack import s3

    preset = os.environ.get(s3.ENDPOINT_ENV)
    if preset:
        yield S3Endpoint(
            preset,
            os.environ.get(s3.ACCESS_KEY_ENV, ""),
            os.environ.get(s3.SECRET_KEY_ENV, ""),
            os.environ.get("AWS_REGION", s3.REGION),
        )
        return
    server = s3.MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    url = server.start()
    try:
        yield S3Endpoint(url, s3.MOTO_ACCESS_KEY, s3.MOTO_SECRET_KEY, s3.REGION)
    finally:
        server.stop()
