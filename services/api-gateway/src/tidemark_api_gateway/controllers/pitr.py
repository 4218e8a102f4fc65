"""An environment's point-in-time recovery coverage."""

from __future__ import annotations

import uuid

from litestar import Controller, get
from tidemark_contracts import utc_now
from tidemark_contracts.wal import WalArchivingStatus

from tidemark_api_gateway import pitr, queries
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import answers
from tidemark_api_gateway.problems import not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.schedules import settings_of
from tidemark_api_gateway.schemas import PitrOut, PitrWindowOut


class PitrController(Controller):
    tags = ["pitr"]

    @get("/environments/{env_id:uuid}/backups/pitr", responses=answers(404))
    async def get_pitr(self, principal: Principal, env_id: uuid.UUID, pool: Pool) -> PitrOut:
        """The window a restore can reach now: from the oldest completed ``full`` backup
        whose WAL continues unbroken into the archive, to the latest commit in it."""
        if await queries.environment(pool, principal.organization_id, env_id) is None:
            raise not_found("environment")
        row = await queries.schedule(pool, principal.organization_id, env_id)
        schedule = settings_of(row) if row is not None else None
        wal_enabled = schedule is not None and schedule.wal_enabled
        async with pool.connection() as conn:
            found = await pitr.windows(conn, env_id)
            archive = await (
                await conn.execute(
                    f"SELECT status, last_archived_at FROM {SCHEMA}.wal_archives "
                    "WHERE environment_id = %s AND organization_id = %s",
                    (env_id, principal.organization_id),
                )
            ).fetchone()
        coverage = pitr.coverage_of(found)
        last = archive["last_archived_at"] if archive is not None else None
        status: WalArchivingStatus = (
            archive["status"] if archive is not None and wal_enabled else "disabled"
        )
        return PitrOut(
            wal_enabled=wal_enabled,
            wal_archiving_status=status,
            coverage_start=coverage.start,
            coverage_end=coverage.end,
            last_archived_at=last,
            lag_seconds=None if last is None else (utc_now() - last).total_seconds(),
            wal_retention_days=schedule.wal_retention_days if schedule is not None else None,
            windows=[PitrWindowOut(start=w.start, end=w.end) for w in found],
        )
