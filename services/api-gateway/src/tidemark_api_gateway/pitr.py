"""Point-in-time recovery from the gateway's read models: an environment's coverage (the
endpoint) and the plan of a restore to a time (the restore POST's validation). The rule
itself is ``tidemark_recovery.coverage``'s; this module only reads its inputs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

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
    cursor = await conn.execute(
        f"SELECT segment, first_record_at, last_record_at FROM {SCHEMA}.wal_segments "
        "WHERE environment_id = %s ORDER BY timeline, segno",
        (environment_id,),
    )
    return [
        ArchivedSegment(
            segment=row["segment"],
            last_record_at=row["last_record_at"],
            first_record_at=row["first_record_at"],
        )
        for row in await cursor.fetchall()
    ]


async def windows(conn: Conn, environment_id: uuid.UUID) -> list[Window]:
    return coverage_windows(await bases(conn, environment_id), await segments(conn, environment_id))


def coverage_of(found: list[Window]) -> Coverage:
    window = current_window(found)
    return Coverage(None, None) if window is None else Coverage(window.start, window.end)


async def pitr_plan(conn: Conn, environment_id: uuid.UUID, at: datetime) -> RestorePlan | Coverage:
    """The plan of a restore of the environment to ``at`` (the newest base before it and
    the segments to replay), or, when no window contains ``at``, the coverage (for the
    422's detail). The caller has checked the environment is the organization's."""
    base_list = await bases(conn, environment_id)
    segment_list = await segments(conn, environment_id)
    plan = plan_restore(at, base_list, segment_list)
    if plan is not None:
        return plan
    return coverage_of(coverage_windows(base_list, segment_list))
