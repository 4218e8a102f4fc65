"""The backup lists on a real PostgreSQL: totals summed from counts the projection keeps in
the transaction of each row change, pages along an index (EXPLAIN), deep offsets, and the
project list's environment name as the catalog has it now."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_api_gateway.projection import BackupsView, count_moves
from tidemark_api_gateway.queries import BackupList
from tidemark_api_gateway.queries import backup_page as found_page
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_contracts import Envelope, Message
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    DestinationRef,
)
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Pool, ProjectionRunner

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEST = uuid.uuid4()
CHECKSUM = "sha256:" + "a" * 64


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    pool = connection_pool(create_database("lists"))
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def view(pool: Pool) -> ProjectionRunner:
    backups = ProjectionRunner(pool, SCHEMA, BackupsView())
    async with pool.connection() as conn:
        await migrate(conn, ProjectionRunner(pool, SCHEMA, CatalogView()), backups)
    return backups


class Events:
    """One backup's events, versioned as the runner's event store numbers them, applied at
    consecutive Kafka positions of one partition."""

    offsets = iter(range(1, 1_000_000))

    def __init__(
        self,
        view: ProjectionRunner,
        org: uuid.UUID,
        project: uuid.UUID,
        env: uuid.UUID,
        backup_type: str = "db",
        at: datetime = T0,
    ) -> None:
        self.view, self.org, self.project, self.env = view, org, project, env
        self.backup_id, self.type, self.at, self.version = uuid.uuid4(), backup_type, at, 0

    def envelope(self, message: Message, version: int | None) -> Envelope:
        return Envelope.wrap(
            message,
            producer="test",
            organization_id=self.org,
            environment_id=self.env,
            aggregate_id=self.backup_id,
            aggregate_version=version,
        )

    def requested_message(self) -> BackupRequested:
        return BackupRequested(
            backup_id=self.backup_id,
            organization_id=self.org,
            project_id=self.project,
            environment_id=self.env,
            type=self.type,  # type: ignore[arg-type]
            trigger="manual",
            requested_by="someone",
            requested_at=self.at,
            destinations=[DestinationRef(destination_id=DEST, name="disk", type="local")],
        )

    async def pending_row(self) -> None:
        """What the gateway writes when it accepts the request: unversioned."""
        await self.view.apply_now(self.envelope(self.requested_message(), None))

    async def apply(self, message: Message) -> None:
        self.version += 1
        await self.view.apply_at(
            self.envelope(message, self.version), Tracking("backup.events:0", next(self.offsets))
        )

    async def requested(self) -> None:
        await self.apply(self.requested_message())

    async def started(self, attempt: int = 1) -> None:
        await self.apply(
            BackupStarted(
                backup_id=self.backup_id, environment_id=self.env, started_at=T0, attempt=attempt
            )
        )

    async def uploaded(self) -> None:
        await self.apply(
            BackupUploaded(
                backup_id=self.backup_id,
                environment_id=self.env,
                destination_id=DEST,
                location="x",
                size_bytes=1,
                uploaded_at=T0,
            )
        )

    async def completed(self) -> None:
        await self.apply(
            BackupCompleted(
                backup_id=self.backup_id,
                environment_id=self.env,
                size_bytes=1,
                checksum=CHECKSUM,
                compression="zstd",
                completed_at=T0,
                duration_ms=1,
            )
        )

    async def failed(self) -> None:
        await self.apply(
            BackupFailed(
                backup_id=self.backup_id, environment_id=self.env, error="boom", failed_at=T0
            )
        )


KEY = "organization_id, project_id, environment_id, status, type"


async def counts(pool: Pool) -> dict[tuple[Any, ...], int]:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT {KEY}, n FROM {SCHEMA}.backup_counts")
        return {tuple(r[c] for c in KEY.split(", ")): r["n"] for r in await cursor.fetchall()}


async def counted_rows(pool: Pool) -> dict[tuple[Any, ...], int]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT {KEY}, count(*) AS n FROM {SCHEMA}.backups GROUP BY {KEY}"
        )
        return {tuple(r[c] for c in KEY.split(", ")): r["n"] for r in await cursor.fetchall()}


async def by_status(pool: Pool, env: uuid.UUID) -> dict[str, int]:
    summed: dict[str, int] = {}
    for key, n in (await counts(pool)).items():
        if key[2] == env:
            summed[key[3]] = summed.get(key[3], 0) + n
    return summed


def test_a_status_change_moves_one_count_to_another_whatever_the_statuses() -> None:
    org, project, env = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    row = {"organization_id": org, "project_id": project, "environment_id": env, "type": "db"}
    completed, deleting = row | {"status": "completed"}, row | {"status": "deleting"}
    assert count_moves(None, completed) == [((org, project, env, "completed", "db"), 1)]
    assert count_moves(completed, completed | {"label": "renamed"}) == []
    # A status other parts of the system add later is counted like any other, and the keys
    # come in one order whichever way the backup moves (concurrent writers cannot deadlock).
    assert count_moves(completed, deleting) == [
        ((org, project, env, "completed", "db"), -1),
        ((org, project, env, "deleting", "db"), 1),
    ]
    assert count_moves(deleting, completed) == [
        ((org, project, env, "completed", "db"), 1),
        ((org, project, env, "deleting", "db"), -1),
    ]


async def test_counts_follow_every_status_transition(pool: Pool, view: ProjectionRunner) -> None:
    org, project, env = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ok, broken, retried = (Events(view, org, project, env) for _ in range(3))
    full = Events(view, org, project, env, backup_type="full")

    async def check(expected: dict[str, int]) -> None:
        assert await by_status(pool, env) == expected
        assert await counts(pool) == await counted_rows(pool)

    await ok.pending_row()
    await check({"pending": 1})
    await ok.requested()  # the runner's event for the gateway's pending row: still one
    await check({"pending": 1})
    await broken.requested()
    await full.requested()
    await check({"pending": 3})
    await ok.started()
    await check({"pending": 2, "running": 1})
    await ok.uploaded()
    await check({"pending": 2, "running": 1})
    await ok.completed()
    await check({"pending": 2, "completed": 1})
    await broken.started()
    await broken.failed()
    await check({"pending": 1, "completed": 1, "failed": 1})
    await retried.requested()
    await retried.started()
    await retried.started(attempt=2)  # running again: nothing moves
    await check({"pending": 1, "running": 1, "completed": 1, "failed": 1})
    await retried.completed()
    await full.started()
    await full.completed()
    await check({"completed": 3, "failed": 1})
    assert {k[3:]: n for k, n in (await counts(pool)).items()} == {
        ("completed", "db"): 2,
        ("completed", "full"): 1,
        ("failed", "db"): 1,
    }


async def test_a_redelivered_or_republished_event_is_counted_once(
    pool: Pool, view: ProjectionRunner
) -> None:
    org, project, env = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    backup = Events(view, org, project, env)
    await backup.requested()
    started = BackupStarted(backup_id=backup.backup_id, environment_id=env, started_at=T0)
    await view.apply_at(backup.envelope(started, 2), Tracking("backup.events:0", 900_001))
    # Kafka redelivers the same position; a relay re-publishes the event at a new one.
    await view.apply_at(backup.envelope(started, 2), Tracking("backup.events:0", 900_001))
    await view.apply_at(backup.envelope(started, 2), Tracking("backup.events:0", 900_002))
    assert await by_status(pool, env) == {"running": 1}


async def test_a_read_model_from_before_the_counts_gets_them_when_it_migrates(
    pool: Pool, view: ProjectionRunner
) -> None:
    org, project, env = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        await Events(view, org, project, env).requested()
    done = Events(view, org, project, env)
    await done.requested()
    await done.started()
    await done.completed()
    async with pool.connection() as conn:
        await conn.execute(f"DROP TABLE {SCHEMA}.backup_counts")
    await view.migrate(await pool.getconn())
    assert await by_status(pool, env) == {"pending": 3, "completed": 1}
    # Migrating again (every gateway start) counts nothing twice.
    async with pool.connection() as conn:
        await view.migrate(conn)
    assert await by_status(pool, env) == {"pending": 3, "completed": 1}


async def insert_backups(
    pool: Pool,
    org: uuid.UUID,
    project: uuid.UUID,
    env: uuid.UUID,
    n: int,
    status: str = "completed",
    backup_type: str = "db",
    at: datetime = T0,
) -> None:
    """Rows written straight into the table (with their counts), for volume: one created
    every second back from ``at``, and every two sharing a creation time (ties)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            f"INSERT INTO {SCHEMA}.backups (id, organization_id, project_id, environment_id, "
            "type, trigger, status, created_at) "
            "SELECT gen_random_uuid(), %s, %s, %s, %s, 'scheduled', %s, "
            "%s - make_interval(secs => i / 2) FROM generate_series(1, %s) i",
            (org, project, env, backup_type, status, at, n),
        )
        await BackupsView().count(conn, SCHEMA, [((org, project, env, status, backup_type), n)])


