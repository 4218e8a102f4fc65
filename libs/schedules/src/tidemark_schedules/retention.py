"""Retention as one pure function: which of an environment's backups a schedule's
retention settings keep, and why; which they delete, and the rule that no longer keeps
each. API.md "Retention semantics" (``restic forget``'s ``--keep-*`` and
``--keep-within-*`` rules, periods in the schedule's zone, ISO weeks) is the text this
implements; the preview endpoint and the scheduler's enforcement both call it.

The rules, per backup type, over its completed ``scheduled`` backups ordered newest first
(``createdAt``, then id, both descending; so of two backups at the same instant the one
with the greater id counts as the newer):

- ``retain<Period>`` = N (the per-type count, else the general one): each backup's period
  (hour, day, ISO week Monday to Sunday, month) is read from its wall time in the zone
  (the two passes of a repeated hour are one hourly period); the periods that have a
  backup are ranked by their newest backup, and the newest backup of each of the first N
  is kept (reason ``daily`` …). When fewer than N periods have a backup, the oldest
  backup is kept too (``oldest daily`` …), as restic does.
- ``retain<Period>Days`` = D: the window is (newest backup's wall time minus D calendar
  days, newest backup], the start read in the zone (a wall time in a gap with the offset
  before it; one in a fold at its first pass) and excluded, as restic's; the newest backup
  of every period with a backup in it is kept (``within daily`` …).
- manual backups (``manual``), the newest completed backup of each type (``newest``) and
  ``protected`` ones (``pitr base``) are kept whatever the rules; a type without any rule
  (all its counts and every window 0) deletes nothing (``no rule``).

Everything else is deleted; ``Deleted.rule`` names, in words of settings and periods
only, each rule and why it does not keep the backup.
"""

from __future__ import annotations

import bisect
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import get_args
from zoneinfo import ZoneInfo

from tidemark_contracts.backup import BackupStatus, BackupTrigger, BackupType
from tidemark_contracts.schedule import RETENTION_PERIODS, RetentionSettings

