"""PITR validation for the restore POST (interfaces9.md item 7).

PLACEHOLDER until wal9's module is merged: the gateway keeps no WAL read model on this
branch, so no environment has coverage and every ``pitrTimestamp`` is refused with an
empty coverage. wal9's ``pitr_plan`` (same signature) replaces this file at the merge.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tidemark_platform.database import Connection
from tidemark_recovery.coverage import RestorePlan


@dataclass(frozen=True)
class Coverage:
    start: datetime | None
    end: datetime | None


async def pitr_plan(
    conn: Connection, environment_id: uuid.UUID, at: datetime
) -> RestorePlan | Coverage:
    return Coverage(None, None)
