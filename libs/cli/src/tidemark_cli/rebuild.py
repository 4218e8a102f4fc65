"""Read models rebuilt from the event stores, compared row by row with the live ones, and
(``swap=True``) repaired in place, atomically, while the services serve and project.

The rebuild reads every store its read models need once, in batches (flat memory), merges
the stores' events in the order they happened (recorded time, then the store's index in
SOURCES, then its position; each store's own order is kept as it is) and applies each to
every selected read model that follows its topic, into fresh schemas ``<live>__rebuilt``,
many events per transaction.

The swap, in one transaction:

1. locks the live bookkeeping (``projection_positions``, ``projection_versions``) and the
   read models' tables ``IN EXCLUSIVE MODE``: the live projections wait (a moment), plain
   readers do not (they go on reading the old rows until the commit);
2. catches the rebuilt tables up from the stores past the positions the rebuild read, so
   nothing the live projection applied in between is lost;
3. compares again, and writes into the live tables exactly the rows that differ (rows the
   gateway wrote ahead of their event are kept as they are) and makes the live version
   guard agree with the rebuilt one, so every later event applies exactly once; the
   consumers' Kafka positions stay as they are.

Changing rows in place, rather than renaming tables, keeps the tables the services hold
(their indexes, their prepared statements) and never blocks a reader.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tidemark_contracts import Envelope, Message, Topic
from tidemark_platform.database import Connection
from tidemark_platform.projection import OutOfOrder, apply_event, schema_ddl

from tidemark_cli.errors import CliError
from tidemark_cli.readmodels import READ_MODELS, ReadModel, RowDifference, select
from tidemark_cli.sources import SOURCES, EventSource

REBUILT_SUFFIX = "__rebuilt"
BATCH_SIZE = 1000  # events per transaction of the rebuild
READ_SIZE = 2000  # notifications per read of a store
# One rebuild at a time: two would drop each other's rebuilt schemas.
REBUILD_LOCK = 7350050
LOCK_TIMEOUT = "60s"  # how long a swap waits for a live transaction to let go
BOOKKEEPING = ("projection_positions", "projection_versions")
# Values never printed in a report (connection details, secret references, bodies).
WITHHELD = frozenset({"config", "database", "cluster", "signing_secret_ref", "body", "settings"})

Progress = Callable[[int], None]


def rebuilt_schema(live: str) -> str:
    return live + REBUILT_SUFFIX


@dataclass
class ModelReport:
    model: ReadModel
    differences: list[RowDifference] = field(default_factory=list)
    not_yet_recorded: list[RowDifference] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)
    swapped: bool = False

    @property
    def equal(self) -> bool:
        return not self.differences and not self.missing_tables

    @property
    def repaired(self) -> bool:
        """Equal now: nothing differed, or the swap wrote the differences live."""
        return self.equal or (self.swapped and not self.missing_tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "service": self.model.service,
            "schema": self.model.schema,
            "tables": list(self.model.compared_tables()),
            "equal": self.equal,
            "swapped": self.swapped,
            "differences": [difference_json(d) for d in self.differences],
            "notYetRecorded": [difference_json(d) for d in self.not_yet_recorded],
            "missingTables": self.missing_tables,
        }


@dataclass
class RebuildReport:
    models: list[ModelReport]
    events_read: int
    seconds: float
    swapped: bool

    @property
    def equal(self) -> bool:
        return all(m.equal for m in self.models)

    @property
    def repaired(self) -> bool:
        return all(m.repaired for m in self.models)

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "swapped": self.swapped,
            "eventsRead": self.events_read,
            "seconds": round(self.seconds, 3),
            "eventsPerSecond": round(self.events_per_second, 1),
            "readModels": [m.to_json() for m in self.models],
        }


def difference_json(d: RowDifference) -> dict[str, Any]:
    def shown(row: Any, column: str) -> Any:
        return "<withheld>" if column in WITHHELD else (row or {}).get(column)

    return {
        "table": d.table,
        "side": d.side,
        "key": d.key,
        "columns": d.columns,
        "live": {c: shown(d.live, c) for c in d.columns} if d.live is not None else None,
        "rebuilt": {c: shown(d.rebuilt, c) for c in d.columns} if d.rebuilt is not None else None,
    }


# --- reading the stores ------------------------------------------------------------------


@dataclass
class StoreReader:
    """One store read in batches from a position; remembers the last position read."""

    source: EventSource
    index: int
    app: Any
    position: int = 0

    def events(self, size: int = READ_SIZE) -> Iterator[tuple[datetime, int, int, Topic, Envelope]]:
        while notifications := self.app.recorder.select_notifications(
            start=self.position + 1, limit=size
        ):
            for notification in notifications:
                event = self.app.mapper.to_domain_event(notification)
                self.position = notification.id
                mapped = self.app.to_envelope(event)
                if mapped is not None:
                    yield (event.timestamp, self.index, notification.id, mapped[0], mapped[1])
            if len(notifications) < size:
                return


def merged(readers: Sequence[StoreReader]) -> Iterator[tuple[Topic, Envelope]]:
    """The stores' events in the order they happened; each store's order is kept."""
    for _, _, _, topic, envelope in heapq.merge(
        *(reader.events() for reader in readers), key=lambda e: (e[0], e[1], e[2])
    ):
        yield topic, envelope


def _store_exists(database_url: str, source: EventSource) -> bool:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (source.schema,)
        ).fetchone()
        return found is not None


# --- applying ------------------------------------------------------------------------------


class Applier:
    """Applies envelopes to every selected read model following their topic, in batches."""

    def __init__(self, models: Sequence[ReadModel]) -> None:
        self.by_topic: dict[str, list[tuple[ReadModel, Any]]] = {}
        for model in models:
            projection = model.projection()
            self.by_topic.setdefault(projection.topic.name, []).append((model, projection))
        self.events_read = 0

    async def apply_all(
        self,
        conn: Connection,
        events: Iterator[tuple[Topic, Envelope]],
        *,
        batch_size: int = BATCH_SIZE,
        progress: Progress | None = None,
        in_transaction: bool = False,
    ) -> None:
        """Apply ``events``: ``batch_size`` per transaction, or all in the caller's."""
        while True:
            batch = _take(events, batch_size)
            if not batch:
                return
            if in_transaction:
                await self._apply_batch(conn, batch)
            else:
                # No pipeline mode: projections read ``rowcount`` of their writes (the
                # gateway's counts), which a pipeline leaves unset until it syncs.
                async with conn.transaction():
                    await self._apply_batch(conn, batch)
            self.events_read += len(batch)
            if progress is not None:
                progress(self.events_read)

    async def _apply_batch(self, conn: Connection, batch: list[tuple[Topic, Envelope]]) -> None:
        for topic, envelope in batch:
            followers = self.by_topic.get(topic.name)
            if not followers:
                continue
            message_class = topic.message_class(envelope.message_type)
            if message_class is None:
                continue
            message: Message = message_class.model_validate(envelope.payload)
            for model, projection in followers:
                try:
                    await apply_event(
                        conn, rebuilt_schema(model.schema), projection, envelope, message=message
                    )
                except OutOfOrder as exc:
                    raise CliError(f"{model.name}: the stores hold {exc}") from None


