"""The catalog: registrations are events in the gateway's store, published on
``catalog.events`` for other services, and the read models equal a rebuild from the store."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication
from tidemark_contracts import CATALOG_EVENTS, Envelope
from tidemark_devstack.e2e import SOURCE_PASSWORD_REF, Api, topic_records
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import (
    Difference,
    ProjectionRunner,
    compare,
    rebuild,
    stored_envelopes,
)
from tidemark_scheduler.main import SCHEMA as SCHEDULER_SCHEMA

pytestmark = pytest.mark.integration


async def read_topic(bootstrap: str, topic: str) -> list[tuple[Envelope, Tracking]]:
    return [
        (Envelope.from_bytes(r.value), Tracking(f"{topic}:{r.partition}", r.offset + 1))
        for r in await topic_records(bootstrap, topic)
    ]


def catalog_events_of(bootstrap: str, organization_id: uuid.UUID) -> list[Envelope]:
    return [
        envelope
        for envelope, _ in asyncio.run(read_topic(bootstrap, CATALOG_EVENTS.name))
        if envelope.organization_id == organization_id
    ]


def wait_for_catalog_events(
    bootstrap: str, organization_id: uuid.UUID, count: int, timeout: float = 30.0
) -> list[Envelope]:
    deadline = time.monotonic() + timeout
    while True:
        events = catalog_events_of(bootstrap, organization_id)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.3)


def test_registrations_are_published_on_the_catalog_topic(
    api: Api, source_database: str, kafka_bootstrap: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    assert api.delete(f"/api/v1/destinations/{destination['id']}").status_code == 204

    events = wait_for_catalog_events(kafka_bootstrap, api.org_id, 4)
    by_type = {e.message_type: e for e in events}
    assert sorted(by_type) == [
        "catalog.DestinationRegistered",
        "catalog.DestinationRemoved",
        "catalog.EnvironmentRegistered",
        "catalog.ProjectRegistered",
    ]
    registered = by_type["catalog.EnvironmentRegistered"]
    assert registered.aggregate_id == uuid.UUID(environment["id"])
    assert registered.environment_id == uuid.UUID(environment["id"])
    assert registered.key == environment["id"].encode()
    assert registered.payload["database"]["passwordRef"] == SOURCE_PASSWORD_REF
    removed = by_type["catalog.DestinationRemoved"]
    assert removed.aggregate_id == uuid.UUID(destination["id"])
    assert removed.aggregate_version == 2
    assert len(events) == 4  # claims on names stay private to the gateway


def test_names_are_unique_per_scope_even_when_registered_at_once(api: Api) -> None:
    def register() -> int:
        return api.post("/api/v1/projects", json={"name": "contested"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(lambda _: register(), range(8)))
    assert statuses == [201] + [409] * 7
    listed = api.get("/api/v1/projects").json()["items"]
    assert [p["name"] for p in listed].count("contested") == 1


def test_a_removed_destinations_name_can_be_registered_again(api: Api) -> None:
    body = {"name": "reused", "type": "local", "config": {"path": "srv/a"}}
    first = api.post("/api/v1/destinations", json=body)
    assert first.status_code == 201, first.text
    assert api.post("/api/v1/destinations", json=body).status_code == 409
    assert api.delete(first.headers["location"]).status_code == 204
    second = api.post("/api/v1/destinations", json=body)
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first.json()["id"]
    assert api.delete(first.headers["location"]).status_code == 404


async def _views_match(database_url: str, bootstrap: str) -> None:
    pool = connection_pool(database_url)
    await pool.open()
    try:
        # Another service's view, kept from the topic alone.
        follower = ProjectionRunner(pool, "e2e_follower", CatalogView())
        async with pool.connection() as conn:
            await conn.execute("DROP SCHEMA IF EXISTS e2e_follower CASCADE")
            await follower.migrate(conn)
        for envelope, tracking in await read_topic(bootstrap, CATALOG_EVENTS.name):
            await follower.apply_at(envelope, tracking)
        # And a rebuild from the gateway's catalog event store.
        store = CatalogApplication.on_postgres(database_url, CATALOG_SCHEMA)
        try:
            events = list(stored_envelopes(store, store.to_envelope))
        finally:
            store.close()
        async with pool.connection() as conn:
            await rebuild(conn, CatalogView(), "e2e_rebuilt", events)
            assert await compare(conn, CatalogView(), "gateway", "e2e_rebuilt") == []
            assert await compare(conn, CatalogView(), "gateway", "e2e_follower") == []
    finally:
        await pool.close()


def test_another_service_following_the_topic_sees_what_the_gateway_serves(
    api: Api, source_database: str, database_url: str, kafka_bootstrap: str
) -> None:
    api.environment(source_database)
    api.destination()
    wait_for_catalog_events(kafka_bootstrap, api.org_id, 3)
    with psycopg.connect(database_url) as conn:
        live = conn.execute("SELECT count(*) FROM gateway.projects").fetchone()
    assert live is not None
    assert live[0] > 0
    asyncio.run(_views_match(database_url, kafka_bootstrap))


async def _scheduler_view_differences(database_url: str) -> list[Difference]:
    pool = connection_pool(database_url, min_size=1, max_size=2)
    await pool.open()
    try:
        async with pool.connection() as conn:
            return await compare(conn, CatalogView(), "gateway", SCHEDULER_SCHEMA)
    finally:
        await pool.close()


def test_the_scheduler_keeps_its_own_catalog_view_from_the_topic(
    api: Api, source_database: str, database_url: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    assert api.delete(f"/api/v1/destinations/{destination['id']}").status_code == 204
    deadline = time.monotonic() + 30
    while differences := asyncio.run(_scheduler_view_differences(database_url)):
        assert time.monotonic() < deadline, differences[:3]
        time.sleep(0.3)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT name FROM {SCHEDULER_SCHEMA}.environments WHERE id = %s",
            (environment["id"],),
        ).fetchone()
        removed = conn.execute(
            f"SELECT count(*) FROM {SCHEDULER_SCHEMA}.destinations WHERE id = %s",
            (destination["id"],),
        ).fetchone()
    assert row == ("production",)
    assert removed == (0,)
