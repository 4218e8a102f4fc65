"""End-to-end fixtures: every service running on real Kafka and PostgreSQL, driven over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_contracts.services import SERVICES
from tidemark_devstack.e2e import (
    JWT_SECRET,
    SOURCE_PASSWORD,
    SOURCE_SCHEMA,
    Api,
    make_token,
)
from tidemark_devstack.paths import free_port
from tidemark_devstack.stack import Stack

E2E_LEASE_SECONDS = 3.0
E2E_WAL_STALL_SECONDS = 10.0
E2E_WEBHOOK_RETRY_BASE_SECONDS = 0.5
E2E_WEBHOOK_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="session")
def stack(
    database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("service-logs")
    services = Stack(
        destination_root=tmp_path_factory.mktemp("destinations"),
        files_root=tmp_path_factory.mktemp("files"),
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        jwt_secret=JWT_SECRET,
        log_dir=log_dir,
        gateway_port=free_port(),
        extra_env={
            **{f"{s.settings_prefix}HEARTBEAT_INTERVAL_SECONDS": "1" for s in SERVICES},
            "TIDEMARK_BACKUP_RUNNER_PROGRESS_INTERVAL_SECONDS": "0.2",
            # Short leases, so a runner's death is noticed in seconds rather than 30.
            "TIDEMARK_BACKUP_RUNNER_LEASE_SECONDS": str(E2E_LEASE_SECONDS),
            "TIDEMARK_BACKUP_RUNNER_WORK_POLL_SECONDS": "0.5",
            # A destination that cannot be cleaned is given up on within seconds.
            "TIDEMARK_BACKUP_RUNNER_CLEANUP_MAX_ATTEMPTS": "3",
            "TIDEMARK_BACKUP_RUNNER_CLEANUP_FIRST_DELAY_SECONDS": "0.2",
            "TIDEMARK_BACKUP_RUNNER_CLEANUP_MAX_DELAY_SECONDS": "1",
            # WAL archiving in seconds: segments switched after 2 s, stalled after 10 s,
            # receivers taken over 3 s after their runner died; spools of this stack only.
            "TIDEMARK_BACKUP_RUNNER_STATE_DIR": str(tmp_path_factory.mktemp("runner-state")),
            "TIDEMARK_BACKUP_RUNNER_WAL_SWITCH_SECONDS": "2",
            "TIDEMARK_BACKUP_RUNNER_WAL_STALL_SECONDS": str(E2E_WAL_STALL_SECONDS),
            "TIDEMARK_BACKUP_RUNNER_WAL_LEASE_SECONDS": str(E2E_LEASE_SECONDS),
            "TIDEMARK_BACKUP_RUNNER_WAL_POLL_SECONDS": "0.5",
            "TIDEMARK_BACKUP_RUNNER_WAL_CHECK_SECONDS": "0.5",
            # The restore-runner's leases as short: a killed runner's restore is taken
            # over (and recovered) within seconds.
            "TIDEMARK_RESTORE_RUNNER_LEASE_SECONDS": str(E2E_LEASE_SECONDS),
            "TIDEMARK_RESTORE_RUNNER_WORK_POLL_SECONDS": "0.5",
            "TIDEMARK_RESTORE_RUNNER_PROGRESS_INTERVAL_SECONDS": "0.2",
            # Replay slowed a little, so a kill during it can be aimed (test_pitr).
            "TIDEMARK_RESTORE_RUNNER_REPLAY_SEGMENT_DELAY_SECONDS": "0.5",
            # Webhooks to the tests' receivers on loopback over plain http, retried within
            # seconds (a 500 is followed by a retry about half a second later) for a minute.
            # An attempt waits 30 s for an answer: a receiver that hangs would hold up any
            # delivery queued behind it by that long, which test_alerts would notice.
            "TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS": "127.0.0.1,localhost",
            "TIDEMARK_ALERTS_WEBHOOK_RETRY_BASE_SECONDS": str(E2E_WEBHOOK_RETRY_BASE_SECONDS),
            "TIDEMARK_ALERTS_WEBHOOK_RETRY_MAX_DELAY_SECONDS": "2",
            "TIDEMARK_ALERTS_WEBHOOK_RETRY_FOR_SECONDS": "60",
            "TIDEMARK_ALERTS_WEBHOOK_TIMEOUT_SECONDS": str(E2E_WEBHOOK_TIMEOUT_SECONDS),
        },
    )
    services.start()
    try:
        services.wait_ready(timeout=120)
        yield services
    finally:
        services.stop()


@pytest.fixture
def api_for(stack: Stack) -> Iterator[Callable[..., Api]]:
    clients: list[httpx.Client] = []

    def make(org_id: uuid.UUID | None = None, **token_claims: Any) -> Api:
        org = org_id or uuid.uuid4()
        client = httpx.Client(
            base_url=stack.gateway_url,
            headers={"Authorization": f"Bearer {make_token(org, **token_claims)}"},
            timeout=30.0,
        )
        clients.append(client)
        return Api(client, org, stack.destination_root)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(api_for: Callable[..., Api]) -> Api:
    return api_for()


@pytest.fixture
def anonymous(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def source_database(create_database: Callable[..., str]) -> str:
    """A source database owned by its own login role, with two tables of data."""
    url = create_database("src", owner_password=SOURCE_PASSWORD)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SOURCE_SCHEMA)
    return url


INSTANCES_PER_SERVICE = 2


@pytest.fixture(scope="module")
def two_of_everything(stack: Stack) -> Iterator[Stack]:
    """The session's stack with a second instance of every service, for this module.

    The same stack rather than a second one: a second stack on the same Kafka would join
    the same consumer groups, and its instances could not be told from these.
    """
    for extra in range(1, INSTANCES_PER_SERVICE):
        stack.start(instance=extra)
    stack.wait_ready(timeout=180)
    yield stack
    # Back to one instance of each, as the modules that follow expect.
    for extra in range(1, INSTANCES_PER_SERVICE):
        stack.stop(instance=extra)
        for spec in SERVICES:
            stack.services.pop((spec.name, extra), None)
    for name, _ in stack.dead():
        stack.start(only=name, instance=0)
    stack.wait_ready(timeout=120)


TARGET_ROWS = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT g, 'old' || g || '@example.com' FROM generate_series(1, 7) g;
"""


@pytest.fixture
def target_database(create_database: Callable[..., str], database_url: str) -> str:
    """Another environment's database, a restore's target: its own role (allowed to create
    databases, as a restore needs) and rows of its own (``TARGET_ROWS``)."""
    url = create_database("tgt", owner_password=SOURCE_PASSWORD)
    role = str(conninfo_to_dict(url)["user"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role)))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TARGET_ROWS)
    return url
