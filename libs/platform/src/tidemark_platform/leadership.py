"""Leadership of a log: of all instances relaying one log, only the holder of its lock does.

The lock is a PostgreSQL session advisory lock held on a connection of its own, so it
lasts exactly as long as that session: an instance that dies, or whose connection drops,
loses it with the session, and another instance's next try takes it. A leader checks its
session before each round; when the session is gone it stops leading until it holds the
lock again.
"""

from __future__ import annotations

import contextlib
import os

import psycopg
from prometheus_client import Gauge
from psycopg import AsyncConnection

from tidemark_platform.database import advisory_key
from tidemark_platform.logging import get_logger

log = get_logger(__name__)

# The first half of every leadership lock's two-part key: it keeps these locks apart from
# any other advisory lock on the same database. ("TL" as two bytes, Tidemark Leadership.)
LEADERSHIP_LOCK_CLASS = 0x544C
# PostgreSQL's application_name is at most 63 bytes (NAMEDATALEN - 1).
MAX_APPLICATION_NAME = 63

RELAY_LEADER = Gauge(
    "tidemark_relay_leader", "1 while this instance leads the relay of the log", ["log"]
)


def lock_key(name: str) -> tuple[int, int]:
    """The advisory lock of the log ``name``."""
    return advisory_key(LEADERSHIP_LOCK_CLASS, name)


class Leadership:
    """Whether this instance leads the log ``name``; it tries to become leader when asked.

    One session is kept open whether leading or not, so an instance that waits for the
    lock asks on it again instead of connecting each time.
    """

    def __init__(self, database_url: str, name: str) -> None:
        self.name = name
        self._database_url = database_url
        self._key = lock_key(name)
        self._session: AsyncConnection[tuple[object, ...]] | None = None
        self._leading = False
        # Shown in pg_stat_activity, so an operator (or a test) can see who leads.
        self.application_name = f"tidemark-leader {os.getpid()} {name}"[:MAX_APPLICATION_NAME]

    @property
    def holds_lock(self) -> bool:
        return self._leading

    async def is_leader(self) -> bool:
        """True while this instance holds the log's lock; else one try to take it."""
        try:
            session = await self._connected()
            if self._leading:
                # The lock lives as long as this session: check the session is still there.
                await session.execute("SELECT 1")
                return True
            cursor = await session.execute("SELECT pg_try_advisory_lock(%s, %s)", self._key)
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            if self._leading:
                log.warning("leadership_lost", log=self.name, error=repr(exc))
            await self._drop()
            return False
        if row is not None and row[0]:
            self._leading = True
            RELAY_LEADER.labels(self.name).set(1)
            log.info("leadership_taken", log=self.name)
        return self._leading

    async def _connected(self) -> AsyncConnection[tuple[object, ...]]:
        if self._session is None or self._session.closed:
            self._session = await AsyncConnection.connect(
                self._database_url,
                autocommit=True,
                connect_timeout=5,
                application_name=self.application_name,
            )
        return self._session

    async def _drop(self) -> None:
        session, self._session = self._session, None
        self._leading = False
        RELAY_LEADER.labels(self.name).set(0)
        if session is not None:
            with contextlib.suppress(psycopg.Error):
                await session.close()

    async def close(self) -> None:
        """Give leadership up (closing the session releases the lock)."""
        await self._drop()
