"""The transactional outbox: commands committed with the read-model row, relayed to Kafka."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from tidemark_contracts import Envelope, Topic
from tidemark_platform.relay import Outbound

from tidemark_api_gateway.readmodel import SCHEMA, Pool

RELAY_LOCK = 7350002


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
    """The outbox as a relay source. One gateway instance relays at a time: the one
    holding a session advisory lock, so instances never publish the same rows twice."""

    name = "gateway-outbox"

    def __init__(self, pool: Pool, database_url: str):
        self._pool = pool
        self._database_url = database_url
        self._leader: AsyncConnection[DictRow] | None = None

    async def _is_leader(self) -> bool:
        if self._leader is not None:
            try:
                # The lock lives as long as this session: check it is still there.
                await self._leader.execute("SELECT 1")
                return True
            except psycopg.Error:
                await self._leader.close()
                self._leader = None
        conn = await AsyncConnection.connect(
            self._database_url, autocommit=True, row_factory=dict_row
        )
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (RELAY_LOCK,))
        row = await cursor.fetchone()
        if row and row["locked"]:
            self._leader = conn
            return True
        await conn.close()
        return False

    async def pending(self, limit: int) -> Sequence[Outbound]:
        if not await self._is_leader():
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
        if self._leader is not None:
            await self._leader.close()
