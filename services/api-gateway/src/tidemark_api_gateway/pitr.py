"""Point-in-time recovery from the gateway's read models: an environment's coverage (the
endpoint) and the plan of a restore to a time (the restore POST's validation). The rule
itself is ``tidemark_recovery.coverage``'s; this module only reads its inputs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import DictRow
from tidemark_platform.database import Connection
from tidemark_recovery.coverage import (
    ArchivedSegment,
    BaseBackup,
    RestorePlan,
    Window,
    coverage_windows,
    current_window,
    plan_restore,
)

from tidemark_api_gateway.readmodel import SCHEMA

Conn = Connection


@dataclass(frozen=True)
class Coverage:
    """The times a restore can reach now (both None when none)."""

    start: datetime | None
    end: datetime | None


async def bases(conn: Conn, environment_id: uuid.UUID) -> list[BaseBackup]:
    """The environment's completed, non-deleted ``full`` backups with their WAL range."""
    cursor = await conn.execute(
        f"SELECT id, completed_at, wal_start_lsn, wal_end_lsn, wal_timeline "
        f"FROM {SCHEMA}.backups WHERE environment_id = %s AND type = 'full' "
        "AND status = 'completed' AND wal_start_lsn IS NOT NULL AND wal_end_lsn IS NOT NULL "
        "AND completed_at IS NOT NULL",
        (environment_id,),
    )
    return [
        BaseBackup(
            backup_id=row["id"],
            completed_at=row["completed_at"],
            wal_start_lsn=row["wal_start_lsn"],
            wal_end_lsn=row["wal_end_lsn"],
            # Backups recorded before the timeline was: the first timeline.
            timeline=row["wal_timeline"] or 1,
        )
        for row in await cursor.fetchall()
    ]


async def segments(conn: Conn, environment_id: uuid.UUID) -> list[ArchivedSegment]:
    """The environment's archived segments that a restore can fetch: at least one copy is
    in a destination its organization still has registered (a removed destination's
    copies are out of reach)."""
    cursor = await conn.execute(
        f"SELECT s.segment, s.first_record_at, s.last_record_at, s.archived_at "
        f"FROM {SCHEMA}.wal_segments s WHERE s.environment_id = %s AND EXISTS (SELECT 1 FROM "
        "jsonb_array_elements(s.copies) c "
        f"JOIN {SCHEMA}.destinations d ON d.id::text = c->>'destinationId') "
        "ORDER BY s.timeline, s.segno",
        (environment_id,),
    )
    return [
        ArchivedSegment(
            segment=row["segment"],
            last_record_at=row["last_record_at"],
            first_record_at=row["first_record_at"],
            archived_at=row["archived_at"],
        )
        for row in await cursor.fetchall()
    ]


async def resets(conn: Conn, environment_id: uuid.UUID) -> list[datetime]:
    """When the environment's archive was reset (a gap with no ``resumedAt``: a new slot,
    e.g. after a restore): no coverage spans one."""
    cursor = await conn.execute(
        f"SELECT detected_at FROM {SCHEMA}.wal_gaps "
        "WHERE environment_id = %s AND resumed_at IS NULL ORDER BY detected_at",
        (environment_id,),
    )
    return [row["detected_at"] for row in await cursor.fetchall()]


async def wal_destinations(
    conn: Conn, organization_id: uuid.UUID, environment_id: uuid.UUID, names: Sequence[str]
) -> list[DictRow]:
    """The organization's registered destinations that hold a copy of one of the
    segments ``names`` (what a restore replaying them fetches from)."""
    cursor = await conn.execute(
        f"SELECT DISTINCT d.* FROM {SCHEMA}.wal_segments s "
        "CROSS JOIN LATERAL jsonb_array_elements(s.copies) c "
        f"JOIN {SCHEMA}.destinations d ON d.id::text = c->>'destinationId' "
        "WHERE d.organization_id = %s AND s.environment_id = %s AND s.segment = ANY(%s) "
        "ORDER BY d.id",
        (organization_id, environment_id, list(names)),
    )
    return await cursor.fetchall()


async def windows(conn: Conn, environment_id: uuid.UUID) -> list[Window]:
    return coverage_windows(
        await bases(conn, environment_id),
        await segments(conn, environment_id),
        await resets(conn, environment_id),
    )


def coverage_of(found: list[Window]) -> Coverage:
    window = current_window(found)
    return Coverage(None, None) if window is None else Coverage(window.start, window.end)


async def pitr_plan(conn: Conn, environment_id: uuid.UUID, at: datetime) -> RestorePlan | Coverage:
    """The plan of a restore of the environment to ``at`` (the newest base before it and
    the segments to replay), or, when no window contains ``at``, the coverage (for the
    422's detail). The caller has checked the environment is the organization's."""
    base_list = await bases(conn, environment_id)
    segment_list = await segments(conn, environment_id)
    gaps = await resets(conn, environment_id)
    plan = plan_restore(at, base_list, segment_list, gaps)
    if plan is not None:
        return plan
    return coverage_of(coverage_windows(base_list, segment_list, gaps))
