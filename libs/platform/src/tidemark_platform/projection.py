"""Read models kept from events: positions, ordering guards and rebuilds, written once.

A service declares a ``Projection``: the tables of its read model and the rule that applies
one event to them. The platform applies each event in one transaction together with

- the consumer's position (``projection_positions``), so a message redelivered after a
  crash changes nothing, and
- the aggregate's version (``projection_versions``), so an event re-published by a relay
  changes nothing, and an event that arrives before its predecessor is refused with
  ``OutOfOrder``: the consumer retries it (it waits for the gap to fill), never skips it.

``rebuild`` replays events read from the event stores into a fresh schema and ``compare``
lists every row in which the live read model and the rebuilt one differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.persistence import Tracking
from faststream.kafka import KafkaBroker
from psycopg import sql
from tidemark_contracts import Envelope, Message, Topic

from tidemark_platform.consumer import Delivery, NotYet, subscribe_tracked
from tidemark_platform.database import SCHEMA_DDL_LOCK_CLASS, Connection, Pool, advisory_key
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.notification_log import ToEnvelope

BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.projection_positions (
    projection text NOT NULL,
    stream text NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (projection, stream)
);
CREATE TABLE IF NOT EXISTS {schema}.projection_versions (
    projection text NOT NULL,
    aggregate_id uuid NOT NULL,
    version integer NOT NULL,
    PRIMARY KEY (projection, aggregate_id)
);
"""


class OutOfOrder(NotYet):
    """An aggregate's event arrived before an earlier one: wait for it, never drop it."""


class Projection(Protocol):
    """A read model: where its rows live and how one event changes them."""

    name: str  # positions and versions are kept under this name
    topic: Topic  # the events it follows
    tables: tuple[str, ...]  # compared by ``compare``

    def ddl(self, schema: str) -> str:
        """Statements creating the projection's tables in ``schema`` (idempotent)."""
        ...

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        """Change the rows for one event, inside the caller's transaction."""
        ...


def schema_ddl(projection: Projection, schema: str) -> str:
    return (
        f"CREATE SCHEMA IF NOT EXISTS {schema};"
        + BOOKKEEPING_DDL.format(schema=schema)
        + projection.ddl(schema)
    )


async def _advance(
    conn: Connection, schema: str, projection: Projection, tracking: Tracking
) -> bool:
    cursor = await conn.execute(
        f"INSERT INTO {schema}.projection_positions AS p (projection, stream, position) "
        "VALUES (%s, %s, %s) ON CONFLICT (projection, stream) DO UPDATE "
        "SET position = excluded.position WHERE p.position < excluded.position "
        "RETURNING position",
        (projection.name, tracking.application_name, tracking.notification_id),
    )
    return await cursor.fetchone() is not None


async def _guard_version(
    conn: Connection, schema: str, projection: Projection, envelope: Envelope
) -> bool:
    """True when the event is the aggregate's next one; False when already applied."""
    assert envelope.aggregate_id is not None
    assert envelope.aggregate_version is not None
    cursor = await conn.execute(
        f"SELECT version FROM {schema}.projection_versions "
        "WHERE projection = %s AND aggregate_id = %s FOR UPDATE",
        (projection.name, envelope.aggregate_id),
    )
    row = await cursor.fetchone()
    stored = row["version"] if row else 0
    if envelope.aggregate_version <= stored:
        return False
    if envelope.aggregate_version > stored + 1:
        raise OutOfOrder(
            f"{envelope.message_type} version {envelope.aggregate_version} of "
            f"{envelope.aggregate_id} arrived after version {stored}"
        )
    await conn.execute(
        f"INSERT INTO {schema}.projection_versions (projection, aggregate_id, version) "
        "VALUES (%s, %s, %s) ON CONFLICT (projection, aggregate_id) "
        "DO UPDATE SET version = excluded.version",
        (projection.name, envelope.aggregate_id, envelope.aggregate_version),
    )
    return True


async def apply_event(
    conn: Connection,
    schema: str,
    projection: Projection,
    envelope: Envelope,
    tracking: Tracking | None = None,
    message: Message | None = None,
) -> bool:
    """Apply one event inside the caller's transaction; False when it changed nothing.

    Without ``tracking`` (a service applying its own fresh events, or a rebuild) only the
    version guard applies. An event without an aggregate version is applied unguarded:
    that is how a service writes a row it knows ahead of the event (a pending request).
    ``message`` is the validated payload when the caller has it already.
    """
    if message is None:
        message_class = projection.topic.message_class(envelope.message_type)
        if message_class is None:
            return False  # a message type newer than this reader: nothing of ours changes
        message = message_class.model_validate(envelope.payload)
    if tracking is not None and not await _advance(conn, schema, projection, tracking):
        return False  # this position was applied before: redelivery after a crash
    # A projection may say its events carry no gapless versions (``version_guard = False``:
    # its aggregate's versions are shared with messages of other topics) and order them
    # itself; redeliveries are still caught by the position.
    versioned = (
        getattr(projection, "version_guard", True)
        and envelope.aggregate_id is not None
        and envelope.aggregate_version is not None
    )
    if versioned and not await _guard_version(conn, schema, projection, envelope):
        return False  # already reflected (re-published by a relay)
    await projection.apply(conn, schema, envelope, message)
    return True


