"""Retention's rules on fixed histories: restic's own worked examples (its forget
documentation and the golden files of its policy tests), and each of our additions
(types, manual, newest, PITR base, the words of a deleted backup's rule)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from tidemark_contracts.backup import BackupTrigger, BackupType
from tidemark_contracts.schedule import RetentionSettings
from tidemark_schedules.retention import BackupFacts, RetentionPlan, pitr_base, plan_retention


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _backup(
    at: datetime | str,
    *,
    type: BackupType = "db",
    trigger: BackupTrigger = "scheduled",
    status: str = "completed",
    size: int | None = 1,
    backup_id: uuid.UUID | None = None,
) -> BackupFacts:
    return BackupFacts(
        backup_id=backup_id or uuid.uuid4(),
        type=type,
        trigger=trigger,
        status=status,  # type: ignore[arg-type]
        created_at=_utc(at) if isinstance(at, str) else at,
        size_bytes=size,
    )


def _kept_times(plan: RetentionPlan) -> list[str]:
    return [k.backup.created_at.strftime("%Y-%m-%d %H:%M") for k in plan.keep]


# doc/060_forget.rst: "backups every weekday for the past two weeks, and on Fridays an
# additional backup" (Wednesday 2025-04-30 missed)
FORGET_DOC = [
    "2025-04-21 11:00",
    "2025-04-22 11:00",
    "2025-04-23 11:00",
    "2025-04-24 11:00",
    "2025-04-25 11:00",
    "2025-04-25 23:00",
    "2025-04-28 11:00",
    "2025-04-29 11:00",
    "2025-05-01 11:00",
    "2025-05-02 11:00",
    "2025-05-02 23:00",
]


def test_forget_doc_keep_daily_5_keeps_one_per_day_of_the_last_five_days_with_a_backup() -> None:
    # The page lists the kept Friday as "8a603ddf 2025-04-25 23:00" and removes
    # "8a603ddf 2025-04-25 11:00": one id printed twice; by time, 23:00 is kept.
    plan = plan_retention(
        [_backup(t) for t in FORGET_DOC], RetentionSettings(retain_daily=5), "UTC"
    )
    assert _kept_times(plan) == [
        "2025-05-02 23:00",
        "2025-05-01 11:00",
        "2025-04-29 11:00",
        "2025-04-28 11:00",
        "2025-04-25 23:00",
    ]
    assert [k.reasons for k in plan.keep] == [("daily", "newest")] + [("daily",)] * 4
    assert sorted(d.backup.created_at.strftime("%Y-%m-%d %H:%M") for d in plan.delete) == [
        "2025-04-21 11:00",
        "2025-04-22 11:00",
        "2025-04-23 11:00",
        "2025-04-24 11:00",
        "2025-04-25 11:00",
        "2025-05-02 11:00",
    ]


def test_forget_doc_keep_within_daily_7d_keeps_nothing_of_the_first_week() -> None:
    plan = plan_retention(
        [_backup(t) for t in FORGET_DOC], RetentionSettings(retain_daily_days=7), "UTC"
    )
    assert _kept_times(plan) == [
        "2025-05-02 23:00",
        "2025-05-01 11:00",
        "2025-04-29 11:00",
        "2025-04-28 11:00",
    ]
    assert [k.reasons for k in plan.keep] == [("within daily", "newest")] + [("within daily",)] * 3
    assert len(plan.delete) == 7


def test_forget_doc_years_of_dailies_keep_7_daily_4_more_weekly_11_or_12_monthly() -> None:
    # "forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 would keep the most recent 7
    # daily snapshots and 4 last-day-of-the-week ones (since the 7 dailies already include
    # 1 weekly). Additionally, 12 or 11 last-day-of-the-month snapshots" (years aside).
    # the history ends on a Sunday, so the 7 dailies are one whole week
    end = datetime(2022, 12, 25, 3, tzinfo=UTC)
    backups = [_backup(end - timedelta(days=n)) for n in range(3 * 365)]
    plan = plan_retention(
        backups, RetentionSettings(retain_daily=7, retain_weekly=5, retain_monthly=12), "UTC"
    )
    daily = [k for k in plan.keep if "daily" in k.reasons]
    weekly = [k for k in plan.keep if "weekly" in k.reasons and k not in daily]
    monthly = [k for k in plan.keep if "monthly" in k.reasons and k not in daily + weekly]
    assert len(daily) == 7
    assert len(weekly) == 4
    assert len(monthly) in (11, 12)
    assert len(plan.keep) == 7 + 4 + len(monthly)


# restic's internal/data/snapshot_policy_test.go TestApplyPolicy: its snapshot list (UTC)
# and, for each of its policies that Tidemark has (hourly, daily, weekly, monthly counts),
# the kept snapshots and reasons of its golden file testdata/policy_keep_snapshots_<n>.
RESTIC_SNAPSHOTS = [
    "2014-09-01 10:20:30",
    "2014-09-02 10:20:30",
    "2014-09-05 10:20:30",
    "2014-09-06 10:20:30",
    "2014-09-08 10:20:30",
    "2014-09-09 10:20:30",
    "2014-09-10 10:20:30",
    "2014-09-11 10:20:30",
    "2014-09-20 10:20:30",
    "2014-09-22 10:20:30",
    "2014-08-08 10:20:30",
    "2014-08-10 10:20:30",
    "2014-08-12 10:20:30",
    "2014-08-13 10:20:30",
    "2014-08-13 10:20:30.1",
    "2014-08-15 10:20:30",
    "2014-08-18 10:20:30",
    "2014-08-20 10:20:30",
    "2014-08-21 10:20:30",
    "2014-08-22 10:20:30",
    "2014-10-01 10:20:30",
    "2014-10-02 10:20:30",
    "2014-10-05 10:20:30",
    "2014-10-06 10:20:30",
    "2014-10-08 10:20:30",
    "2014-10-09 10:20:30",
    "2014-10-10 10:20:30",
    "2014-10-11 10:20:30",
    "2014-10-20 10:20:30",
    "2014-10-22 10:20:30",
    "2014-11-08 10:20:30",
    "2014-11-10 10:20:30",
    "2014-11-12 10:20:30",
    "2014-11-13 10:20:30",
    "2014-11-13 10:20:30.1",
    "2014-11-15 10:20:30",
    "2014-11-18 10:20:30",
    "2014-11-20 10:20:30",
    "2014-11-21 10:20:30",
    "2014-11-22 10:20:30",
    "2015-09-01 10:20:30",
    "2015-09-02 10:20:30",
    "2015-09-05 10:20:30",
    "2015-09-06 10:20:30",
    "2015-09-08 10:20:30",
    "2015-09-09 10:20:30",
    "2015-09-10 10:20:30",
    "2015-09-11 10:20:30",
    "2015-09-20 10:20:30",
    "2015-09-22 10:20:30",
    "2015-08-08 10:20:30",
    "2015-08-10 10:20:30",
    "2015-08-12 10:20:30",
    "2015-08-13 10:20:30",
    "2015-08-13 10:20:30.1",
    "2015-08-15 10:20:30",
    "2015-08-18 10:20:30",
    "2015-08-20 10:20:30",
    "2015-08-21 10:20:30",
    "2015-08-22 10:20:30",
    "2015-10-01 10:20:30",
    "2015-10-02 10:20:30",
    "2015-10-05 10:20:30",
    "2015-10-06 10:20:30",
    "2015-10-08 10:20:30",
    "2015-10-09 10:20:30",
    "2015-10-10 10:20:30",
    "2015-10-11 10:20:30",
    "2015-10-20 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-11-08 10:20:30",
    "2015-11-10 10:20:30",
    "2015-11-12 10:20:30",
    "2015-11-13 10:20:30",
    "2015-11-13 10:20:30.1",
    "2015-11-15 10:20:30",
    "2015-11-18 10:20:30",
    "2015-11-20 10:20:30",
    "2015-11-21 10:20:30",
    "2015-11-22 10:20:30",
    "2016-01-01 01:02:03",
    "2016-01-01 01:03:03",
    "2016-01-01 07:08:03",
    "2016-01-03 07:02:03",
    "2016-01-04 10:23:03",
    "2016-01-04 11:23:03",
    "2016-01-04 12:23:03",
    "2016-01-04 12:24:03",
    "2016-01-04 12:28:03",
    "2016-01-04 12:30:03",
    "2016-01-04 16:23:03",
    "2016-01-05 09:02:03",
    "2016-01-06 08:02:03",
    "2016-01-07 10:02:03",
    "2016-01-08 20:02:03",
    "2016-01-09 21:02:03",
    "2016-01-12 21:02:03",
    "2016-01-12 21:08:03",
    "2016-01-18 12:02:03",
]

RESTIC_GOLDEN = [
    # policy_keep_snapshots_5
    (
        RetentionSettings(retain_hourly=20),
        [
            ("2016-01-18 12:02:03", ("hourly",)),
            ("2016-01-12 21:08:03", ("hourly",)),
            ("2016-01-09 21:02:03", ("hourly",)),
            ("2016-01-08 20:02:03", ("hourly",)),
            ("2016-01-07 10:02:03", ("hourly",)),
            ("2016-01-06 08:02:03", ("hourly",)),
            ("2016-01-05 09:02:03", ("hourly",)),
            ("2016-01-04 16:23:03", ("hourly",)),
            ("2016-01-04 12:30:03", ("hourly",)),
            ("2016-01-04 11:23:03", ("hourly",)),
            ("2016-01-04 10:23:03", ("hourly",)),
            ("2016-01-03 07:02:03", ("hourly",)),
            ("2016-01-01 07:08:03", ("hourly",)),
            ("2016-01-01 01:03:03", ("hourly",)),
            ("2015-11-22 10:20:30", ("hourly",)),
            ("2015-11-21 10:20:30", ("hourly",)),
            ("2015-11-20 10:20:30", ("hourly",)),
            ("2015-11-18 10:20:30", ("hourly",)),
            ("2015-11-15 10:20:30", ("hourly",)),
            ("2015-11-13 10:20:30.1", ("hourly",)),
        ],
    ),
    # policy_keep_snapshots_6
    (
        RetentionSettings(retain_daily=3),
        [
            ("2016-01-18 12:02:03", ("daily",)),
            ("2016-01-12 21:08:03", ("daily",)),
            ("2016-01-09 21:02:03", ("daily",)),
        ],
    ),
    # policy_keep_snapshots_7
    (
        RetentionSettings(retain_daily=10),
        [
            ("2016-01-18 12:02:03", ("daily",)),
            ("2016-01-12 21:08:03", ("daily",)),
            ("2016-01-09 21:02:03", ("daily",)),
            ("2016-01-08 20:02:03", ("daily",)),
            ("2016-01-07 10:02:03", ("daily",)),
            ("2016-01-06 08:02:03", ("daily",)),
            ("2016-01-05 09:02:03", ("daily",)),
            ("2016-01-04 16:23:03", ("daily",)),
            ("2016-01-03 07:02:03", ("daily",)),
            ("2016-01-01 07:08:03", ("daily",)),
        ],
    ),
    # policy_keep_snapshots_8
    (
        RetentionSettings(retain_daily=30),
        [
            ("2016-01-18 12:02:03", ("daily",)),
            ("2016-01-12 21:08:03", ("daily",)),
            ("2016-01-09 21:02:03", ("daily",)),
            ("2016-01-08 20:02:03", ("daily",)),
            ("2016-01-07 10:02:03", ("daily",)),
            ("2016-01-06 08:02:03", ("daily",)),
            ("2016-01-05 09:02:03", ("daily",)),
            ("2016-01-04 16:23:03", ("daily",)),
            ("2016-01-03 07:02:03", ("daily",)),
            ("2016-01-01 07:08:03", ("daily",)),
            ("2015-11-22 10:20:30", ("daily",)),
            ("2015-11-21 10:20:30", ("daily",)),
            ("2015-11-20 10:20:30", ("daily",)),
            ("2015-11-18 10:20:30", ("daily",)),
            ("2015-11-15 10:20:30", ("daily",)),
            ("2015-11-13 10:20:30.1", ("daily",)),
            ("2015-11-12 10:20:30", ("daily",)),
            ("2015-11-10 10:20:30", ("daily",)),
            ("2015-11-08 10:20:30", ("daily",)),
            ("2015-10-22 10:20:30", ("daily",)),
            ("2015-10-20 10:20:30", ("daily",)),
            ("2015-10-11 10:20:30", ("daily",)),
            ("2015-10-10 10:20:30", ("daily",)),
            ("2015-10-09 10:20:30", ("daily",)),
            ("2015-10-08 10:20:30", ("daily",)),
            ("2015-10-06 10:20:30", ("daily",)),
            ("2015-10-05 10:20:30", ("daily",)),
            ("2015-10-02 10:20:30", ("daily",)),
            ("2015-10-01 10:20:30", ("daily",)),
            ("2015-09-22 10:20:30", ("daily",)),
        ],
    ),
    # policy_keep_snapshots_11
    (
        RetentionSettings(retain_weekly=2),
        [
            ("2016-01-18 12:02:03", ("weekly",)),
            ("2016-01-12 21:08:03", ("weekly",)),
        ],
    ),
    # policy_keep_snapshots_12
    (
        RetentionSettings(retain_weekly=4),
        [
            ("2016-01-18 12:02:03", ("weekly",)),
            ("2016-01-12 21:08:03", ("weekly",)),
            ("2016-01-09 21:02:03", ("weekly",)),
            ("2016-01-03 07:02:03", ("weekly",)),
        ],
    ),
    # policy_keep_snapshots_13
    (
        RetentionSettings(retain_daily=3, retain_weekly=4),
        [
            ("2016-01-18 12:02:03", ("daily", "weekly")),
            ("2016-01-12 21:08:03", ("daily", "weekly")),
            ("2016-01-09 21:02:03", ("daily", "weekly")),
            ("2016-01-03 07:02:03", ("weekly",)),
        ],
    ),
    # policy_keep_snapshots_14
    (
        RetentionSettings(retain_monthly=6),
        [
            ("2016-01-18 12:02:03", ("monthly",)),
            ("2015-11-22 10:20:30", ("monthly",)),
            ("2015-10-22 10:20:30", ("monthly",)),
            ("2015-09-22 10:20:30", ("monthly",)),
            ("2015-08-22 10:20:30", ("monthly",)),
            ("2014-11-22 10:20:30", ("monthly",)),
        ],
    ),
    # policy_keep_snapshots_15
    (
        RetentionSettings(retain_daily=2, retain_weekly=2, retain_monthly=6),
        [
            ("2016-01-18 12:02:03", ("daily", "weekly", "monthly")),
            ("2016-01-12 21:08:03", ("daily", "weekly")),
            ("2015-11-22 10:20:30", ("monthly",)),
            ("2015-10-22 10:20:30", ("monthly",)),
            ("2015-09-22 10:20:30", ("monthly",)),
            ("2015-08-22 10:20:30", ("monthly",)),
            ("2014-11-22 10:20:30", ("monthly",)),
        ],
    ),
]


@pytest.mark.parametrize(("settings", "expected"), RESTIC_GOLDEN)
def test_restic_policy_golden_files(
    settings: RetentionSettings, expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    backups = [_backup(t) for t in RESTIC_SNAPSHOTS]
    plan = plan_retention(backups, settings, "UTC")
    got = Counter(
        (
            k.backup.created_at.strftime("%Y-%m-%d %H:%M:%S.%f").removesuffix(".000000"),
            tuple(r for r in k.reasons if r != "newest"),
        )
        for k in plan.keep
    )
    want = Counter(
        (datetime.fromisoformat(t).strftime("%Y-%m-%d %H:%M:%S.%f").removesuffix(".000000"), r)
        for t, r in expected
    )
    assert got == want
    assert len(plan.keep) + len(plan.delete) == len(RESTIC_SNAPSHOTS)


def _reasons(plan: RetentionPlan) -> dict[uuid.UUID, tuple[str, ...]]:
    return {k.backup.backup_id: k.reasons for k in plan.keep}


def _deleted(plan: RetentionPlan) -> set[uuid.UUID]:
    return {d.backup.backup_id for d in plan.delete}


def test_a_count_not_reached_keeps_the_oldest_backup_too() -> None:
    oldest = _backup("2026-01-01 01:00")
    older_day = _backup("2026-01-01 02:00")
    newest = _backup("2026-01-02 01:00")
    plan = plan_retention([oldest, older_day, newest], RetentionSettings(retain_daily=5), "UTC")
    assert _reasons(plan) == {
        newest.backup_id: ("daily", "newest"),
        older_day.backup_id: ("daily",),
        oldest.backup_id: ("oldest daily",),
    }


def test_a_count_reached_does_not_keep_the_oldest() -> None:
    oldest = _backup("2026-01-01 01:00")
    plan = plan_retention(
        [oldest, _backup("2026-01-01 02:00"), _backup("2026-01-02 01:00")],
        RetentionSettings(retain_daily=2),
        "UTC",
    )
    assert _deleted(plan) == {oldest.backup_id}
    assert plan.delete[0].rule == (
        "not the newest backup of its daily period (one of the newest 2 daily periods)"
    )


def test_the_oldest_that_is_its_periods_newest_is_kept_by_its_period_not_as_oldest() -> None:
    oldest = _backup("2026-01-01 01:00")
    plan = plan_retention(
        [oldest, _backup("2026-01-02 01:00")], RetentionSettings(retain_daily=5), "UTC"
    )
    assert _reasons(plan)[oldest.backup_id] == ("daily",)


def test_a_per_type_count_overrides_the_general_one() -> None:
    days = [f"2026-01-0{d} 02:00" for d in range(1, 6)]
    db = [_backup(t, type="db") for t in days]
    full = [_backup(t, type="full") for t in days]
    plan = plan_retention(db + full, RetentionSettings(retain_daily=1, retain_full_daily=3), "UTC")
    assert _deleted(plan) == {b.backup_id for b in db[:4] + full[:2]}


def test_a_per_type_count_of_zero_turns_that_types_rule_off() -> None:
    days = [f"2026-01-0{d} 02:00" for d in range(1, 6)]
    db = [_backup(t, type="db") for t in days]
    full = [_backup(t, type="full") for t in days]
    plan = plan_retention(db + full, RetentionSettings(retain_daily=2, retain_full_daily=0), "UTC")
    assert _deleted(plan) == {b.backup_id for b in db[:3]}
    assert _reasons(plan)[full[0].backup_id] == ("no rule",)


def test_windows_apply_to_both_types() -> None:
    days = [f"2026-01-{d:02d} 02:00" for d in range(1, 11)]
    db = [_backup(t, type="db") for t in days]
    full = [_backup(t, type="full") for t in days]
    plan = plan_retention(db + full, RetentionSettings(retain_daily_days=3), "UTC")
    # (2026-01-07 02:00, 2026-01-10 02:00]: the 8th, 9th and 10th
    assert _deleted(plan) == {b.backup_id for b in db[:7] + full[:7]}
    assert plan.delete[0].rule == "not within 3 days (daily) of the newest backup"


def test_manual_backups_are_kept_and_fill_no_period() -> None:
    scheduled = [_backup(f"2026-01-0{d} 02:00") for d in range(1, 4)]
    manual = _backup("2026-01-05 02:00", trigger="manual")
    old_manual = _backup("2025-01-05 02:00", trigger="manual")
    plan = plan_retention(
        [*scheduled, manual, old_manual], RetentionSettings(retain_daily=1), "UTC"
    )
    assert _reasons(plan) == {
        manual.backup_id: ("manual", "newest"),
        old_manual.backup_id: ("manual",),
        scheduled[2].backup_id: ("daily",),
    }
    assert [d.backup.backup_id for d in plan.delete] == [
        scheduled[1].backup_id,
        scheduled[0].backup_id,
    ]


def test_the_newest_of_each_type_is_kept_and_its_rule_windows_start_from_the_newest_scheduled() -> (
    None
):
    db = _backup("2026-01-10 02:00", type="db")
    old_full = _backup("2025-06-01 02:00", type="full")
    older_full = _backup("2025-05-01 02:00", type="full")
    plan = plan_retention([db, old_full, older_full], RetentionSettings(retain_daily_days=1), "UTC")
    # the window of full backups is measured from the newest full, not from the db one
    assert _reasons(plan)[old_full.backup_id] == ("within daily", "newest")
    assert _deleted(plan) == {older_full.backup_id}


def test_backups_not_completed_are_neither_kept_nor_deleted() -> None:
    others = [
        _backup(f"2026-01-0{n + 1} 02:00", status=status)
        for n, status in enumerate(["pending", "running", "failed", "deleting", "deleted"])
    ]
    done = _backup("2025-12-01 02:00")
    plan = plan_retention([*others, done], RetentionSettings(retain_daily=1), "UTC")
    assert [k.backup.backup_id for k in plan.keep] == [done.backup_id]
    assert plan.delete == ()
    assert _reasons(plan)[done.backup_id] == ("daily", "newest")


def test_protected_backups_are_kept_as_pitr_base() -> None:
    fulls = [_backup(f"2026-01-0{d} 02:00", type="full") for d in range(1, 5)]
    plan = plan_retention(
        fulls,
        RetentionSettings(retain_daily=1),
        "UTC",
        protected=frozenset({fulls[0].backup_id, uuid.uuid4()}),
    )
    assert _reasons(plan)[fulls[0].backup_id] == ("pitr base",)
    assert _deleted(plan) == {fulls[1].backup_id, fulls[2].backup_id}


def test_no_rule_at_all_deletes_nothing() -> None:
    backups = [_backup(f"2026-01-0{d} 0{h}:00") for d in range(1, 5) for h in range(3)]
    plan = plan_retention(backups, RetentionSettings(retain_daily=0, retain_hourly_days=0), "UTC")
    assert plan.delete == ()
    assert plan.freed_bytes == 0
    assert len(plan.keep) == len(backups)
    assert {k.reasons for k in plan.keep} == {("no rule",), ("no rule", "newest")}


def test_freed_bytes_and_kept_ids() -> None:
    backups = [_backup(f"2026-01-0{d} 02:00", size=d * 100) for d in range(1, 5)]
    backups.append(_backup("2025-12-01 02:00", size=None))
    plan = plan_retention(backups, RetentionSettings(retain_daily=2), "UTC")
    assert plan.freed_bytes == 100 + 200
    assert plan.kept_ids == {b.backup_id for b in backups[2:4]}


def test_the_rule_names_every_rule_in_words_of_settings_and_periods() -> None:
    # hours 00:00 .. 05:00 of two days, then one old backup
    backups = [_backup(f"2026-01-0{d} 0{h}:00") for d in (1, 2) for h in range(6)]
    old = _backup("2025-11-01 02:00")
    settings = RetentionSettings(
        retain_hourly=3, retain_daily=1, retain_weekly_days=30, retain_monthly=1
    )
    plan = plan_retention([*backups, old], settings, "UTC")
    rules = {d.backup.created_at.strftime("%m-%d %H"): d.rule for d in plan.delete}
    assert rules["01-02 01"] == (
        "not among the newest 3 hourly periods, "
        "nor the newest backup of its daily period (one of the newest daily period), "
        "nor the newest backup of its monthly period (one of the newest monthly period), "
        "nor the newest backup of its weekly period within 30 days (weekly) of the newest "
        "backup"
    )
    assert rules["11-01 02"] == (
        "not among the newest 3 hourly periods, nor among the newest daily period, "
        "nor among the newest monthly period, "
        "nor within 30 days (weekly) of the newest backup"
    )
    for deleted in plan.delete:
        assert str(deleted.backup.backup_id) not in deleted.rule
        assert deleted.backup.backup_id.hex not in deleted.rule


def test_equal_times_order_by_id_whatever_the_input_order() -> None:
    at = "2026-01-01 02:00"
    low = _backup(at, backup_id=uuid.UUID(int=1))
    high = _backup(at, backup_id=uuid.UUID(int=2))
    for backups in ([low, high], [high, low]):
        plan = plan_retention(backups, RetentionSettings(retain_daily=1), "UTC")
        assert [k.backup for k in plan.keep] == [high]
        assert [d.backup for d in plan.delete] == [low]


def test_lists_are_newest_first_across_types_and_zones() -> None:
    a = _backup(datetime(2026, 1, 1, 3, tzinfo=ZoneInfo("Europe/Berlin")), type="full")
    b = _backup(datetime(2026, 1, 1, 2, 30, tzinfo=UTC), type="db")  # later than a (02:00Z)
    c = _backup(datetime(2026, 1, 1, 1, tzinfo=UTC), type="db")
    plan = plan_retention([c, a, b], RetentionSettings(), "UTC")
    assert [k.backup for k in plan.keep] == [b, a, c]


# With a count of 2 and an older backup in a third period: when the two backups under
# test share a period, the older of them is deleted; when they do not, the old one is.


def test_days_are_the_zones_days() -> None:
    old = _backup("2025-06-01 12:00")
    late = _backup("2026-01-01 23:30")  # 2026-01-02 05:00 in Kolkata
    early = _backup("2026-01-02 00:30")  # 2026-01-02 06:00 in Kolkata
    settings = RetentionSettings(retain_daily=2)
    assert _deleted(plan_retention([old, late, early], settings, "UTC")) == {old.backup_id}
    assert _deleted(plan_retention([old, late, early], settings, "Asia/Kolkata")) == {
        late.backup_id
    }


def test_weeks_are_iso_weeks_monday_to_sunday_in_the_zone() -> None:
    old = _backup("2025-06-01 12:00")
    settings = RetentionSettings(retain_weekly=2)
    sunday, monday = _backup("2026-01-04 12:00"), _backup("2026-01-05 12:00")
    assert _deleted(plan_retention([old, sunday, monday], settings, "UTC")) == {old.backup_id}
    # Monday 04:30 UTC is Sunday 23:30 in New York: the week before Monday noon there
    sunday_night = _backup("2026-01-05 04:30")
    assert _deleted(plan_retention([old, sunday_night, monday], settings, "UTC")) == {
        sunday_night.backup_id
    }
    assert _deleted(plan_retention([old, sunday_night, monday], settings, "America/New_York")) == {
        old.backup_id
    }
    # 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both in ISO week 2020-W53
    thursday, sunday_after = _backup("2020-12-31 12:00"), _backup("2021-01-03 12:00")
    old = _backup("2020-06-01 12:00")
    assert _deleted(plan_retention([old, thursday, sunday_after], settings, "UTC")) == {
        thursday.backup_id
    }


def test_the_repeated_hour_of_a_fall_back_is_one_hourly_period() -> None:
    # Europe/Berlin 2024-10-27: 02:10 CEST (00:10Z) and 02:10 CET (01:10Z)
    old = _backup("2024-10-26 12:00")
    first, second = _backup("2024-10-27 00:10"), _backup("2024-10-27 01:10")
    settings = RetentionSettings(retain_hourly=2)
    assert _deleted(plan_retention([old, first, second], settings, "Europe/Berlin")) == {
        first.backup_id
    }
    assert _deleted(plan_retention([old, first, second], settings, "UTC")) == {old.backup_id}


def test_windows_are_calendar_days_on_the_zones_clock() -> None:
    # Europe/Berlin springs forward on 2024-03-31: one calendar day before 12:00 CEST
    # (10:00Z) is 2024-03-30 12:00 CET (11:00Z), 23 hours earlier
    newest = _backup("2024-03-31 10:00")
    inside = _backup("2024-03-30 11:30")
    outside = _backup("2024-03-30 10:30")  # 23.5 hours before, but before 12:00 CET
    boundary = _backup("2024-03-30 11:00")  # the start itself is outside, as restic's
    settings = RetentionSettings(retain_hourly_days=1)
    plan = plan_retention([newest, inside, outside, boundary], settings, "Europe/Berlin")
    assert _deleted(plan) == {outside.backup_id, boundary.backup_id}
    plan = plan_retention([newest, inside, outside, boundary], settings, "UTC")
    assert _deleted(plan) == {boundary.backup_id}


def test_ten_thousand_backups_plan_well_under_100_ms() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    backups = [
        _backup(start + timedelta(hours=n), type="full" if n % 24 == 0 else "db")
        for n in range(10_000)
    ]
    settings = RetentionSettings(
        retain_hourly=24, retain_daily=7, retain_weekly=5, retain_monthly=12, retain_daily_days=30
    )
    timings = []
    for _ in range(5):
        began = time.perf_counter()
        plan = plan_retention(backups, settings, "Europe/Berlin")
        timings.append(time.perf_counter() - began)
    assert len(plan.keep) + len(plan.delete) == 10_000
    assert min(timings) < 0.1


def test_pitr_base_is_empty_without_wal() -> None:
    fulls = [_backup("2026-01-01 02:00", type="full")]
    assert (
        pitr_base(fulls, wal_enabled=False, wal_retention_days=7, now=_utc("2026-02-01")) == set()
    )


def test_pitr_base_is_the_newest_full_at_or_before_the_windows_start() -> None:
    now = _utc("2026-01-20 00:00")
    at_start = _backup("2026-01-13 00:00", type="full")
    before = _backup("2026-01-12 00:00", type="full")
    after = _backup("2026-01-15 00:00", type="full")
    db = _backup("2026-01-12 12:00", type="db")
    failed = _backup("2026-01-12 18:00", type="full", status="failed")
    backups = [before, at_start, after, db, failed]
    assert pitr_base(backups, wal_enabled=True, wal_retention_days=7, now=now) == {
        at_start.backup_id
    }
    assert pitr_base(backups, wal_enabled=True, wal_retention_days=8, now=now) == {before.backup_id}


def test_pitr_base_is_the_oldest_full_when_none_is_that_old_or_the_window_unknown() -> None:
    now = _utc("2026-01-20 00:00")
    older = _backup("2026-01-15 00:00", type="full")
    newer = _backup("2026-01-18 00:00", type="full")
    assert pitr_base([newer, older], wal_enabled=True, wal_retention_days=30, now=now) == {
        older.backup_id
    }
    assert pitr_base([newer, older], wal_enabled=True, wal_retention_days=None, now=now) == {
        older.backup_id
    }
    assert pitr_base([], wal_enabled=True, wal_retention_days=7, now=now) == set()
    db_only = [_backup("2025-01-01 00:00", type="db")]
    assert pitr_base(db_only, wal_enabled=True, wal_retention_days=7, now=now) == set()
