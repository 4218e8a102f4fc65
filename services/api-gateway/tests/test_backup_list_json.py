"""The backup lists' JSON as PostgreSQL writes it (``BackupList.json_page``, what the list
endpoints send) against the JSON of the models it replaced (``Page[BackupOut]`` of the same
rows): equal field for field and key for key, nulls, destinations, the project items'
``environment``, times as ``format_utc`` writes them whatever the session's time zone."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from tidemark_api_gateway.projection import COLUMNS, BackupsView, count_moves, next_row
from tidemark_api_gateway.queries import BackupList, backup_page, backup_page_json
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_api_gateway.schemas import BackupOut, Page
from tidemark_contracts import Message
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
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
# Not UTC and not whole hours: a time written in the session's zone would show.
SESSION_ZONE = "Asia/Kathmandu"


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    url = create_database("listjson")
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"ALTER DATABASE {name} SET TimeZone = '{SESSION_ZONE}'")
    pool = connection_pool(url)
    await pool.open()
    async with pool.connection() as conn:
        await migrate(
            conn,
            ProjectionRunner(pool, SCHEMA, CatalogView()),
            ProjectionRunner(pool, SCHEMA, BackupsView()),
        )
        zone = await (await conn.execute("SHOW TimeZone")).fetchone()
        assert zone == {"TimeZone": SESSION_ZONE}
    yield pool
    await pool.close()


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


async def store(pool: Pool, backup_id: uuid.UUID, row: dict[str, Any]) -> None:
    """The row and its counts, as the projection keeps them."""
    columns = ("id", *COLUMNS)
    values = [backup_id, *(row.get(c) for c in columns[1:])]
    values = [Jsonb(v) if c == "destinations" else v for c, v in zip(columns, values, strict=True)]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            f"INSERT INTO {SCHEMA}.backups ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})",
            values,
        )
        await BackupsView().count(conn, SCHEMA, count_moves(None, row))


async def projected(pool: Pool, events: list[Message]) -> None:
    """A backup whose row is the projection's fold of ``events``."""
    row: dict[str, Any] | None = None
    for event in events:
        row = next_row(row, event)
    assert row is not None
    await store(pool, events[0].backup_id, row)  # type: ignore[attr-defined]


def destination(**fields: Any) -> dict[str, Any]:
    return {
        "destinationId": str(uuid.uuid4()),
        "name": "disk",
        "type": "local",
        "status": "pending",
        "location": None,
        "sizeBytes": None,
        "uploadedAt": None,
        **fields,
    }


async def every_kind_of_row(pool: Pool, org: uuid.UUID, project: uuid.UUID, env: uuid.UUID) -> None:
    """Rows with every field set and every nullable field null, built by the projection's
    own rule from events and written by hand where no event sets the field yet."""
    a, b = uuid.uuid4(), uuid.uuid4()
    refs = [
        DestinationRef(destination_id=a, name="disk", type="local"),
        DestinationRef(destination_id=b, name="s3 \u00e9t\u00e9", type="s3"),
    ]

    def requested(backup_id: uuid.UUID, at: datetime, **fields: Any) -> BackupRequested:
        return BackupRequested(
            backup_id=backup_id,
            organization_id=org,
            project_id=project,
            environment_id=env,
            type=fields.get("type", "db"),
            trigger=fields.get("trigger", "manual"),
            label=fields.get("label"),
            requested_by="someone",
            requested_at=at,
            destinations=refs,
        )

    pending = uuid.uuid4()
    await projected(pool, [requested(pending, T0)])  # nulls everywhere
    done = uuid.uuid4()
    started = T0 - timedelta(minutes=1, microseconds=-123_456)
    await projected(
        pool,
        [
            requested(done, T0 - timedelta(minutes=2), label='nightly "quoted" \\ \u2603\n'),
            BackupStarted(backup_id=done, environment_id=env, started_at=started),
            BackupUploaded(
                backup_id=done,
                environment_id=env,
                destination_id=a,
                location=f"{env}/{done}.db.pgdump.zst",
                size_bytes=12_345_678_901,
                # Stored as Python's isoformat(): an offset, microseconds or none.
                uploaded_at=datetime(
                    2026, 11, 1, 13, 59, 1, 5, tzinfo=timezone(timedelta(hours=2))
                ),
            ),
            BackupUploaded(
                backup_id=done,
                environment_id=env,
                destination_id=b,
                location="k",
                size_bytes=0,
                uploaded_at=T0,
            ),
            BackupCompleted(
                backup_id=done,
                environment_id=env,
                size_bytes=12_345_678_901,
                checksum="sha256:" + "ab" * 32,
                compression="zstd",
                completed_at=started + timedelta(seconds=30),
                duration_ms=30_000,
            ),
        ],
    )
    failed = uuid.uuid4()
    await projected(
        pool,
        [
            requested(failed, T0 - timedelta(minutes=3), type="full", trigger="scheduled"),
            BackupStarted(backup_id=failed, environment_id=env, started_at=T0),
            BackupUploaded(
                backup_id=failed,
                environment_id=env,
                destination_id=a,
                location="x",
                size_bytes=1,
                uploaded_at=T0,
            ),
            BackupFailed(
                backup_id=failed, environment_id=env, error="s3: \u00bfdenied?", failed_at=T0
            ),
        ],
    )
    deleted = uuid.uuid4()
    await projected(
        pool,
        [
            requested(deleted, T0 - timedelta(minutes=4)),
            BackupStarted(backup_id=deleted, environment_id=env, started_at=T0),
            BackupCompleted(
                backup_id=deleted,
                environment_id=env,
                size_bytes=1,
                checksum="sha256:" + "0" * 64,
                compression="zstd",
                completed_at=T0,
                duration_ms=0,
            ),
            BackupDeletionRequested(
                backup_id=deleted, environment_id=env, requested_by="x", requested_at=T0
            ),
            BackupDeleted(backup_id=deleted, environment_id=env, deleted_at=T0),
        ],
    )
    # A full backup with its WAL positions, no destinations at all, a time before 1970 and
    # one with microseconds; and two rows created at the same instant (order by id).
    full: dict[str, Any] = {
        "organization_id": org,
        "project_id": project,
        "environment_id": env,
        "type": "full",
        "trigger": "scheduled",
        "label": "",
        "status": "completed",
        "size_bytes": 0,
        "checksum": "sha256:" + "1" * 64,
        "compression": "zstd",
        "created_at": T0 - timedelta(minutes=5),
        "started_at": datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        "completed_at": datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-3))),
        "duration_ms": 2**40,
        "error": None,
        "destinations": [],
        "wal_start_lsn": "0/3000028",
        "wal_end_lsn": "0/3000100",
    }
    await store(pool, uuid.uuid4(), full)
    for _ in range(2):
        tie = {**full, "status": "running", "created_at": T0 - timedelta(minutes=6)}
        tie["destinations"] = [
            destination(),
            destination(status="failed", location="y", error='403 "refused" \u00bf'),
        ]
        await store(pool, uuid.uuid4(), tie)


