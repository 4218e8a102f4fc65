"""What the gateway registered: the only databases and destinations a runner will serve.

A command on ``backup.commands`` names its organization, environment, database settings
and destinations, and anyone who can write to the topic can name anything: another
organization's id with a host of their own and that organization's ``secret:NAME``, and
the runner would send the secret there. So the runner follows the catalog
(``catalog.events``, written only by the gateway from what each organization registered)
into a view of its own, and carries out a backup only when the command's environment is
registered to the command's organization with exactly the command's database settings,
and each destination is registered to it with exactly the command's configuration.

Registrations never change after they are made, so a difference is a refusal at once. A
registration the view has not received yet (it lags the gateway by a moment) is waited
for, a bounded time. The reasons never say whether an id exists in another organization.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from tidemark_contracts.backup import DatabaseTarget, DestinationTarget
from tidemark_platform.database import Pool

DEFAULT_WAIT_SECONDS = 60.0


class Registrations:
    def __init__(
        self,
        pool: Pool,
        schema: str,
        *,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        poll_seconds: float = 0.5,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._wait = wait_seconds
        self._poll = poll_seconds

    async def refusal(
        self,
        organization_id: UUID,
        environment_id: UUID,
        database: DatabaseTarget,
        destinations: Sequence[DestinationTarget],
    ) -> str | None:
        """Why the command may not be carried out, or None when all it names is registered
        to its organization exactly as it says."""
        deadline = time.monotonic() + self._wait
        while True:
            reason, final = await self._check(
                organization_id, environment_id, database, destinations
            )
            if reason is None or final or time.monotonic() >= deadline:
                return reason
            await asyncio.sleep(self._poll)

    async def registered_as_recorded(
        self, organization_id: UUID, destinations: Sequence[DestinationTarget]
    ) -> set[UUID]:
        """The ids of ``destinations`` registered to the organization exactly as recorded
        (type and config): the only ones a runner may open its credentials for. A backup
        refused for naming another endpoint keeps what it named; its deletion must not
        send the organization's keys there."""
        async with self._pool.connection() as conn:
            registered = await self._destinations(conn, organization_id, destinations)
        return {
            d.destination_id
            for d in destinations
            if (known := registered.get(d.destination_id)) is not None
            and (known.type, known.config) == (d.type, d.config)
        }

    async def _destinations(
        self, conn: Any, organization_id: UUID, destinations: Sequence[DestinationTarget]
    ) -> dict[UUID, DestinationTarget]:
        """The organization's registered destinations among ``destinations``, by id."""
        rows = await (
            await conn.execute(
                f"SELECT id, name, type, config FROM {self._schema}.destinations "
                "WHERE id = ANY(%s) AND organization_id = %s",
                ([d.destination_id for d in destinations], organization_id),
            )
        ).fetchall()
        return {
            row["id"]: DestinationTarget.of(row["id"], row["name"], row["type"], row["config"])
            for row in rows
        }

    async def files_path(self, organization_id: UUID, environment_id: UUID) -> str | None:
        """The environment's registered files directory (``refusal`` checked that it is
        registered to the organization); None when it has none."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    f"SELECT files_path FROM {self._schema}.environments "
                    "WHERE id = %s AND organization_id = %s",
                    (environment_id, organization_id),
                )
            ).fetchone()
        return None if row is None else row["files_path"]

    async def _check(
        self,
        organization_id: UUID,
        environment_id: UUID,
        database: DatabaseTarget,
        destinations: Sequence[DestinationTarget],
    ) -> tuple[str | None, bool]:
        """(reason, final): ``final`` when waiting cannot change the answer."""
        async with self._pool.connection() as conn:
            environment = await (
                await conn.execute(
                    f"SELECT database FROM {self._schema}.environments "
                    "WHERE id = %s AND organization_id = %s",
                    (environment_id, organization_id),
                )
            ).fetchone()
            registered = await self._destinations(conn, organization_id, destinations)
        if environment is None:
            return f"environment {environment_id} is not registered to the organization", False
        if DatabaseTarget.model_validate(environment["database"]) != database:
            return "the command's database settings are not the environment's registered ones", True
        for destination in destinations:
            known = registered.get(destination.destination_id)
            if known is None:
                return (
                    f"destination {destination.destination_id} is not registered to the "
                    "organization (or was removed)",
                    False,
                )
            if (known.type, known.config) != (destination.type, destination.config):
                return (
                    f"the command's destination {destination.destination_id} is not the "
                    "registered one",
                    True,
                )
        return None, True
