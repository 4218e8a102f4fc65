"""Ids derived from what they name, so every instance derives the same one."""

from __future__ import annotations

import uuid
from datetime import datetime

from tidemark_contracts import format_utc
from tidemark_contracts.backup import BackupType

NAMESPACE = uuid.UUID("5b0c8f3e-2d7a-4e0b-9a51-6c1f3d2e8a47")


def schedule_id(environment_id: uuid.UUID) -> uuid.UUID:
    """The id of the environment's schedule (one per environment; a PUT replaces it)."""
    return uuid.uuid5(NAMESPACE, f"schedule/{environment_id}")


def scheduled_backup_id(
    schedule: uuid.UUID, backup_type: BackupType, fire_at: datetime
) -> uuid.UUID:
    """The id of the backup a schedule fires for ``fire_at`` (aware; compared in UTC): the
    same for every instance, restart and redelivery, so the backup is requested once."""
    return uuid.uuid5(NAMESPACE, f"backup/{schedule}/{backup_type}/{format_utc(fire_at)}")
