"""Read queries, always scoped to the caller's organization (foreign rows do not exist).

A query for one row answers ``None`` when there is none: the controller decides on 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
