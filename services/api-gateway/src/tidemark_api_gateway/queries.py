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


async def schedule(
    pool: Pool, organization_id: uuid.UUID, environment_id: uuid.UUID
) -> DictRow | None:
    """The environment's schedule's row (``schedules``), or None."""
    return await one(
        pool,
        f"SELECT * FROM {SCHEMA}.schedules WHERE organization_id = %s AND environment_id = %s",
        (organization_id, environment_id),
    )


async def schedule_destinations(
    pool: Pool, organization_id: uuid.UUID, environment_id: uuid.UUID
) -> list[DictRow] | None:
    """The destinations of the environment's schedule, in the schedule's order; None when
    it has no schedule (a manual backup without ``destinationIds`` goes where its
    schedule's go). A destination removed since is left out: removal refuses while a
    schedule uses it, so that is a removal racing this read, and the backup's own
    transaction finds it gone."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT d.* FROM {SCHEMA}.schedules s "
            "CROSS JOIN LATERAL jsonb_array_elements_text(s.settings->'destinationIds') "
            "WITH ORDINALITY AS named(id, n) "
            f"JOIN {SCHEMA}.destinations d "
            "ON d.id = named.id::uuid AND d.organization_id = s.organization_id "
            "WHERE s.organization_id = %s AND s.environment_id = %s ORDER BY named.n",
            (organization_id, environment_id),
        )
        rows = await cursor.fetchall()
    return rows or None


async def completed_backups(
    pool: Pool, organization_id: uuid.UUID, environment_id: uuid.UUID
) -> list[DictRow]:
    """What retention looks at of the environment's completed backups."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT id, type, trigger, status, created_at, size_bytes FROM {SCHEMA}.backups "
            "WHERE organization_id = %s AND environment_id = %s AND status = 'completed'",
            (organization_id, environment_id),
        )
        return await cursor.fetchall()


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

    def page(self, limit: int, offset: int, *, environment: str = "json") -> Statement:
        """The page's rows, newest first, along an index of ``backups`` (``paging_ddl``).

        ``limit`` is written into the statement (an int, at most MAX_PAGE): a plan made
        without knowing it (a prepared statement's generic plan) would sort the whole
        scope, one that knows it walks the index, whatever the scope and the offset. A
        project's rows carry their ``environment`` as JSON, or with ``environment="name"``
        only its name (``environment_name``)."""
        size = int(limit)
        if self.environment_id is not None:
            where, params = self._where("")
            source, columns, order = f"{SCHEMA}.backups", "*", "created_at DESC, id"
        else:
            where, params = self._where("b.")
            source = f"{SCHEMA}.backups b JOIN {SCHEMA}.environments e ON e.id = b.environment_id"
            columns = (
                "b.*, json_build_object('id', e.id, 'name', e.name) AS environment"
                if environment == "json"
                else "b.*, e.name AS environment_name"
            )
            order = "b.created_at DESC, b.id"
        return Statement(
            f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order} LIMIT {size} OFFSET %s",
            [*params, offset],
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

    def json_page(self, limit: int, offset: int) -> Statement:
        """In one round trip, the whole answer as JSON text: ``{items, total, limit,
        offset}`` with each item as ``BackupOut`` writes it (camelCase, times as
        ``format_utc`` writes them, ``environment`` on a project's items), or no row at all
        when the environment or project is not the organization's. PostgreSQL writes it
        from the page's rows (``page``, along the same index), so the gateway neither
        parses the rows nor validates and serializes models: per page that was several
        times the CPU of ``GET /health``. A test pins it equal to the models' JSON."""
        scope_table, scope_id = (
            ("environments", self.environment_id)
            if self.environment_id is not None
            else ("projects", self.project_id)
        )
        page, total = self.page(limit, offset, environment="name"), self.total()
        item = _item_json("p", with_environment=self.environment_id is None)
        items = (
            f"(SELECT '[' || coalesce(string_agg({item}, ',' ORDER BY p.created_at DESC, p.id), "
            f"'') || ']' FROM ({page.sql}) p)"
        )
        return Statement(
            f"""SELECT '{{"items":' || {items} || ',"total":' || ({total.sql}) """
            f"""|| ',"limit":{int(limit)},"offset":' || %s::bigint || '}}' AS body """
            f"FROM {SCHEMA}.{scope_table} WHERE organization_id = %s AND id = %s",
            [*page.params, *total.params, offset, self.organization_id, scope_id],
        )


