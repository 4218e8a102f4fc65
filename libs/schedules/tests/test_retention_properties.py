"""Retention against a deliberately naive reference written from API.md's "Retention
semantics" (sets and max() over every period, datetime fields for periods, nothing shared
with the implementation), over random histories, zones and settings; and the invariants
that hold whatever the settings."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tidemark_contracts.schedule import RetentionSettings
from tidemark_schedules.retention import BackupFacts, RetentionPlan, plan_retention

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
PERIODS = ["hourly", "daily", "weekly", "monthly"]

# Instants next to DST changes of the zones above (and a year's end), around which
# histories cluster so that folds, gaps and period edges are hit often.
ANCHORS = [
    datetime(2024, 3, 31, 1, tzinfo=UTC),  # Berlin springs forward
    datetime(2024, 10, 27, 1, tzinfo=UTC),  # Berlin falls back
    datetime(2024, 3, 10, 7, tzinfo=UTC),  # New York springs forward
    datetime(2024, 11, 3, 6, tzinfo=UTC),  # New York falls back
    datetime(2024, 4, 6, 15, tzinfo=UTC),  # Lord Howe: 02:00 -> 01:30
    datetime(2024, 10, 5, 15, 30, tzinfo=UTC),  # Lord Howe: 02:00 -> 02:30
    datetime(2024, 12, 31, 23, 30, tzinfo=UTC),  # a year (and ISO week 1) changes
]


# ---- the naive reference ------------------------------------------------------------


def _newest_first_key(b: BackupFacts) -> tuple[datetime, int]:
    return (b.created_at.astimezone(UTC), b.backup_id.int)


def _period(b: BackupFacts, period: str, zone: str) -> tuple[int, ...]:
    local = b.created_at.astimezone(ZoneInfo(zone))
    if period == "hourly":
        return (local.year, local.month, local.day, local.hour)
    if period == "daily":
        return (local.year, local.month, local.day)
    if period == "weekly":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    return (local.year, local.month)


def naive_plan(
    backups: list[BackupFacts],
    rs: RetentionSettings,
    zone: str,
    protected: frozenset[uuid.UUID],
) -> tuple[dict[uuid.UUID, set[str]], set[uuid.UUID]]:
    """{kept id: reasons}, deleted ids, straight from API.md's sentences."""
    completed = [b for b in backups if b.status == "completed"]
    keep: dict[uuid.UUID, set[str]] = {}

    def kept(b: BackupFacts, reason: str) -> None:
        keep.setdefault(b.backup_id, set()).add(reason)

    for backup_type in ("db", "full"):
        of_type = [b for b in completed if b.type == backup_type]
        if not of_type:
            continue
        # "The newest completed backup of each type is always kept"
        kept(max(of_type, key=_newest_first_key), "newest")
        # "manual backups are kept until deleted"
        for b in of_type:
            if b.trigger == "manual":
                kept(b, "manual")
        scheduled = [b for b in of_type if b.trigger == "scheduled"]
        counts = {p: rs.count(backup_type, p) for p in PERIODS}
        windows = {p: rs.window_days(p) for p in PERIODS}
        # "When no rule is set at all, nothing is deleted."
        if not any(counts.values()) and not any(windows.values()):
            for b in scheduled:
                kept(b, "no rule")
            continue
        if not scheduled:
            continue
        for p in PERIODS:
            periods = {_period(b, p, zone) for b in scheduled}
            newest_of = {
                key: max(
                    (b for b in scheduled if _period(b, p, zone) == key), key=_newest_first_key
                )
                for key in periods
            }
            # "the newest backup of each of the last N periods that have a backup"
            ranked = sorted(periods, key=lambda k: _newest_first_key(newest_of[k]), reverse=True)
            for key in ranked[: counts[p]]:
                kept(newest_of[key], p)
            # "a count not reached keeps the oldest backup"
            if counts[p] and len(periods) < counts[p]:
                oldest = min(scheduled, key=_newest_first_key)
                if p not in keep.get(oldest.backup_id, set()):
                    kept(oldest, f"oldest {p}")
            # "keep the newest backup of every period that lies within the …Days window,
            # measured back from the newest backup" (calendar days on the zone's clock;
            # restic's start is excluded)
            if windows[p]:
                newest = max(scheduled, key=_newest_first_key)
                wall = newest.created_at.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
                start = (wall - timedelta(days=windows[p])).replace(tzinfo=ZoneInfo(zone))
                for key in periods:
                    candidate = newest_of[key]
                    if candidate.created_at.astimezone(UTC) > start.astimezone(UTC):
                        kept(candidate, f"within {p}")
    for b in completed:
        if b.backup_id in protected:
            kept(b, "pitr base")
    deleted = {b.backup_id for b in completed} - set(keep)
    return keep, deleted


# ---- strategies ---------------------------------------------------------------------

_SCALES = [
    st.integers(-3 * 3600, 3 * 3600),  # same hour, neighbouring hours, a fold
    st.integers(-3 * 86400, 3 * 86400),
    st.integers(-60 * 86400, 60 * 86400),
    st.integers(-800 * 86400, 800 * 86400),
]