async def register_environment(pool: Pool, org: uuid.UUID, project: uuid.UUID, name: str) -> Any:
    env = uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.projects (id, organization_id, name, created_at) "
            "VALUES (%s, %s, 'p', %s) ON CONFLICT DO NOTHING",
            (project, org, T0),
        )
        await conn.execute(
            f"INSERT INTO {SCHEMA}.environments (id, organization_id, project_id, name, "
            "database, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (env, org, project, name, json.dumps({}), T0),
        )
    return env


async def test_totals_and_items_follow_the_filters(pool: Pool, view: ProjectionRunner) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    other = await register_environment(pool, org, project, "staging")
    await insert_backups(pool, org, project, env, 7, "completed", "db")
    await insert_backups(pool, org, project, env, 3, "failed", "db")
    await insert_backups(pool, org, project, env, 2, "completed", "full")
    await insert_backups(pool, org, project, other, 4, "completed", "db")
    running = Events(view, org, project, env, backup_type="full")
    await running.requested()
    await running.started()
    # Another organization's rows under the same ids are never counted.
    await insert_backups(pool, uuid.uuid4(), project, env, 5)

    async def listed(backups: BackupList) -> tuple[int, int, set[tuple[str, str]]]:
        rows, total = await backup_page(pool, backups, 100, 0)
        return total, len(rows), {(r["status"], r["type"]) for r in rows}

    assert await listed(BackupList(org, environment_id=env)) == (
        13,
        13,
        {("completed", "db"), ("failed", "db"), ("completed", "full"), ("running", "full")},
    )
    assert await listed(BackupList(org, environment_id=env, status="completed")) == (
        9,
        9,
        {("completed", "db"), ("completed", "full")},
    )
    assert await listed(BackupList(org, environment_id=env, backup_type="full")) == (
        3,
        3,
        {("completed", "full"), ("running", "full")},
    )
    assert await listed(
        BackupList(org, environment_id=env, status="completed", backup_type="db")
    ) == (7, 7, {("completed", "db")})
    assert await listed(BackupList(org, environment_id=env, status="deleted")) == (0, 0, set())
    assert (await listed(BackupList(org, project_id=project)))[:2] == (17, 17)
    assert (await listed(BackupList(org, project_id=project, status="failed")))[:2] == (3, 3)
    # Another organization's environment or project is not found, not an empty list.
    stranger = uuid.uuid4()
    assert await found_page(pool, BackupList(stranger, environment_id=env), 20, 0) is None
    assert await found_page(pool, BackupList(stranger, project_id=project), 20, 0) is None
    assert await found_page(pool, BackupList(org, environment_id=uuid.uuid4()), 20, 0) is None
    # A known environment without backups is an empty list with total 0.
    empty = await register_environment(pool, org, project, "empty")
    assert await found_page(pool, BackupList(org, environment_id=empty), 20, 0) == ([], 0)
    # A short page still carries the whole list's total.
    rows, total = await backup_page(pool, BackupList(org, project_id=project), 5, 0)
    assert (len(rows), total) == (5, 17)


