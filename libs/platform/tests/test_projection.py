"""The platform's projection runner on a real PostgreSQL: positions, version guards, gaps,
rebuilds and comparisons, with the catalog view as the projection under test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope
from tidemark_contracts.backup import DatabaseTarget
from tidemark_contracts.catalog import (
    DestinationRegistered,
    DestinationRemoved,
    EnvironmentRegistered,
    ProjectRegistered,
)
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import (
    OutOfOrder,
    Pool,
    ProjectionRunner,
    compare,
    rebuild,
)

pytestmark = pytest.mark.integration

ORG = uuid.uuid4()
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    url = create_database("proj")
    pool = connection_pool(url)
    await pool.open()
    yield pool
    await pool.close()


async def runner_in(pool: Pool, schema: str) -> ProjectionRunner:
    runner = ProjectionRunner(pool, schema, CatalogView())
    async with pool.connection() as conn:
        await runner.migrate(conn)
    return runner


def envelope(
    message: ProjectRegistered | EnvironmentRegistered | DestinationRegistered | DestinationRemoved,
    aggregate_id: uuid.UUID,
    version: int,
) -> Envelope:
    return Envelope.wrap(
        message,
        producer="test",
        organization_id=ORG,
        environment_id=None,
        aggregate_id=aggregate_id,
        aggregate_version=version,
    )


def project(project_id: uuid.UUID, name: str) -> Envelope:
    return envelope(
        ProjectRegistered(project_id=project_id, organization_id=ORG, name=name, registered_at=T0),
        project_id,
        1,
    )


def destination_events(destination_id: uuid.UUID) -> list[Envelope]:
    registered = DestinationRegistered(
        destination_id=destination_id,
        organization_id=ORG,
        name="disk",
        type="local",
        config={"kind": "local", "path": "backups"},
        is_default=True,
        registered_at=T0,
    )
    removed = DestinationRemoved(destination_id=destination_id, organization_id=ORG, removed_at=T0)
    return [envelope(registered, destination_id, 1), envelope(removed, destination_id, 2)]


async def rows(pool: Pool, schema: str, table: str) -> list[dict[str, object]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY created_at, id")
        return list(await cursor.fetchall())


async def test_a_redelivered_position_changes_nothing(pool: Pool) -> None:
    runner = await runner_in(pool, "view_a")
    first = uuid.uuid4()
    await runner.apply_at(project(first, "alpha"), Tracking("catalog.events:0", 10))
    # The same offset again, now carrying another event: the position says "done".
    await runner.apply_at(project(uuid.uuid4(), "beta"), Tracking("catalog.events:0", 10))
    assert [r["id"] for r in await rows(pool, "view_a", "projects")] == [first]


async def test_a_republished_event_changes_nothing(pool: Pool) -> None:
    runner = await runner_in(pool, "view_b")
    destination_id = uuid.uuid4()
    registered, removed = destination_events(destination_id)
    await runner.apply_at(registered, Tracking("catalog.events:1", 1))
    await runner.apply_at(removed, Tracking("catalog.events:1", 2))
    # A relay re-publishes its tail: the same events at new offsets.
    await runner.apply_at(registered, Tracking("catalog.events:1", 3))
    assert await rows(pool, "view_b", "destinations") == []


async def test_a_gap_in_versions_is_refused_until_it_is_filled(pool: Pool) -> None:
    runner = await runner_in(pool, "view_c")
    destination_id = uuid.uuid4()
    registered, removed = destination_events(destination_id)
    with pytest.raises(OutOfOrder):
        await runner.apply_at(removed, Tracking("catalog.events:2", 1))
    # Nothing of the refused event stayed, not even its position: it will be retried.
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) AS n FROM view_c.projection_positions")
        assert (await cursor.fetchone())["n"] == 0  # type: ignore[index]
    await runner.apply_at(registered, Tracking("catalog.events:2", 2))
    assert len(await rows(pool, "view_c", "destinations")) == 1
    await runner.apply_at(removed, Tracking("catalog.events:2", 3))
    assert await rows(pool, "view_c", "destinations") == []


async def test_an_event_applied_ahead_of_kafka_is_not_applied_again(pool: Pool) -> None:
    runner = await runner_in(pool, "view_d")
    environment_id = uuid.uuid4()
    registered = envelope(
        EnvironmentRegistered(
            environment_id=environment_id,
            organization_id=ORG,
            project_id=uuid.uuid4(),
            name="production",
            database=DatabaseTarget(host="db", port=5432, dbname="shop", user="app"),
            registered_at=T0,
        ),
        environment_id,
        1,
    )
    assert await runner.apply_now(registered) is True
    assert await runner.apply_now(registered) is False
    await runner.apply_at(registered, Tracking("catalog.events:3", 1))
    (row,) = await rows(pool, "view_d", "environments")
    assert row["database"] == {
        "host": "db",
        "port": 5432,
        "dbname": "shop",
        "user": "app",
        "passwordRef": None,
    }


async def test_a_rebuild_equals_the_live_view_and_finds_a_row_altered_by_hand(
    pool: Pool,
) -> None:
    runner = await runner_in(pool, "live")
    history = [project(uuid.uuid4(), f"p{i}") for i in range(5)]
    history += destination_events(uuid.uuid4())
    for offset, event in enumerate(history):
        await runner.apply_at(event, Tracking("catalog.events:0", offset + 1))
    async with pool.connection() as conn:
        assert await rebuild(conn, CatalogView(), "rebuilt", history) == len(history)
        assert await compare(conn, CatalogView(), "live", "rebuilt") == []
        await conn.execute("UPDATE live.projects SET name = 'tampered' WHERE name = 'p3'")
        differences = await compare(conn, CatalogView(), "live", "rebuilt")
    assert sorted((d.table, d.side, d.row["name"]) for d in differences) == [
        ("projects", "live", "tampered"),
        ("projects", "rebuilt", "p3"),
    ]