# The JSON is written by concatenating text: json_build_object costs several microseconds
# per key (it looks up each argument's type on every call), which made a page cost
# PostgreSQL ~0.2 ms per row, more than the gateway saved. Each value below is JSON text,
# ``null`` for NULL (a concatenation with NULL would be NULL).


def _string(value: str) -> str:
    """A JSON string (escaped by ``to_json``), or null."""
    return f"coalesce(to_json({value})::text, 'null')"


def _uuid(value: str) -> str:
    """A UUID of a NOT NULL column: its text needs no escaping."""
    return f"""'"' || {value}::text || '"'"""


def _number(value: str) -> str:
    return f"coalesce(({value})::text, 'null')"


def _time(value: str) -> str:
    """``format_utc``'s form of a time (UTC, always six fractional digits, ``Z``),
    whatever the session's time zone, or null."""
    return (
        f"""coalesce('"' || to_char({value} AT TIME ZONE 'UTC', """
        """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"', 'null')"""
    )


def _object(fields: list[tuple[str, str]]) -> str:
    """A JSON object of ``(key, JSON text)``, keys in the given order."""
    members = " || ',' || ".join(f"""'"{key}":' || {value}""" for key, value in fields)
    return f"'{{' || {members} || '}}'"


def _destinations_json(column: str) -> str:
    """The ``destinations`` column (jsonb, as the projection writes it) as
    ``BackupDestinationOut`` writes it: its fields only, in order, ids and times
    normalised (``uploadedAt`` is stored as Python's ``isoformat()``, any offset)."""
    destination = _object(
        [
            ("destinationId", _string("(d->>'destinationId')::uuid")),
            ("name", _string("d->>'name'")),
            ("type", _string("d->>'type'")),
            ("status", _string("d->>'status'")),
            ("location", _string("d->>'location'")),
            ("sizeBytes", _number("(d->>'sizeBytes')::bigint")),
            ("uploadedAt", _time("(d->>'uploadedAt')::timestamptz")),
            ("error", _string("d->>'error'")),
        ]
    )
    return (
        f"(SELECT '[' || coalesce(string_agg({destination}, ',' ORDER BY n), '') || ']' "
        f"FROM jsonb_array_elements({column}) WITH ORDINALITY AS x(d, n))"
    )


def _item_json(alias: str, *, with_environment: bool) -> str:
    """A row of ``backups`` (as ``alias``) as ``BackupOut`` writes it, key for key."""
    a = f"{alias}."
    fields = [
        ("id", _uuid(a + "id")),
        ("organizationId", _uuid(a + "organization_id")),
        ("projectId", _uuid(a + "project_id")),
        ("environmentId", _uuid(a + "environment_id")),
        ("type", _string(a + "type")),
        ("trigger", _string(a + "trigger")),
        ("label", _string(a + "label")),
        ("status", _string(a + "status")),
        ("sizeBytes", _number(a + "size_bytes")),
        ("checksum", _string(a + "checksum")),
        ("compression", _string(a + "compression")),
        ("createdAt", _time(a + "created_at")),
        ("startedAt", _time(a + "started_at")),
        ("completedAt", _time(a + "completed_at")),
        ("durationMs", _number(a + "duration_ms")),
        ("error", _string(a + "error")),
        ("destinations", _destinations_json(a + "destinations")),
        ("walStartLsn", _string(a + "wal_start_lsn")),
        ("walEndLsn", _string(a + "wal_end_lsn")),
    ]
    if with_environment:
        environment = [
            ("id", _uuid(a + "environment_id")),
            ("name", _string(a + "environment_name")),
        ]
        fields.append(("environment", _object(environment)))
    return _object(fields)


async def backup_page_json(
    pool: Pool, backups: BackupList, limit: int, offset: int
) -> bytes | None:
    """The page of ``backups`` as the API's JSON (``BackupList.json_page``); None when its
    environment or project is not the organization's."""
    query = backups.json_page(limit, offset)
    async with pool.connection() as conn:
        # Prepared on the server: parsing and planning this statement cost PostgreSQL more
        # than running it. Its generic plan walks the index as a custom plan does, since
        # the page's size is in its text (``page``; the test EXPLAINs the generic plan).
        cursor = await conn.execute(query.sql, query.params, prepare=True)
        row = await cursor.fetchone()
    return None if row is None else str(row["body"]).encode()


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