def _take(events: Iterator[Any], n: int) -> list[Any]:
    batch = []
    for item in events:
        batch.append(item)
        if len(batch) >= n:
            break
    return batch


# --- comparing -----------------------------------------------------------------------------


async def _table_exists(conn: Connection, schema: str, table: str) -> bool:
    cursor = await conn.execute("SELECT to_regclass(%s) AS t", (f'"{schema}"."{table}"',))
    row = await cursor.fetchone()
    return row is not None and row["t"] is not None


async def primary_key(conn: Connection, schema: str, table: str) -> list[str]:
    cursor = await conn.execute(
        "SELECT a.attname AS name FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (f'"{schema}"."{table}"',),
    )
    return [row["name"] for row in await cursor.fetchall()]


@dataclass(frozen=True)
class Subset:
    """Only the rows of a table ``column = value`` (one projection's bookkeeping)."""

    column: str
    value: str


async def diff_table(
    conn: Connection, table: str, live: str, rebuilt: str, subset: Subset | None = None
) -> list[RowDifference]:
    """Every row of ``table`` not identical in ``live`` and ``rebuilt``, matched by the
    primary key (a table without one: by the whole row, duplicates counted)."""
    key = await primary_key(conn, rebuilt, table)
    where: sql.Composable = sql.SQL("")
    params: list[Any] = []
    if subset is not None:
        where = sql.SQL(" WHERE {} = %s").format(sql.Identifier(subset.column))
        params = [subset.value, subset.value]

    def side(schema: str) -> sql.Composable:
        return sql.SQL("SELECT to_jsonb(t) AS row FROM {}.{} t{}").format(
            sql.Identifier(schema), sql.Identifier(table), where
        )

    if key:
        on = sql.SQL(" AND ").join(
            sql.SQL("l.row -> {k} = r.row -> {k}").format(k=sql.Literal(k)) for k in key
        )
        query = sql.SQL(
            "SELECT l.row AS live, r.row AS rebuilt FROM ({}) l FULL JOIN ({}) r ON {} "
            "WHERE l.row IS DISTINCT FROM r.row"
        ).format(side(live), side(rebuilt), on)
        cursor = await conn.execute(query, params)
        rows = await cursor.fetchall()
        return [
            RowDifference(
                table,
                {k: (r["live"] or r["rebuilt"])[k] for k in key},
                r["live"],
                r["rebuilt"],
            )
            for r in rows
        ]
    differences: list[RowDifference] = []
    for name, left, right in (("live", live, rebuilt), ("rebuilt", rebuilt, live)):
        query = sql.SQL("{} EXCEPT ALL {}").format(side(left), side(right))
        cursor = await conn.execute(query, params)
        for r in await cursor.fetchall():
            row = r["row"]
            differences.append(
                RowDifference(
                    table,
                    dict(row),
                    row if name == "live" else None,
                    row if name == "rebuilt" else None,
                )
            )
    return differences


