"""Reading the event stores for an audit: the export query and the check against the store.

The export is one SQL query over every store's table of events (``<app name>_events``;
UNION ALL), filtered to the scope, sorted into the global order (recorded time, then the
store's index in ``SOURCES``, then its position) and streamed in chunks. Each row is
already the event line's members as text, the stored state embedded as it is, so Python
only frames, hashes and writes it (chain.py): decoding a million events into objects would
cost many times the read itself (bench/replay.py measures it).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from tidemark_cli.chain import Line
from tidemark_cli.sources import SOURCES, EventSource

ScopeKind = Literal["organization", "project", "environment", "aggregate"]
CATALOG = SOURCES[0]  # the gateway's catalog: projects and their environments

# Rows fetched per round trip of the server-side cursor (bench/replay.py: larger batches
# gained nothing measurable, smaller ones cost a few per cent).
ITERSIZE = 5000

# eventsourcing writes the event's own time first, in Python's isoformat: ``{"timestamp":
# {"_type_":"datetime_iso","_data_":"2026-11-30T10:00:00.123456+00:00"},…``. That text,
# 32 bytes in UTC with microseconds, sorts byte-wise as the time does: the order key is
# those bytes, cut out of the stored state without decoding it. A state of any other
# layout, zone or precision (a time on the second drops its microseconds) is parsed as
# JSON and its time written in the same 32-byte form.
_TIMESTAMP_PREFIX = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'
_START = len(_TIMESTAMP_PREFIX) + 1
_KEY_LENGTH = len("2026-11-30T10:00:00.123456+00:00")
_SLOW_TIME = sql.SQL(
    "(convert_from(e.state, 'UTF8')::jsonb #>> '{{timestamp,_data_}}')::timestamptz"
).format()
_ORDER_KEY = sql.SQL(
    "CASE WHEN substring(e.state from 1 for {n}) = {prefix} "
    "AND substring(e.state from {zone} for 7) = {utc} "
    "THEN substring(e.state from {start} for {length}) "
    "ELSE convert_to(to_char({slow} AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00', 'UTF8') END"
).format(
    n=sql.Literal(len(_TIMESTAMP_PREFIX)),
    prefix=sql.Literal(_TIMESTAMP_PREFIX),
    zone=sql.Literal(_START + _KEY_LENGTH - 6),
    utc=sql.Literal(b'+00:00"'),
    start=sql.Literal(_START),
    length=sql.Literal(_KEY_LENGTH),
    slow=_SLOW_TIME,
)


_PLAIN_TOPIC = re.compile(r"[A-Za-z0-9_.:]*")


def _topic_json(conn: psycopg.Connection[Any], table: sql.Composed) -> sql.Composable:
    """The stored topic as a JSON string. Topics are class paths (``module:Class.Event``),
    a handful per store: when none of them needs escaping, quotes suffice, which costs a
    tenth of ``to_json`` per row (bench/replay.py)."""
    topics = conn.execute(sql.SQL("SELECT DISTINCT topic FROM {}").format(table)).fetchall()
    if all(_PLAIN_TOPIC.fullmatch(topic) for (topic,) in topics):
        return sql.SQL("'\"' || e.topic || '\"'")
    return sql.SQL("to_json(e.topic)::text")


def order_key(moment: datetime) -> bytes:
    """A time as the order key (see ``_ORDER_KEY``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00").encode()


@dataclass(frozen=True)
class Scope:
    kind: ScopeKind
    id: uuid.UUID


@dataclass(frozen=True)
class Query:
    scope: Scope | None
    since: datetime | None
    until: datetime | None

    def filters(self) -> dict[str, str]:
        filters: dict[str, str] = {}
        if self.scope:
            filters[self.scope.kind] = str(self.scope.id)
        if self.since:
            filters["since"] = iso(self.since)
        if self.until:
            filters["until"] = iso(self.until)
        return filters


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def events_table(source: EventSource) -> str:
    """The store's table of events (``<app name>_events``, e.g. ``backup_runner_events``)."""
    return source.events_table


def table_of(source: EventSource) -> sql.Composed:
    return sql.SQL("{}.{}").format(
        sql.Identifier(source.schema), sql.Identifier(events_table(source))
    )


def existing_sources(conn: psycopg.Connection[Any]) -> list[tuple[int, EventSource]]:
    """The stores whose table exists in this database (a store is created by its service's
    first start), with their index in ``SOURCES``."""
    found = []
    for index, source in enumerate(SOURCES):
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (table_of(source).as_string(conn),)
        ).fetchone()
        if row and row[0]:
            found.append((index, source))
    return found


