"""Retention as one pure function: which of an environment's backups a schedule's
retention settings keep, and why; which they delete, and the rule that no longer keeps
each. API.md "Retention semantics" (``restic forget``'s ``--keep-*`` and
``--keep-within-*`` rules, periods in the schedule's zone, ISO weeks) is the text this
implements; the preview endpoint and the scheduler's enforcement both call it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime

from tidemark_contracts.backup import BackupStatus, BackupTrigger, BackupType
from tidemark_contracts.schedule import RetentionSettings


@dataclass(frozen=True)
class BackupFacts:
    """What retention needs to know of one backup. ``created_at`` is aware (any zone)."""

    backup_id: uuid.UUID
    type: BackupType
    trigger: BackupTrigger
    status: BackupStatus
    created_at: datetime
    size_bytes: int | None = None


@dataclass(frozen=True)
class Kept:
    backup: BackupFacts
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Deleted:
    backup: BackupFacts
    rule: str
    """The rule that no longer keeps it, in words (for the BackupExpired event)."""


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[Kept, ...] = ()
    delete: tuple[Deleted, ...] = ()
    freed_bytes: int = 0
    kept_ids: Set[uuid.UUID] = field(default_factory=frozenset)


def plan_retention(
    backups: Iterable[BackupFacts],
    settings: RetentionSettings,
    zone: str,
    *,
    protected: Set[uuid.UUID] = frozenset(),
) -> RetentionPlan:
    """Apply ``settings`` (periods in ``zone``) to ``backups``.

    Only ``completed`` backups are listed: scheduled ones are kept or deleted by the rules;
    manual ones are kept (reason ``manual``); ``protected`` ids (the PITR base, see
    ``pitr_base``) are kept (reason ``pitr base``); the newest completed backup of each
    type is kept (reason ``newest``). Backups in any other status are neither kept nor
    deleted (not listed). When no rule is set for a type, nothing of it is deleted.
    Both lists are newest first (ties by id)."""
    raise NotImplementedError


def pitr_base(
    backups: Iterable[BackupFacts],
    *,
    wal_enabled: bool,
    wal_retention_days: int | None,
    now: datetime,
) -> frozenset[uuid.UUID]:
    """The ``full`` backups that are the base of the current PITR window: when WAL is on,
    the newest completed ``full`` backup created at or before ``now`` minus
    ``walRetentionDays`` (the one the window's start needs), else, when none is that old,
    the oldest completed ``full`` backup; empty when WAL is off."""
    raise NotImplementedError