async def test_a_deep_offset_is_still_the_right_slice(pool: Pool, view: ProjectionRunner) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    await insert_backups(pool, org, project, env, 999)
    await insert_backups(pool, org, project, env, 101, status="failed", at=T0 - timedelta(days=1))
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT id FROM {SCHEMA}.backups WHERE environment_id = %s", (env,)
        )
        everything = [r["id"] for r in await cursor.fetchall()]
        cursor = await conn.execute(
            f"SELECT id, created_at FROM {SCHEMA}.backups WHERE environment_id = %s", (env,)
        )
        created = {r["id"]: r["created_at"] for r in await cursor.fetchall()}
    # Newest first, ties in creation time in id order: what the API promises.
    newest_first = sorted(everything, key=lambda i: (-created[i].timestamp(), i))
    for backups in (BackupList(org, environment_id=env), BackupList(org, project_id=project)):
        paged: list[uuid.UUID] = []
        for offset in range(0, 1100, 100):
            rows, total = await backup_page(pool, backups, 100, offset)
            assert total == 1100
            paged.extend(r["id"] for r in rows)
        assert paged == newest_first
        rows, _ = await backup_page(pool, backups, 20, 1090)
        assert [r["id"] for r in rows] == newest_first[1090:]
        rows, total = await backup_page(pool, backups, 20, 5000)
        assert (rows, total) == ([], 1100)
    rows, total = await backup_page(
        pool, BackupList(org, environment_id=env, status="failed"), 10, 95
    )
    assert [r["id"] for r in rows] == newest_first[-6:]
    assert total == 101