def _in_scope(table: sql.Composed, ids: Sequence[uuid.UUID]) -> tuple[sql.Composed, list[Any]]:
    """The aggregates of ``table`` whose first stored event has one of ``ids`` in a UUID
    field (at any depth), or which are one of them: a subquery of originator ids, and its
    parameters.

    Only a UUID field counts: eventsourcing writes one as ``{"_type_":"uuid_hex","_data_":
    "<hex>"}``, quotes unescaped, which no text value can contain (inside a JSON string a
    quote is ``\\"``). Free text that happens to hold an id (a backup's label naming
    another organization's id, say) puts nothing in that organization's export."""
    patterns = [f'%"\\_type\\_":"uuid\\_hex","\\_data\\_":"{i.hex}"%' for i in ids]
    subquery = sql.SQL(
        "SELECT f.originator_id FROM {t} f WHERE f.originator_id = ANY(%s::uuid[]) "
        "OR (NOT EXISTS (SELECT 1 FROM {t} g WHERE g.originator_id = f.originator_id "
        "AND g.originator_version < f.originator_version) "
        "AND convert_from(f.state, 'UTF8') LIKE ANY(%s::text[]))"
    ).format(t=table)
    return subquery, [list(ids), patterns]


def _scope_ids(conn: psycopg.Connection[Any], scope: Scope, catalog: bool) -> list[uuid.UUID]:
    """The ids whose mention puts an aggregate in scope: the scope's own id, and for a
    project every aggregate of the catalog registered under it (its environments)."""
    if scope.kind != "project" or not catalog:
        return [scope.id]
    subquery, params = _in_scope(table_of(CATALOG), [scope.id])
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT originator_id FROM ({}) q").format(subquery), params
    ).fetchall()
    return [scope.id, *(row[0] for row in rows if row[0] != scope.id)]


def export_query(
    conn: psycopg.Connection[Any], query: Query
) -> tuple[sql.Composed, list[Any], list[EventSource]]:
    """The SQL whose rows are the event lines' members (``"kind":"event",…,"event":{…}``)
    in the export's order, its parameters, and the stores it reads."""
    sources = existing_sources(conn)
    ids: list[uuid.UUID] = []
    if query.scope is not None:
        ids = _scope_ids(conn, query.scope, any(s is CATALOG for _, s in sources))
    branches: list[sql.Composable] = []
    params: list[Any] = []
    for index, source in sources:
        table = table_of(source)
        prefix = json.dumps(
            {"kind": "event", "store": source.store, "service": source.service},
            separators=(",", ":"),
        )[1:-1]
        where: list[sql.Composable] = []
        if query.scope is not None:
            if query.scope.kind == "aggregate":
                where.append(sql.SQL("e.originator_id = %s"))
                params.append(query.scope.id)
            else:
                subquery, extra = _in_scope(table, ids)
                where.append(sql.SQL("e.originator_id IN ({})").format(subquery))
                params.extend(extra)
        if query.since is not None:
            where.append(sql.SQL("k.k >= %s"))
            params.append(order_key(query.since))
        if query.until is not None:
            where.append(sql.SQL("k.k < %s"))
            params.append(order_key(query.until))
        # The line's members as bytes: the text part made by PostgreSQL, then the stored
        # state as it is (neither decoded nor validated again).
        # The line's members as bytes: the text part made by PostgreSQL, the time cut from
        # the order key and the stored state as they are (neither decoded nor validated).
        branch = sql.SQL(
            "SELECT {index} AS s, e.notification_id AS n, k.k, "
            "convert_to({prefix} || ',\"position\":' || e.notification_id"
            ' || \',"aggregateId":"\' || e.originator_id'
            ' || \'","aggregateVersion":\' || e.originator_version'
            " || ',\"type\":' || {topic} || ',\"recordedAt\":\"', 'UTF8')"
            " || substring(k.k from 1 for 26) || {event} || e.state AS body "
            "FROM {table} e "
            "CROSS JOIN LATERAL (SELECT {key} AS k) k"
        ).format(
            index=sql.Literal(index),
            prefix=sql.Literal(prefix),
            topic=_topic_json(conn, table),
            event=sql.Literal(b'Z","event":'),
            table=table,
            key=_ORDER_KEY,
        )
        if where:
            branch = branch + sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
        branches.append(branch)
    if not branches:
        return sql.SQL("SELECT NULL::bytea WHERE false").format(), [], []
    statement = sql.SQL("SELECT u.body FROM ({}) u ORDER BY u.k, u.s, u.n").format(
        sql.SQL(" UNION ALL ").join(branches)
    )
    return statement, params, [s for _, s in sources]


