"""Read queries, always scoped to the caller's organization (foreign rows do not exist).

A query for one row answers ``None`` when there is none: the controller decides on 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import DictRow

from tidemark_api_gateway.readmodel import SCHEMA, Pool


async def one(pool: Pool, statement: str, params: Sequence[Any]) -> DictRow | None:
    async with pool.connection() as conn:
        return await (await conn.execute(statement, params)).fetchone()


async def project(pool: Pool, organization_id: uuid.UUID, project_id: uuid.UUID) -> DictRow | None:
    return await one(
        pool,
        f"SELECT * FROM {SCHEMA}.projects WHERE organization_id = %s AND id = %s",
        (organization_id, project_id),
    )


async def environment(pool: Pool, organization_id: uuid.UUID, env_id: uuid.UUID) -> DictRow | None:
    return await one(
        pool,
        f"SELECT * FROM {SCHEMA}.environments WHERE organization_id = %s AND id = %s",
        (organization_id, env_id),
    )


async def backup(pool: Pool, organization_id: uuid.UUID, backup_id: uuid.UUID) -> DictRow | None:
    return await one(
        pool,
        f"SELECT * FROM {SCHEMA}.backups WHERE organization_id = %s AND id = %s",
        (organization_id, backup_id),
    )


async def destinations(
    pool: Pool, organization_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> list[DictRow]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT * FROM {SCHEMA}.destinations WHERE organization_id = %s AND id = ANY(%s)",
            (organization_id, list(ids)),
        )
        return await cursor.fetchall()


async def default_destinations(pool: Pool, organization_id: uuid.UUID) -> list[DictRow]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT * FROM {SCHEMA}.destinations WHERE organization_id = %s AND is_default "
            "ORDER BY created_at, id",
            (organization_id,),
        )
        return await cursor.fetchall()


async def schedule_destinations(
    pool: Pool, organization_id: uuid.UUID, environment_id: uuid.UUID
) -> list[DictRow] | None:
    """The destinations of the environment's schedule; None when it has none.

    Hook: no schedules exist yet. The scheduler's part of issue 7 answers from its read
    model here (a manual backup without ``destinationIds`` goes where its schedule's go)."""
    return None


def backup_filters(
    where: str,
    params: list[Any],
    status: str | None,
    backup_type: str | None,
    alias: str = "",
) -> tuple[str, list[Any]]:
    if status is not None:
        where += f" AND {alias}status = %s"
        params.append(status)
    if backup_type is not None:
        where += f" AND {alias}type = %s"
        params.append(backup_type)
    return where, params


async def page(
    pool: Pool,
    from_where: str,
    params: Sequence[Any],
    order_by: str,
    limit: int,
    offset: int,
    columns: str = "*",
) -> tuple[list[DictRow], int]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                f"SELECT {columns} {from_where} ORDER BY {order_by} LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
        ).fetchall()
        count = await (await conn.execute(f"SELECT count(*) AS n {from_where}", params)).fetchone()
    return rows, int(count["n"]) if count else 0


@dataclass(frozen=True)
class Statement:
    sql: str
    params: list[Any]


@dataclass(frozen=True)
class BackupList:
    """A list of an organization's backups: one environment's, or one project's (whose
    items add ``environment: {id, name}``, the environment's name as the catalog has it
    now), with the optional ``status``/``type`` filters."""

    organization_id: uuid.UUID
    environment_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    status: str | None = None
    backup_type: str | None = None

    def _where(self, alias: str) -> tuple[str, list[Any]]:
        scope, scope_id = (
            ("environment_id", self.environment_id)
            if self.environment_id is not None
            else ("project_id", self.project_id)
        )
        return backup_filters(
            f"{alias}organization_id = %s AND {alias}{scope} = %s",
            [self.organization_id, scope_id],
            self.status,
            self.backup_type,
            alias=alias,
        )

    def page(self, limit: int, offset: int) -> Statement:
        """The page's rows, newest first, along an index of ``backups`` (``paging_ddl``)."""
        if self.environment_id is not None:
            where, params = self._where("")
            source, columns, order = f"{SCHEMA}.backups", "*", "created_at DESC, id"
        else:
            where, params = self._where("b.")
            source = f"{SCHEMA}.backups b JOIN {SCHEMA}.environments e ON e.id = b.environment_id"
            columns = "b.*, json_build_object('id', e.id, 'name', e.name) AS environment"
            order = "b.created_at DESC, b.id"
        return Statement(
            f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order} LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )

    def total(self) -> Statement:
        """The list's length, summed from the projection's counts (a handful of rows per
        environment) rather than counted over the backups."""
        where, params = self._where("")
        return Statement(
            f"SELECT coalesce(sum(n), 0)::bigint AS n FROM {SCHEMA}.backup_counts WHERE {where}",
            params,
        )

    def query(self, limit: int, offset: int) -> Statement:
        """In one round trip: the list's total and page, or no row at all when the
        environment or project is not the organization's. The page's rows come from an index
        in order (``page``); only those are put in order again here."""
        scope_table, scope_id = (
            ("environments", self.environment_id)
            if self.environment_id is not None
            else ("projects", self.project_id)
        )
        page, total = self.page(limit, offset), self.total()
        return Statement(
            f"SELECT s.list_total, p.* FROM (SELECT ({total.sql}) AS list_total "
            f"FROM {SCHEMA}.{scope_table} WHERE organization_id = %s AND id = %s) s "
            f"LEFT JOIN LATERAL ({page.sql}) p ON true ORDER BY p.created_at DESC, p.id",
            [*total.params, self.organization_id, scope_id, *page.params],
        )


async def backup_page(
    pool: Pool, backups: BackupList, limit: int, offset: int
) -> tuple[list[DictRow], int] | None:
    """The page and the total of ``backups``; None when its environment or project is not
    the organization's."""
    query = backups.query(limit, offset)
    async with pool.connection() as conn:
        # Never a server-side prepared statement: after five runs PostgreSQL may keep a
        # generic plan, which knows neither the environment nor LIMIT/OFFSET and sorts
        # every backup of the environment (measured: 35 pages/s instead of hundreds).
        cursor = await conn.execute(query.sql, query.params, prepare=False)
        rows = await cursor.fetchall()
    if not rows:
        return None
    total = int(rows[0].pop("list_total"))
    for row in rows[1:]:
        del row["list_total"]
    return [r for r in rows if r["id"] is not None], total