def model_json(rows: list[Any], total: int, limit: int, offset: int) -> str:
    """What the list endpoints sent before: the rows validated as ``BackupOut``, in a
    ``Page``, written as Litestar writes a pydantic model (by alias)."""
    page = Page[BackupOut](
        items=[BackupOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset
    )
    return page.model_dump_json(by_alias=True)


async def both(pool: Pool, backups: BackupList, limit: int, offset: int) -> tuple[Any, Any]:
    fast = await backup_page_json(pool, backups, limit, offset)
    slow = await backup_page(pool, backups, limit, offset)
    assert (fast is None) == (slow is None)
    if fast is None or slow is None:
        return None, None
    return json.loads(fast), json.loads(model_json(*slow, limit, offset))


def keys(value: Any) -> Any:
    """The keys in order, all the way down (``==`` on dicts ignores their order)."""
    if isinstance(value, dict):
        return [(k, keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [keys(v) for v in value]
    return None


async def test_the_json_page_is_the_models_json_for_every_kind_of_row(pool: Pool) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    other = await register_environment(pool, org, project, 'staging "b"')
    await every_kind_of_row(pool, org, project, env)
    await every_kind_of_row(pool, org, project, other)
    lists = [
        BackupList(org, environment_id=env),
        BackupList(org, environment_id=env, status="completed"),
        BackupList(org, environment_id=env, backup_type="full"),
        BackupList(org, environment_id=env, status="running", backup_type="full"),
        BackupList(org, environment_id=env, status="deleting"),
        BackupList(org, project_id=project),
        BackupList(org, project_id=project, status="failed"),
    ]
    compared = 0
    for backups in lists:
        for limit, offset in ((100, 0), (2, 0), (3, 2), (20, 5), (20, 500)):
            fast, slow = await both(pool, backups, limit, offset)
            assert fast == slow, (backups, limit, offset)
            assert keys(fast) == keys(slow), (backups, limit, offset)
            compared += len(fast["items"])
    fast, _ = await both(pool, BackupList(org, project_id=project), 100, 0)
    assert fast["total"] == 14
    assert {item["environment"]["name"] for item in fast["items"]} == {
        "production",
        'staging "b"',
    }
    assert compared > 50


async def test_times_are_utc_with_six_digits_and_z_whatever_the_session_zone(pool: Pool) -> None:
    """Pinned by value too, not only against the models: a change on both sides shows."""
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    await every_kind_of_row(pool, org, project, env)
    body = await backup_page_json(pool, BackupList(org, environment_id=env), 100, 0)
    assert body is not None
    items = json.loads(body)["items"]
    done = items[1]
    assert done["createdAt"] == "2026-11-01T11:58:00.000000Z"
    assert done["startedAt"] == "2026-11-01T11:59:00.123456Z"
    uploaded = {d["name"]: d for d in done["destinations"]}
    assert uploaded["disk"]["uploadedAt"] == "2026-11-01T11:59:01.000005Z"
    assert uploaded["disk"]["sizeBytes"] == 12_345_678_901
    assert uploaded["s3 \u00e9t\u00e9"]["uploadedAt"] == "2026-11-01T12:00:00.000000Z"
    full = items[4]
    assert (full["startedAt"], full["completedAt"]) == (
        "1969-12-31T23:59:59.999999Z",
        "2026-03-29T04:30:00.000000Z",
    )
    assert (full["walStartLsn"], full["destinations"]) == ("0/3000028", [])
    assert "environment" not in full


async def test_a_foreign_or_unknown_scope_has_no_json_page(pool: Pool) -> None:
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    await every_kind_of_row(pool, org, project, env)
    stranger = uuid.uuid4()
    for backups in (
        BackupList(stranger, environment_id=env),
        BackupList(stranger, project_id=project),
        BackupList(org, environment_id=uuid.uuid4()),
        BackupList(org, project_id=uuid.uuid4()),
        # An environment's id is no project's, and the other way round.
        BackupList(org, project_id=env),
        BackupList(org, environment_id=project),
    ):
        assert await backup_page_json(pool, backups, 20, 0) is None, backups
    empty = await register_environment(pool, org, project, "empty")
    body = await backup_page_json(pool, BackupList(org, environment_id=empty), 20, 7)
    assert body is not None
    assert json.loads(body) == {"items": [], "total": 0, "limit": 20, "offset": 7}


async def test_the_prepared_page_walks_an_index_even_with_a_generic_plan(pool: Pool) -> None:
    """The page is prepared on the server (planning it cost more than running it); after
    a few runs PostgreSQL may run a generic plan, made without the parameters' values.
    That plan must still walk an index to the page, never read and sort the scope."""
    org, project = uuid.uuid4(), uuid.uuid4()
    env = await register_environment(pool, org, project, "production")
    neighbour = await register_environment(pool, org, project, "staging")
    async with pool.connection() as conn:
        for scope, n, status in (
            (env, 100_000, "completed"),
            (env, 3_000, "failed"),
            (neighbour, 5_000, "completed"),
        ):
            await conn.execute(
                f"INSERT INTO {SCHEMA}.backups (id, organization_id, project_id, "
                "environment_id, type, trigger, status, created_at) SELECT gen_random_uuid(), "
                "%s, %s, %s, 'db', 'scheduled', %s, %s - make_interval(secs => i) "
                # In random order: the table's order tells the planner nothing.
                "FROM generate_series(1, %s) i ORDER BY random()",
                (org, project, scope, status, T0, n),
            )
        await conn.execute(f"ANALYZE {SCHEMA}.backups")
    lists = [
        BackupList(org, environment_id=env),
        BackupList(org, environment_id=env, status="failed"),
        BackupList(org, environment_id=env, backup_type="full"),
        BackupList(org, environment_id=env, status="failed", backup_type="db"),
        BackupList(org, project_id=project),
        BackupList(org, project_id=project, status="failed"),
    ]
    async with pool.connection() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for backups in lists:
            for offset in (0, 1000):
                query = backups.json_page(20, offset)
                text = numbered_placeholders(query.sql)
                values = ", ".join(sql.Literal(v).as_string(conn) for v in query.params)
                await conn.execute(f"PREPARE generic AS {text}", prepare=False)
                try:
                    cursor = await conn.execute(
                        f"EXPLAIN (FORMAT JSON) EXECUTE generic({values})", prepare=False
                    )
                    row = await cursor.fetchone()
                finally:
                    await conn.execute("DEALLOCATE generic", prepare=False)
                assert row is not None
                nodes = plan_nodes(row["QUERY PLAN"][0]["Plan"])
                scans = [n for n in nodes if n.get("Relation Name") == "backups"]
                assert [n["Node Type"] for n in scans] == ["Index Scan"], (backups, nodes)
                sorts = [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")]
                assert not sorts, (backups, offset)
    # And it is prepared indeed: by psycopg, on the connection that ran it.
    single = connection_pool(pool.conninfo, min_size=1, max_size=1)
    await single.open()
    try:
        for _ in range(3):
            assert await backup_page_json(single, lists[0], 20, 0) is not None
        async with single.connection() as conn:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [r["statement"] for r in await cursor.fetchall()]
        assert [s for s in prepared if '"items"' in s], prepared
    finally:
        await single.close()


def numbered_placeholders(text: str) -> str:
    """psycopg's ``%s`` placeholders as PREPARE's ``$1``, ``$2``, ..."""
    first, *rest = text.split("%s")
    return first + "".join(f"${n}{part}" for n, part in enumerate(rest, start=1))


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in plan_nodes(child))]