class ProjectionRunner:
    """Keeps one projection in ``schema`` of the service's database from its topic."""

    def __init__(self, pool: Pool, schema: str, projection: Projection) -> None:
        self.pool = pool
        self.schema = schema
        self.projection = projection

    async def migrate(self, conn: Connection) -> None:
        """Create the view's tables; instances starting together take turns (the schema's
        DDL lock: CREATE TABLE IF NOT EXISTS is not safe against itself)."""
        async with conn.transaction():
            lock = advisory_key(SCHEMA_DDL_LOCK_CLASS, self.schema)
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock)
            await conn.execute(schema_ddl(self.projection, self.schema))

    def subscribe(self, broker: KafkaBroker, group_id: str, *, service: str) -> None:
        """Follow the projection's topic in consumer group ``group_id``."""
        subscribe_tracked(
            broker,
            self.projection.topic,
            group_id,
            dict.fromkeys(self.projection.topic.messages, self.handle),
            service=service,
            positions=self.positions,
        )

    async def handle(self, message: Message, delivery: Delivery) -> None:
        """The tracked consumer's handler for every message type of the topic."""
        await self.apply_at(delivery.envelope, delivery.tracking, message)

    async def apply_at(
        self, envelope: Envelope, tracking: Tracking, message: Message | None = None
    ) -> bool:
        """Apply an event read at ``tracking``, with that position, in one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            return await apply_event(
                conn, self.schema, self.projection, envelope, tracking, message
            )

    async def positions(self, stream_suffix: str) -> dict[str, int]:
        """The positions kept for ``"<topic>:<partition>"``, under any Kafka cluster id
        (the consumer reports positions left under another cluster)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT stream, position FROM {self.schema}.projection_positions "
                "WHERE projection = %s AND (stream = %s OR right(stream, %s) = %s)",
                (self.projection.name, stream_suffix, len(stream_suffix) + 1, "/" + stream_suffix),
            )
            return {row["stream"]: row["position"] for row in await cursor.fetchall()}

    async def apply_now(self, envelope: Envelope, conn: Connection | None = None) -> bool:
        """Apply an event this service just recorded, before Kafka brings it back."""
        if conn is not None:
            return await apply_event(conn, self.schema, self.projection, envelope)
        async with self.pool.connection() as own, own.transaction():
            return await apply_event(own, self.schema, self.projection, envelope)


def stored_envelopes(
    app: EventStoreApplication, to_envelope: ToEnvelope, batch_size: int = 1000
) -> Iterator[Envelope]:
    """Every event of an event store as the contract envelope its relay publishes, in the
    store's order: what a rebuild replays, without Kafka (whose retention is limited)."""
    start = 1
    while notifications := app.recorder.select_notifications(start=start, limit=batch_size):
        for notification in notifications:
            mapped = to_envelope(app.mapper.to_domain_event(notification))
            if mapped is not None:
                yield mapped[1]
        start = notifications[-1].id + 1


async def rebuild(
    conn: Connection,
    projection: Projection,
    schema: str,
    events: Iterable[Envelope],
) -> int:
    """Replay ``events`` (in the stores' order) into a fresh ``schema``; returns how many
    changed the read model. The schema is dropped and created anew."""
    name = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
        await conn.execute(schema_ddl(projection, schema))
    applied = 0
    for envelope in events:
        async with conn.transaction():
            if await apply_event(conn, schema, projection, envelope):
                applied += 1
    return applied


@dataclass(frozen=True)
class Difference:
    table: str
    side: str  # "live" or "rebuilt": where the row is that the other lacks
    row: dict[str, Any]


async def compare(
    conn: Connection, projection: Projection, live_schema: str, rebuilt_schema: str
) -> list[Difference]:
    """Rows present in one schema's tables and not, identically, in the other's."""
    differences: list[Difference] = []
    for table in projection.tables:
        for side, left, right in (
            ("live", live_schema, rebuilt_schema),
            ("rebuilt", rebuilt_schema, live_schema),
        ):
            query = sql.SQL(
                "SELECT to_jsonb(t) AS row FROM {}.{} t EXCEPT SELECT to_jsonb(t) FROM {}.{} t"
            ).format(
                sql.Identifier(left),
                sql.Identifier(table),
                sql.Identifier(right),
                sql.Identifier(table),
            )
            cursor = await conn.execute(query)
            differences.extend(Difference(table, side, r["row"]) for r in await cursor.fetchall())
    return differences