def count_query(statement: sql.Composed) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM ({}) q").format(statement)


def stream_bodies(
    conn: psycopg.Connection[Any], statement: sql.Composed, params: list[Any]
) -> Iterator[bytes]:
    """The rows of ``statement`` as they come, ``ITERSIZE`` at a time (libpq's chunked
    mode: the client holds one chunk, never the result), in binary: bytes as they are,
    not decoded into str and encoded back. Not a server-side cursor: PostgreSQL plans a
    cursor without parallel workers, and the sort is the query's largest part
    (bench/replay.py: twice as slow)."""
    with conn.transaction(), conn.cursor(binary=True) as cursor:
        for (body,) in cursor.stream(statement, params, size=ITERSIZE):
            yield body


def connect(database_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database_url, connect_timeout=10)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


# -- verify --against-store -----------------------------------------------------------


@dataclass(frozen=True)
class StoreDifference:
    line: int
    detail: str


def compare_with_store(
    conn: psycopg.Connection[Any], lines: Sequence[Line], batch: int = 1000
) -> StoreDifference | None:
    """The first event line (in file order) that no longer equals its stored row."""
    from tidemark_cli.sources import BY_STORE

    first: StoreDifference | None = None

    def note(found: StoreDifference) -> None:
        nonlocal first
        if first is None or found.line < first.line:
            first = found

    by_store: dict[str, list[Line]] = {}
    for line in lines:
        record = line.record or {}
        store = record.get("store")
        if not isinstance(store, str) or store not in BY_STORE:
            note(StoreDifference(line.number, "names no known event store"))
            continue
        by_store.setdefault(store, []).append(line)
    for store, of_store in by_store.items():
        table = table_of(BY_STORE[store])
        for start in range(0, len(of_store), batch):
            chunk = of_store[start : start + batch]
            positions = [(line.record or {}).get("position") for line in chunk]
            rows = conn.execute(
                sql.SQL(
                    "SELECT notification_id, originator_id, originator_version, topic, "
                    "convert_from(state, 'UTF8') FROM {} WHERE notification_id = ANY(%s)"
                ).format(table),
                ([p for p in positions if isinstance(p, int)],),
            ).fetchall()
            stored = {row[0]: row for row in rows}
            for line in chunk:
                found = _difference(line, stored)
                if found:
                    note(StoreDifference(line.number, found))
    return first


def _difference(line: Line, stored: dict[int, tuple[Any, ...]]) -> str | None:
    record = line.record or {}
    position = record.get("position")
    row = stored.get(position) if isinstance(position, int) else None
    where = f"{record.get('store')} position {position}"
    if row is None:
        return f"{where} is not in the store"
    _, aggregate_id, version, topic, state = row
    if record.get("aggregateId") != str(aggregate_id):
        return f"{where}: the aggregate id differs"
    if record.get("aggregateVersion") != version:
        return f"{where}: the aggregate version differs"
    if record.get("type") != topic:
        return f"{where}: the event type differs"
    if record.get("event") != json.loads(state):
        return f"{where}: the event differs from the stored one"
    return None