async def compare_model(conn: Connection, model: ReadModel) -> ModelReport:
    report = ModelReport(model)
    found: list[RowDifference] = []
    for table in model.compared_tables():
        if not await _table_exists(conn, model.schema, table):
            report.missing_tables.append(table)
            continue
        found.extend(await diff_table(conn, table, model.schema, rebuilt_schema(model.schema)))
    ahead = model.ahead(found)
    for i, difference in enumerate(found):
        (report.not_yet_recorded if i in ahead else report.differences).append(difference)
    return report


# --- swapping ------------------------------------------------------------------------------


async def _lock_live(conn: Connection, models: Sequence[ReadModel]) -> None:
    """Bookkeeping first, then the tables in registry order: the order the projections'
    transactions take them in (position, version, then rows; a destination before a
    backup), so the swap waits for them. The gateway's destination removal locks its row
    before ``projection_versions``: against a swap of the catalog that is a deadlock, which
    PostgreSQL ends by aborting one of them whole (docs/cli/rebuild.md)."""
    await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    names: list[tuple[str, str]] = []
    for schema in sorted({m.schema for m in models}):
        names.extend((schema, t) for t in BOOKKEEPING)
    for model in models:
        names.extend((model.schema, t) for t in model.compared_tables())
    for schema, table in dict.fromkeys(names):
        await conn.execute(
            sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        )


async def repair(
    conn: Connection, schema: str, table: str, differences: Sequence[RowDifference]
) -> None:
    """Make the live rows of ``table`` that differ what the rebuilt ones are."""
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    key = await primary_key(conn, schema, table)
    if not key:  # no key to match by: the whole table is the rebuilt one
        await conn.execute(sql.SQL("DELETE FROM {}").format(target))
        await conn.execute(
            sql.SQL(
                "INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, "
                "(SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]') FROM {r} r))"
            ).format(
                t=target,
                r=sql.SQL("{}.{}").format(
                    sql.Identifier(rebuilt_schema(schema)), sql.Identifier(table)
                ),
            )
        )
        return
    stale = [d.live for d in differences if d.live is not None]
    fresh = [d.rebuilt for d in differences if d.rebuilt is not None]
    if stale:
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{k} = x.{k}").format(k=sql.Identifier(k)) for k in key
        )
        await conn.execute(
            sql.SQL(
                "DELETE FROM {t} t USING jsonb_populate_recordset(NULL::{t}, %s) x WHERE {m}"
            ).format(t=target, m=match),
            (Jsonb(stale),),
        )
    if fresh:
        await conn.execute(
            sql.SQL("INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, %s)").format(
                t=target
            ),
            (Jsonb(fresh),),
        )


async def swap_model(conn: Connection, report: ModelReport) -> None:
    """Inside the swap's transaction, after the catch-up: repair the live tables and the
    live version guard of ``report.model`` (its positions stay as they are)."""
    model = report.model
    by_table: dict[str, list[RowDifference]] = {}
    for d in report.differences:
        by_table.setdefault(d.table, []).append(d)
    for table, differences in by_table.items():
        await repair(conn, model.schema, table, differences)
    name = model.projection().name
    versions = await diff_table(
        conn,
        "projection_versions",
        model.schema,
        rebuilt_schema(model.schema),
        Subset("projection", name),
    )
    await repair(conn, model.schema, "projection_versions", versions)
    report.swapped = True


