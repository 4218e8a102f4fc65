"""A rolling restart of every service, one instance at a time, while 50 backups are
requested: every backup ends completed, exactly once in the event store and the read
model, and the read models (backups, catalog, schedules) equal a rebuild from the event
stores."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.schedules import SchedulesView
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.main import SCHEMA as RUNNER_SCHEMA
from tidemark_contracts.services import SERVICES
from tidemark_devstack.e2e import Api
from tidemark_devstack.stack import Stack
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Difference, compare, rebuild, stored_envelopes
from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.main import EVENTSTORE_SCHEMA as SCHEDULER_SCHEMA

pytestmark = pytest.mark.integration

BACKUPS = 50
INSTANCES = 2  # as the two_of_everything fixture starts them
STEPS = [(spec.name, instance) for spec in SERVICES for instance in range(INSTANCES)]


def request_on_a_live_gateway(gateways: list[httpx.Client], env_id: str) -> str:
    """POST a backup to whichever gateway answers; a gateway being restarted refuses."""
    deadline = time.monotonic() + 60
    while True:
        for gateway in gateways:
            try:
                response = gateway.post(
                    f"/api/v1/environments/{env_id}/backups", json={"type": "db"}
                )
            except httpx.TransportError:
                continue
            if response.status_code == 202:
                backup_id: str = response.json()["id"]
                return backup_id
            assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "no gateway accepted the backup"
        time.sleep(0.2)


async def differences_from_a_rebuild(database_url: str) -> list[Difference]:
    pool = connection_pool(database_url)
    await pool.open()
    runner_store = BackupRunnerApplication.on_postgres(database_url, RUNNER_SCHEMA)
    catalog_store = CatalogApplication.on_postgres(database_url, CATALOG_SCHEMA)
    scheduler_store = SchedulerApplication.on_postgres(database_url, SCHEDULER_SCHEMA)
    try:
        async with pool.connection() as conn:
            await rebuild(
                conn,
                BackupsView(),
                "e2e_rebuilt_backups",
                stored_envelopes(runner_store, runner_store.to_envelope),
            )
            await rebuild(
                conn,
                CatalogView(),
                "e2e_rebuilt_catalog",
                stored_envelopes(catalog_store, catalog_store.to_envelope),
            )
            await rebuild(
                conn,
                SchedulesView(),
                "e2e_rebuilt_schedules",
                stored_envelopes(scheduler_store, scheduler_store.to_envelope),
            )
            return [
                *await compare(conn, BackupsView(), "gateway", "e2e_rebuilt_backups"),
                *await compare(conn, CatalogView(), "gateway", "e2e_rebuilt_catalog"),
                *await compare(conn, SchedulesView(), "gateway", "e2e_rebuilt_schedules"),
            ]
    finally:
        runner_store.close()
        catalog_store.close()
        scheduler_store.close()
        await pool.close()


# Ten restarts (five services, two instances each), every one waiting for the stack to
# be ready again (some 30 s on 2 cores, consumer groups rebalancing): longer than the
# suite's default per-test limit since the alerts service is the fifth.
@pytest.mark.timeout(900)
def test_a_rolling_restart_of_every_service_loses_and_doubles_nothing(
    two_of_everything: Stack,
    api_for: Callable[..., Api],
    source_database: str,
    database_url: str,
) -> None:
    stack = two_of_everything
    api = api_for()
    environment = api.environment(source_database)
    api.destination()
    gateways = [
        httpx.Client(base_url=g.url, headers=dict(api.client.headers), timeout=30.0)
        for g in stack.instances("api-gateway")
    ]
    assert len(gateways) == INSTANCES
    requested: list[str] = []
    per_step = BACKUPS // len(STEPS)
    try:
        for name, instance in STEPS:
            # SIGTERM, as a rolling restart sends it; backups are requested while this
            # instance is down, and the ones it was running must go on elsewhere.
            stack.stop(only=name, instance=instance)
            requested += [
                request_on_a_live_gateway(gateways, environment["id"]) for _ in range(per_step)
            ]
            stack.start(only=name, instance=instance)
            stack.wait_ready(timeout=180)
    finally:
        for gateway in gateways:
            gateway.close()
    assert len(requested) == len(set(requested)) == BACKUPS

    finished = [api.wait_for(backup_id, timeout=300) for backup_id in requested]
    assert [b["status"] for b in finished] == ["completed"] * BACKUPS, [
        (b["id"], b["status"], b["error"]) for b in finished if b["status"] != "completed"
    ]

    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT originator_id::text, topic FROM backup_runner.backup_runner_events "
            "WHERE originator_id::text = ANY(%s)",
            (requested,),
        ).fetchall()
        rows = conn.execute(
            "SELECT id::text, status FROM gateway.backups WHERE id::text = ANY(%s)", (requested,)
        ).fetchall()
    kinds = collections.Counter(
        (backup_id, topic.rsplit(".", 1)[-1]) for backup_id, topic in events
    )
    for backup_id in requested:
        assert kinds[backup_id, "Requested"] == 1, backup_id
        assert kinds[backup_id, "Completed"] == 1, backup_id
        assert kinds[backup_id, "Failed"] == 0, backup_id
    assert sorted(rows) == sorted((backup_id, "completed") for backup_id in requested)
    # One artifact per backup, each the size the backup reports.
    artifacts = {
        p.name.split(".", 1)[0]: p for p in api.organization_directory.rglob("*.pgdump.zst")
    }
    assert sorted(artifacts) == sorted(requested)
    assert not list(api.organization_directory.rglob(".*.partial"))
    for backup in finished:
        assert artifacts[backup["id"]].stat().st_size == backup["sizeBytes"]

    assert asyncio.run(differences_from_a_rebuild(database_url)) == []