@st.composite
def backups(draw: st.DrawFn, max_size: int = 40) -> list[BackupFacts]:
    anchor = draw(st.sampled_from(ANCHORS))
    size = draw(st.integers(0, max_size))
    out: list[BackupFacts] = []
    for _ in range(size):
        choice = draw(st.integers(0, 9))
        if choice == 0 and out:
            at = draw(st.sampled_from(out)).created_at  # the same instant as another
        elif choice == 1:
            # any aware datetime, in any of the zones, folds and gaps included
            at = draw(
                st.datetimes(
                    min_value=datetime(2023, 1, 1),
                    max_value=datetime(2026, 1, 1),
                    timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
                )
            )
        else:
            seconds = draw(st.sampled_from(_SCALES).flatmap(lambda s: s))
            at = (anchor + timedelta(seconds=seconds)).astimezone(
                ZoneInfo(draw(st.sampled_from(ZONES)))
            )
        out.append(
            BackupFacts(
                backup_id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
                type=draw(st.sampled_from(["db", "full"])),
                trigger=draw(st.sampled_from(["scheduled"] * 4 + ["manual"])),
                status=draw(st.sampled_from(["completed"] * 8 + ["failed", "pending", "deleting"])),
                created_at=at,
                size_bytes=draw(st.none() | st.integers(0, 10**12)),
            )
        )
    unique = {b.backup_id: b for b in out}
    return list(unique.values())


_count = st.none() | st.integers(0, 6)
_days = st.none() | st.integers(0, 3) | st.integers(0, 400)


@st.composite
def retention_settings(draw: st.DrawFn) -> RetentionSettings:
    fields: dict[str, Any] = {}
    for p in PERIODS:
        fields[f"retain_{p}"] = draw(_count)
        fields[f"retain_db_{p}"] = draw(st.none() | _count)
        fields[f"retain_full_{p}"] = draw(st.none() | _count)
        fields[f"retain_{p}_days"] = draw(st.none() | st.none() | _days)
    return RetentionSettings(**fields)


def _protected(draw: st.DrawFn, history: list[BackupFacts]) -> frozenset[uuid.UUID]:
    chosen = draw(st.sets(st.sampled_from(history), max_size=2)) if history else set()
    return frozenset(b.backup_id for b in chosen)


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# ---- properties ---------------------------------------------------------------------


def _as_sets(plan: RetentionPlan) -> tuple[dict[uuid.UUID, set[str]], set[uuid.UUID]]:
    return (
        {k.backup.backup_id: set(k.reasons) for k in plan.keep},
        {d.backup.backup_id for d in plan.delete},
    )


@_settings(200)
@given(history=backups(), rs=retention_settings(), zone=st.sampled_from(ZONES), data=st.data())
def test_plan_equals_the_naive_reading_of_api_md(
    history: list[BackupFacts], rs: RetentionSettings, zone: str, data: st.DataObject
) -> None:
    protected = _protected(data.draw, history)
    plan = plan_retention(history, rs, zone, protected=protected)
    assert _as_sets(plan) == naive_plan(history, rs, zone, protected)


@_settings(100)
@given(history=backups(), rs=retention_settings(), zone=st.sampled_from(ZONES), data=st.data())
def test_invariants(
    history: list[BackupFacts], rs: RetentionSettings, zone: str, data: st.DataObject
) -> None:
    protected = _protected(data.draw, history)
    plan = plan_retention(history, rs, zone, protected=protected)
    completed = {b.backup_id for b in history if b.status == "completed"}
    kept = [k.backup.backup_id for k in plan.keep]
    deleted = [d.backup.backup_id for d in plan.delete]
    # keep and delete partition the completed backups
    assert len(kept) + len(deleted) == len(completed)
    assert set(kept) | set(deleted) == completed
    assert plan.kept_ids == set(kept)
    assert plan.freed_bytes == sum(d.backup.size_bytes or 0 for d in plan.delete)
    # newest first (ties by id), both lists
    for listed in ([k.backup for k in plan.keep], [d.backup for d in plan.delete]):
        keys = [_newest_first_key(b) for b in listed]
        assert keys == sorted(keys, reverse=True)
    for backup_type in ("db", "full"):
        of_type = [b for b in history if b.status == "completed" and b.type == backup_type]
        if of_type:
            newest = max(of_type, key=_newest_first_key)
            assert newest.backup_id in plan.kept_ids
        no_rule = not any(rs.count(backup_type, p) or rs.window_days(p) for p in PERIODS)
        if no_rule:
            assert not [d for d in plan.delete if d.backup.type == backup_type]
    for d in plan.delete:
        assert d.backup.trigger == "scheduled"
        assert d.backup.backup_id not in protected
        assert d.rule.startswith("not ")
        assert str(d.backup.backup_id) not in d.rule
    assert all(k.reasons for k in plan.keep)
    # deterministic: the input's order does not matter
    shuffled = list(history)
    random.Random(data.draw(st.integers())).shuffle(shuffled)
    assert plan_retention(shuffled, rs, zone, protected=protected) == plan


@_settings(100)
@given(history=backups(), rs=retention_settings(), zone=st.sampled_from(ZONES), data=st.data())
def test_applying_a_plan_then_planning_again_deletes_nothing_more(
    history: list[BackupFacts], rs: RetentionSettings, zone: str, data: st.DataObject
) -> None:
    # Holds for restic's rules: every rule keeps the newest backup of each period it
    # keeps, so deleting what no rule keeps changes neither the newest backup (windows),
    # nor which periods rank first, nor whether a count is reached (the oldest rule).
    protected = _protected(data.draw, history)
    plan = plan_retention(history, rs, zone, protected=protected)
    remaining = [b for b in history if b.backup_id not in {d.backup.backup_id for d in plan.delete}]
    again = plan_retention(remaining, rs, zone, protected=protected)
    assert again.delete == ()
    assert again.keep == plan.keep


@_settings(30)
@given(history=backups(), zone=st.sampled_from(ZONES))
def test_no_rule_deletes_nothing(history: list[BackupFacts], zone: str) -> None:
    plan = plan_retention(history, RetentionSettings(), zone)
    assert plan.delete == ()
    assert plan.freed_bytes == 0
