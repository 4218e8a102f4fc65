"""The transactional outbox: commands committed with the read-model row, relayed to Kafka."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from tidemark_contracts import Envelope, Topic
from tidemark_platform.leadership import Leadership
from tidemark_platform.relay import Outbound

from tidemark_api_gateway.readmodel import SCHEMA, Pool

LOG_NAME = "api_gateway:relay:outbox"


async def enqueue(conn: AsyncConnection[DictRow], topic: Topic, envelope: Envelope) -> None:
    """Add a message to the outbox inside the caller's transaction."""
    await conn.execute(
        f"INSERT INTO {SCHEMA}.outbox (topic, key, value, headers) VALUES (%s, %s, %s, %s)",
        (
            topic.name,
            envelope.key,
            envelope.to_bytes(),
            Jsonb({"message-type": envelope.message_type}),
        ),
    )


class OutboxSource:
    """The outbox as a relay source. One gateway instance relays at a time: the leader of
    the outbox's log, so instances never publish the same rows twice."""

    name = "gateway-outbox"

    def __init__(self, pool: Pool, database_url: str):
        self._pool = pool
        self.leadership = Leadership(database_url, LOG_NAME)

    async def pending(self, limit: int) -> Sequence[Outbound]:
        if not await self.leadership.is_leader():
            return []
        # Selecting what remains (not "after a position") means a row whose transaction
        # committed late, with a lower position, is still picked up next time.
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT position, topic, key, value, headers FROM {SCHEMA}.outbox "
                "ORDER BY position LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
        return [
            Outbound(
                position=row["position"],
                topic=row["topic"],
                key=bytes(row["key"]),
                value=bytes(row["value"]),
                headers=row["headers"],
            )
            for row in rows
        ]

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"DELETE FROM {SCHEMA}.outbox WHERE position = ANY(%s)",
                ([entry.position for entry in entries],),
            )

    async def close(self) -> None:
        await self.leadership.close()