BACKUP_TYPES: tuple[BackupType, ...] = get_args(BackupType)


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
    tz = ZoneInfo(zone)
    # newest first: (instant, id) descending; the input's position never decides (ids are
    # unique) but keeps tuples from comparing the facts themselves. POSIX seconds as floats
    # keep distinct microseconds distinct (and ordered) until 2106.
    rows: list[_Row] = sorted(
        (
            (b.created_at.timestamp(), b.backup_id.int, -n, b)
            for n, b in enumerate(backups)
            if b.status == "completed"
        ),
        reverse=True,
    )
    reasons: list[list[str]] = [[] for _ in rows]
    rules: list[str | None] = [None] * len(rows)
    for backup_type in BACKUP_TYPES:
        of_type = [i for i, row in enumerate(rows) if row[3].type == backup_type]
        if not of_type:
            continue
        scheduled = [i for i in of_type if rows[i][3].trigger == "scheduled"]
        if _has_rule(settings, backup_type):
            _apply_rules(rows, scheduled, settings, backup_type, tz, reasons, rules)
        else:
            for i in scheduled:
                reasons[i].append("no rule")
        for i in of_type:
            if rows[i][3].trigger != "scheduled":
                reasons[i].append("manual")
        reasons[of_type[0]].append("newest")
        rules[of_type[0]] = None
    if protected:
        protected_ints = {backup_id.int for backup_id in protected}
        for i, row in enumerate(rows):
            if row[1] in protected_ints:
                reasons[i].append("pitr base")
                rules[i] = None
    keep: list[Kept] = []
    delete: list[Deleted] = []
    freed = 0
    for row, why, rule in zip(rows, reasons, rules, strict=True):
        facts = row[3]
        if rule is None:
            keep.append(Kept(facts, tuple(why)))
        else:
            delete.append(Deleted(facts, rule))
            freed += facts.size_bytes or 0
    return RetentionPlan(
        keep=tuple(keep),
        delete=tuple(delete),
        freed_bytes=freed,
        kept_ids=frozenset(k.backup.backup_id for k in keep),
    )


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
    the oldest completed ``full`` backup; empty when WAL is off. Without a
    ``wal_retention_days`` (WAL on) the window's start is unknown: the oldest completed
    ``full`` backup, which keeps the most."""
    if not wal_enabled:
        return frozenset()
    fulls = sorted(
        (
            (b.created_at.astimezone(UTC), b.backup_id.int, b.backup_id)
            for b in backups
            if b.status == "completed" and b.type == "full"
        ),
        reverse=True,
    )
    if not fulls:
        return frozenset()
    if wal_retention_days is not None:
        start = now.astimezone(UTC) - timedelta(days=wal_retention_days)
        for at, _, backup_id in fulls:
            if at <= start:
                return frozenset({backup_id})
    return frozenset({fulls[-1][2]})


_Row = tuple[float, int, int, BackupFacts]


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else f"{count} {many}"


def _local_seconds(instants: list[float], tz: ZoneInfo) -> list[int]:
    """Each POSIX instant as seconds of its wall time in ``tz`` (seconds since 1970-01-01
    00:00 on the zone's clock). A UTC day that holds several instants and whose start and
    end have the same offset looks it up once (no zone changes its offset twice, and back,
    within one day); any other instant looks up its own."""

    def offset_at(instant: float) -> int:
        delta = datetime.fromtimestamp(instant, tz).utcoffset()
        assert delta is not None  # a ZoneInfo always has one
        return delta.days * 86400 + delta.seconds

    days = [int(instant // 86400) for instant in instants]
    offsets: dict[int, int | None] = {}
    for day, n in Counter(days).items():
        if n > 1:
            first, last = offset_at(day * 86400), offset_at(day * 86400 + 86399)
            offsets[day] = first if first == last else None
    return [
        int(instant // 1)
        + (offset if (offset := offsets.get(day)) is not None else offset_at(instant))
        for instant, day in zip(instants, days, strict=True)
    ]


def _period_keys(period: str, wall: list[int]) -> list[int]:
    """Each wall time's period (hour, day, ISO week from Monday, month) as one integer.
    The two passes of a repeated wall hour are one hourly period."""
    if period == "hourly":
        return [seconds // 3600 for seconds in wall]
    if period == "daily":
        return [seconds // 86400 for seconds in wall]
    if period == "weekly":
        # 1970-01-01 was a Thursday: day + 3 counts from Monday 1969-12-29
        return [(seconds // 86400 + 3) // 7 for seconds in wall]
    months: dict[int, int] = {}
    keys: list[int] = []
    for seconds in wall:
        day = seconds // 86400
        month = months.get(day)
        if month is None:
            calendar = date.fromordinal(day + _EPOCH_ORDINAL)
            month = months[day] = calendar.year * 12 + calendar.month
        keys.append(month)
    return keys


def _window_start(newest: float, days: int, tz: ZoneInfo) -> float:
    """``days`` calendar days before ``newest``'s wall time in ``tz`` (as restic's
    ``AddDate``): a wall time that does not exist is read with the offset before the gap,
    one that exists twice at its first occurrence. POSIX seconds."""
    wall = datetime.fromtimestamp(newest, tz).replace(tzinfo=None) - timedelta(days=days)
    return wall.replace(tzinfo=tz).timestamp()


def _newest_positions(keys: list[int]) -> list[int]:
    """The position of the newest backup of each period (``keys`` newest first), in rank
    order (the period whose newest backup is the newest first)."""
    # a dict keeps the last value written per key: written from the oldest, that is the
    # first (newest) position of each period
    return sorted(dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True)).values())


def _digits(keys: list[int], kept: list[int], within: int) -> list[int]:
    """Per backup, why one rule does not keep it: 0 it keeps it (``kept``), 2 a newer
    backup of its period is kept, 1 otherwise (its period is not kept, or the backup is
    outside the rule's first ``within`` backups)."""
    kept_keys = {keys[p] for p in kept}
    digits = [2 if key in kept_keys else 1 for key in keys[:within]]
    digits += [1] * (len(keys) - within)
    for position in kept:
        digits[position] = 0
    return digits


def _apply_rules(
    rows: list[_Row],
    scheduled: list[int],
    settings: RetentionSettings,
    backup_type: BackupType,
    tz: ZoneInfo,
    reasons: list[list[str]],
    rules: list[str | None],
) -> None:
    """Apply the rules to one type's scheduled backups (``scheduled``: their positions in
    ``rows``, newest first): append each one's rule reasons to ``reasons``, and set
    ``rules`` of each that no rule keeps to the words naming the rules that do not."""
    size = len(scheduled)
    if not size:
        return
    kept: set[int] = set()
    # Per rule, per backup, why that rule does not keep it, as a digit (``_digits``);
    # ``combined`` holds each backup's digits of every rule, base 3.
    words: list[tuple[str, str]] = []
    combined = [0] * size
    instants = [rows[i][0] for i in scheduled]
    wall = _local_seconds(instants, tz)
    keys: dict[str, list[int]] = {}
    newest_of: dict[str, list[int]] = {}
    for period in RETENTION_PERIODS:
        count = settings.count(backup_type, period)
        if count <= 0:
            continue
        periods = _plural(count, f"{period} period", f"{period} periods")
        words.append(
            (
                f"among the newest {periods}",
                f"the newest backup of its {period} period (one of the newest {periods})",
            )
        )
        keys[period] = _period_keys(period, wall)
        newest_of[period] = ranked = _newest_positions(keys[period])
        slots = ranked[:count]
        for position in slots:
            reasons[scheduled[position]].append(period)
        digits = _digits(keys[period], slots, size)
        if len(ranked) < count and digits[-1]:
            # restic: a count not reached keeps the oldest backup too (the longest history
            # the counts allow)
            reasons[scheduled[-1]].append(f"oldest {period}")
            slots = [*slots, size - 1]
            digits[-1] = 0
        kept.update(slots)
        combined = [c * 3 + d for c, d in zip(combined, digits, strict=True)]
    newest = instants[0]
    for period in RETENTION_PERIODS:
        days = settings.window_days(period)
        if days <= 0:
            continue
        start = _window_start(newest, days, tz)
        within = f"within {_plural(days, 'day', 'days')} ({period}) of the newest backup"
        words.append((within, f"the newest backup of its {period} period {within}"))
        reason = f"within {period}"
        # newest first: the backups after ``start`` are a prefix
        inside = size - bisect.bisect_right(instants[::-1], start)
        period_keys = keys.get(period) or _period_keys(period, wall)
        if period in newest_of:
            slots = [p for p in newest_of[period] if p < inside]
        else:
            slots = _newest_positions(period_keys[:inside])
        for position in slots:
            reasons[scheduled[position]].append(reason)
        kept.update(slots)
        digits = _digits(period_keys, slots, inside)
        combined = [c * 3 + d for c, d in zip(combined, digits, strict=True)]
    texts: dict[int, str] = {}
    for code in set(combined):
        left, parts = code, []
        for outside, not_newest in reversed(words):
            left, digit = divmod(left, 3)
            parts.append(outside if digit == 1 else not_newest)
        texts[code] = "not " + ", nor ".join(reversed(parts))
    for position, code in enumerate(combined):
        if position not in kept:
            rules[scheduled[position]] = texts[code]


def _has_rule(settings: RetentionSettings, backup_type: BackupType) -> bool:
    return any(
        settings.count(backup_type, period) > 0 or settings.window_days(period) > 0
        for period in RETENTION_PERIODS
    )


def schedule_plan(
    backups: Sequence[BackupFacts],
    settings: RetentionSettings,
    *,
    zone: str,
    wal_enabled: bool,
    wal_retention_days: int | None,
    now: datetime,
) -> RetentionPlan:
    """What a schedule's retention keeps and deletes of ``backups`` at ``now``: the
    retention function with the PITR base protected. The preview endpoint and the
    scheduler's enforcement both call this, so a preview with the same backups, settings
    and time names exactly what enforcement deletes."""
    protected = pitr_base(
        backups, wal_enabled=wal_enabled, wal_retention_days=wal_retention_days, now=now
    )
    return plan_retention(backups, settings, zone, protected=protected)
