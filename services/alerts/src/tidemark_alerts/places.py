"""Where a source event happened, as the service's catalog view knows it: the
environment's project and the names an alert's title and message use.

Only rows of the event's own organization are read: an event that names another
organization's environment gets no name from it (an alert must not tell one organization
what another called its things). The view lags the gateway by a moment, most of all when
the service starts on a backlog: an environment not in it yet is waited for, a bounded
time, then the alert says its id instead of its name.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from psycopg import sql
from tidemark_platform.database import Pool

from tidemark_alerts.domain import Place


class Places:
    def __init__(
        self, pool: Pool, schema: str, *, wait_seconds: float, poll_seconds: float = 0.25
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._wait = wait_seconds
        self._poll = poll_seconds

    async def of(
        self,
        organization_id: UUID,
        environment_id: UUID | None = None,
        destination_id: UUID | None = None,
    ) -> Place:
        deadline = time.monotonic() + self._wait
        while True:
            place, complete = await self._read(organization_id, environment_id, destination_id)
            if complete or time.monotonic() >= deadline:
                return place
            await asyncio.sleep(self._poll)

    async def _read(
        self, organization_id: UUID, environment_id: UUID | None, destination_id: UUID | None
    ) -> tuple[Place, bool]:
        schema = sql.Identifier(self._schema)
        project_id: UUID | None = None
        environment_name: str | None = None
        destination_name: str | None = None
        async with self._pool.connection() as conn:
            if environment_id is not None:
                cursor = await conn.execute(
                    sql.SQL(
                        "SELECT project_id, name FROM {}.environments "
                        "WHERE id = %s AND organization_id = %s"
                    ).format(schema),
                    (environment_id, organization_id),
                )
                row = await cursor.fetchone()
                if row is not None:
                    project_id, environment_name = row["project_id"], row["name"]
            if destination_id is not None:
                cursor = await conn.execute(
                    sql.SQL(
                        "SELECT name FROM {}.destinations WHERE id = %s AND organization_id = %s"
                    ).format(schema),
                    (destination_id, organization_id),
                )
                row = await cursor.fetchone()
                if row is not None:
                    destination_name = row["name"]
        # A destination removed since is gone from the view for good: not waited for.
        complete = environment_id is None or environment_name is not None
        return Place(project_id, environment_name, destination_name), complete