async def test_a_project_item_names_its_environment_as_it_is_now(
    pool: Pool, view: ProjectionRunner
) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    await insert_backups(pool, org, project, env, 2)
    async with pool.connection() as conn:
        await conn.execute(f"UPDATE {SCHEMA}.environments SET name = 'prod' WHERE id = %s", (env,))
    rows, _ = await backup_page(pool, BackupList(org, project_id=project), 50, 0)
    assert [r["environment"] for r in rows] == [{"id": str(env), "name": "prod"}] * 2


async def backup_page(
    pool: Pool, backups: BackupList, limit: int, offset: int
) -> tuple[list[Any], int]:
    found = await found_page(pool, backups, limit, offset)
    assert found is not None, "the list's environment or project was not found"
    return found


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in plan_nodes(child))]


async def explain(pool: Pool, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        row = await cursor.fetchone()
    assert row is not None
    return plan_nodes(row["QUERY PLAN"][0]["Plan"])


async def test_pages_walk_an_index_and_totals_never_count_the_backups(
    pool: Pool, view: ProjectionRunner
) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    neighbour = await register_environment(pool, org, project, "staging")
    await insert_backups(pool, org, project, env, 20_000, "completed", "db")
    await insert_backups(pool, org, project, env, 3_000, "failed", "full")
    await insert_backups(pool, org, project, neighbour, 5_000, "completed", "db")
    async with pool.connection() as conn:
        await conn.execute(f"ANALYZE {SCHEMA}.backups")
        await conn.execute(f"ANALYZE {SCHEMA}.backup_counts")
    lists = {
        "environment": BackupList(org, environment_id=env),
        "environment, status": BackupList(org, environment_id=env, status="failed"),
        "environment, type": BackupList(org, environment_id=env, backup_type="full"),
        "environment, both": BackupList(
            org, environment_id=env, status="failed", backup_type="full"
        ),
        "project": BackupList(org, project_id=project),
        "project, status": BackupList(org, project_id=project, status="failed"),
    }
    for what, backups in lists.items():
        # A deep page of a large list walks the index too (a filtered list of a few hundred
        # rows may rightly be read and sorted whole beyond its first page).
        for offset in (0, 1000) if backups.status is None and backups.backup_type is None else (0,):
            query = backups.query(20, offset)
            nodes = await explain(pool, query.sql, query.params)
            scans = [n for n in nodes if n.get("Relation Name") == "backups"]
            assert [n["Node Type"] for n in scans] == ["Index Scan"], (what, nodes)
            # The index gives the order: nothing is sorted before the page is cut (only the
            # page's own rows may be put in order again after it).
            [limit] = [n for n in nodes if n["Node Type"] == "Limit"]
            below = plan_nodes(limit)
            assert not [n for n in below if n["Node Type"] in ("Sort", "Incremental Sort")], what
            # A filtered list seeks to its filter in an index (both filters at once: one of
            # them, the other checked on the index's rows); it never reads the whole scope.
            condition = scans[0]["Index Cond"]
            where = backups.page(20, offset).sql.split("WHERE")[1]
            filters = [c for c in ("status", "type") if f"{c} = " in where]
            if filters:
                assert any(f"{c} = " in condition for c in filters), (what, condition)
            # The total is summed from the counts; the backups are only read for the page.
            assert "backup_counts" in {n.get("Relation Name") for n in nodes}, what
        total = backups.total()
        nodes = await explain(pool, total.sql, total.params)
        assert {n.get("Relation Name") for n in nodes} - {None} == {"backup_counts"}, what


async def test_a_page_is_planned_for_its_own_values_every_time(
    create_database: Callable[..., str], view: ProjectionRunner
) -> None:
    """A statement prepared on the server gets a generic plan after five runs, one that
    knows neither the environment nor the page and sorts the whole environment: the page
    is never prepared, so each request is planned with its values (EXPLAINed above)."""
    del view  # the schema is the view fixture's, in its own database
    org, project = uuid.uuid4(), uuid.uuid4()
    single = connection_pool(create_database("lists"), min_size=1, max_size=1)
    await single.open()
    try:
        async with single.connection() as conn:
            await migrate(
                conn,
                ProjectionRunner(single, SCHEMA, CatalogView()),
                ProjectionRunner(single, SCHEMA, BackupsView()),
            )
        env = await register_environment(single, org, project, "production")
        await insert_backups(single, org, project, env, 50)
        for backups in (BackupList(org, environment_id=env), BackupList(org, project_id=project)):
            for _ in range(8):
                await backup_page(single, backups, 20, 0)
        async with single.connection() as conn:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [r["statement"] for r in await cursor.fetchall()]
        assert not [s for s in prepared if "backup_counts" in s], prepared
    finally:
        await single.close()