# --- the whole -----------------------------------------------------------------------------


async def _fresh_schemas(conn: Connection, models: Sequence[ReadModel]) -> None:
    async with conn.transaction():
        for schema in dict.fromkeys(rebuilt_schema(m.schema) for m in models):
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
        # Every read model of a rebuilt schema gets its tables, selected or not: a
        # projection may read a neighbour's table (the webhook alerts read the webhooks).
        schemas = {m.schema for m in models}
        for model in READ_MODELS:
            if model.schema in schemas:
                await conn.execute(schema_ddl(model.projection(), rebuilt_schema(model.schema)))


async def _drop_schemas(conn: Connection, models: Sequence[ReadModel]) -> None:
    for schema in dict.fromkeys(rebuilt_schema(m.schema) for m in models):
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


class Rebuild:
    """One rebuild, step by step: ``read`` (replay the stores into the rebuilt schemas and
    compare), then ``swap`` if wanted; ``close`` drops the rebuilt schemas. Holds the
    rebuild lock and one connection from ``open`` to ``close``."""

    def __init__(
        self,
        database_url: str,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        progress: Progress | None = None,
    ) -> None:
        try:
            self.models = select(names)
        except KeyError as exc:
            raise CliError(f"no read model named {exc.args[0]!r}", code=2) from None
        self.database_url = database_url
        self.batch_size = batch_size
        self.progress = progress
        self.applier = Applier(self.models)
        self.readers: list[StoreReader] = []
        self.reports: list[ModelReport] = []
        self.swapped = False
        self._conn: Connection | None = None
        self._started = time.monotonic()

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "open() first"
        return self._conn

    async def open(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        )
        cursor = await self.conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (REBUILD_LOCK,))
        got = await cursor.fetchone()
        if not got or not got["got"]:
            await self.close()
            raise CliError("another rebuild is running (its lock is held)")
        needed = {s.store for m in self.models for s in m.stores()}
        self.readers = [
            StoreReader(source, index, source.open(self.database_url))
            for index, source in enumerate(SOURCES)
            if source.store in needed and _store_exists(self.database_url, source)
        ]

    async def close(self, *, keep_rebuilt: bool = False) -> None:
        try:
            if self._conn is not None and not self._conn.closed:
                if not keep_rebuilt:
                    await _drop_schemas(self.conn, self.models)
                await self.conn.close()
        finally:
            for reader in self.readers:
                reader.app.close()
            self.readers = []

    async def __aenter__(self) -> Rebuild:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def read(self) -> list[ModelReport]:
        """Replay every event of the stores into fresh schemas, then compare."""
        await _fresh_schemas(self.conn, self.models)
        await self.applier.apply_all(
            self.conn, merged(self.readers), batch_size=self.batch_size, progress=self.progress
        )
        self.reports = [await compare_model(self.conn, model) for model in self.models]
        return self.reports

    async def swap(self) -> list[ModelReport]:
        """Repair every read model found different, in one transaction (see the module
        docstring); the reports become the differences found and written inside it."""
        to_swap = {id(r) for r in self.reports if not r.equal and not r.missing_tables}
        if not to_swap:
            return self.reports
        async with self.conn.transaction():
            await _lock_live(self.conn, [r.model for r in self.reports if id(r) in to_swap])
            await self.applier.apply_all(self.conn, merged(self.readers), in_transaction=True)
            for i, report in enumerate(self.reports):
                if id(report) in to_swap:
                    self.reports[i] = fresh = await compare_model(self.conn, report.model)
                    await swap_model(self.conn, fresh)
        self.swapped = True
        return self.reports

    def report(self) -> RebuildReport:
        return RebuildReport(
            list(self.reports),
            self.applier.events_read,
            time.monotonic() - self._started,
            self.swapped,
        )


async def rebuild_read_models(
    database_url: str,
    names: Sequence[str] | None = None,
    *,
    swap: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> RebuildReport:
    """Rebuild the read models ``names`` (every one when None) from the event stores,
    compare each with its live tables, and with ``swap`` repair the live ones."""
    async with Rebuild(database_url, names, batch_size=batch_size, progress=progress) as rebuild:
        await rebuild.read()
        if swap:
            await rebuild.swap()
        return rebuild.report()
