"""Fire times across DST changes (Europe/Berlin, America/New_York, both directions): exact
UTC lists, each wall time at most once, a nonexistent one once at the gap's end; next_fire
against a minute-by-minute reference; and which crons cron_problem refuses."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidemark_schedules.cron import (
    FREQUENCY_CRONS,
    PRESETS,
    cron_problem,
    fire_times,
    next_fire,
)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _fires(expr: str, zone: str, after: str, until: str) -> list[str]:
    return [t.strftime("%Y-%m-%d %H:%M") for t in fire_times(expr, zone, _utc(after), _utc(until))]


# Europe/Berlin: 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z); 2024-10-27 03:00 CEST ->
# 02:00 CET (01:00Z). America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z);
# 2024-11-03 02:00 EDT -> 01:00 EST (06:00Z).
EXACT = [
    # 02:30 does not exist on the 31st: once, at the gap's end, 03:00 CEST
    (
        "30 2 * * *",
        "Europe/Berlin",
        ("2024-03-29 12:00", "2024-04-01 12:00"),
        ["2024-03-30 01:30", "2024-03-31 01:00", "2024-04-01 00:30"],
    ),
    # 02:30 exists twice on the 27th: once, at its first occurrence (CEST)
    (
        "30 2 * * *",
        "Europe/Berlin",
        ("2024-10-25 12:00", "2024-10-28 12:00"),
        ["2024-10-26 00:30", "2024-10-27 00:30", "2024-10-28 01:30"],
    ),
    (
        "30 2 * * *",
        "America/New_York",
        ("2024-03-08 12:00", "2024-03-11 12:00"),
        ["2024-03-09 07:30", "2024-03-10 07:00", "2024-03-11 06:30"],
    ),
    # New York repeats 01:00-02:00, so 02:30 exists once
    (
        "30 2 * * *",
        "America/New_York",
        ("2024-11-01 12:00", "2024-11-04 12:00"),
        ["2024-11-02 06:30", "2024-11-03 07:30", "2024-11-04 07:30"],
    ),
    (
        "30 1 * * *",
        "America/New_York",
        ("2024-11-01 12:00", "2024-11-04 12:00"),
        ["2024-11-02 05:30", "2024-11-03 05:30", "2024-11-04 06:30"],
    ),
    (
        "0 2 * * *",
        "Europe/Berlin",
        ("2024-03-29 12:00", "2024-04-01 12:00"),
        ["2024-03-30 01:00", "2024-03-31 01:00", "2024-04-01 00:00"],
    ),
    (
        "0 2 * * *",
        "Europe/Berlin",
        ("2024-10-25 12:00", "2024-10-28 12:00"),
        ["2024-10-26 00:00", "2024-10-27 00:00", "2024-10-28 01:00"],
    ),
    (
        "0 2 * * *",
        "America/New_York",
        ("2024-03-08 12:00", "2024-03-11 12:00"),
        ["2024-03-09 07:00", "2024-03-10 07:00", "2024-03-11 06:00"],
    ),
    (
        "0 2 * * *",
        "America/New_York",
        ("2024-11-01 12:00", "2024-11-04 12:00"),
        ["2024-11-02 06:00", "2024-11-03 07:00", "2024-11-04 07:00"],
    ),
    # hourly: the missing 02:00 fires at 03:00 CEST, which is 03:00's own fire: once
    (
        "0 * * * *",
        "Europe/Berlin",
        ("2024-03-30 22:00", "2024-03-31 03:00"),
        [
            "2024-03-30 23:00",
            "2024-03-31 00:00",
            "2024-03-31 01:00",
            "2024-03-31 02:00",
            "2024-03-31 03:00",
        ],
    ),
    # hourly: the second 02:00 (CET, 01:00Z) does not fire
    (
        "0 * * * *",
        "Europe/Berlin",
        ("2024-10-26 22:00", "2024-10-27 03:00"),
        ["2024-10-26 23:00", "2024-10-27 00:00", "2024-10-27 02:00", "2024-10-27 03:00"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        ("2024-03-10 05:00", "2024-03-10 09:00"),
        ["2024-03-10 06:00", "2024-03-10 07:00", "2024-03-10 08:00", "2024-03-10 09:00"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        ("2024-11-03 04:00", "2024-11-03 08:00"),
        ["2024-11-03 05:00", "2024-11-03 07:00", "2024-11-03 08:00"],
    ),
    # every 15 minutes: 02:00 .. 02:45 do not exist, all four fire once at 03:00 CEST
    (
        "*/15 * * * *",
        "Europe/Berlin",
        ("2024-03-31 00:20", "2024-03-31 01:30"),
        [
            "2024-03-31 00:30",
            "2024-03-31 00:45",
            "2024-03-31 01:00",
            "2024-03-31 01:15",
            "2024-03-31 01:30",
        ],
    ),
    (
        "*/15 * * * *",
        "Europe/Berlin",
        ("2024-10-26 23:40", "2024-10-27 02:20"),
        [
            "2024-10-26 23:45",
            "2024-10-27 00:00",
            "2024-10-27 00:15",
            "2024-10-27 00:30",
            "2024-10-27 00:45",
            "2024-10-27 02:00",
            "2024-10-27 02:15",
        ],
    ),
    (
        "*/15 * * * *",
        "America/New_York",
        ("2024-03-10 06:20", "2024-03-10 07:30"),
        [
            "2024-03-10 06:30",
            "2024-03-10 06:45",
            "2024-03-10 07:00",
            "2024-03-10 07:15",
            "2024-03-10 07:30",
        ],
    ),
    (
        "*/15 * * * *",
        "America/New_York",
        ("2024-11-03 04:40", "2024-11-03 07:20"),
        [
            "2024-11-03 04:45",
            "2024-11-03 05:00",
            "2024-11-03 05:15",
            "2024-11-03 05:30",
            "2024-11-03 05:45",
            "2024-11-03 07:00",
            "2024-11-03 07:15",
        ],
    ),
]


@pytest.mark.parametrize(("expr", "zone", "window", "expected"), EXACT)
def test_exact_utc_fire_times_across_dst(
    expr: str, zone: str, window: tuple[str, str], expected: list[str]
) -> None:
    assert _fires(expr, zone, *window) == expected


# ---- a minute-by-minute reference -----------------------------------------------------

Matcher = Callable[[datetime], bool]

CRONS: dict[str, Matcher] = {
    "30 2 * * *": lambda w: (w.hour, w.minute) == (2, 30),
    "0 * * * *": lambda w: w.minute == 0,
    "*/15 * * * *": lambda w: w.minute % 15 == 0,
    "0 2 * * *": lambda w: (w.hour, w.minute) == (2, 0),
    "30 1 * * *": lambda w: (w.hour, w.minute) == (1, 30),
    "45 2 * * sun": lambda w: (w.hour, w.minute) == (2, 45) and w.isoweekday() == 7,
}
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]


def reference_fires(expr: str, zone: str, after: datetime, until: datetime) -> list[datetime]:
    """Walk UTC minute by minute: a wall minute that matches fires at its first
    occurrence; matching wall minutes skipped by a gap fire once at the gap's end."""
    tz, matches = ZoneInfo(zone), CRONS[expr]
    minute = after.astimezone(UTC).replace(second=0, microsecond=0)
    previous_wall = minute.astimezone(tz).replace(tzinfo=None)
    fires: list[datetime] = []
    while minute < until:
        minute += timedelta(minutes=1)
        local = minute.astimezone(tz)
        wall = local.replace(tzinfo=None)
        skipped = previous_wall + timedelta(minutes=1)
        gap_matched = False
        while skipped < wall:  # wall minutes this zone never shows
            gap_matched = gap_matched or matches(skipped)
            skipped += timedelta(minutes=1)
        first_pass = local.fold == 0
        if (gap_matched or (matches(wall) and first_pass)) and after < minute <= until:
            fires.append(minute)
        previous_wall = max(previous_wall, wall)
    return fires


_aware = st.datetimes(
    min_value=datetime(2024, 1, 1),
    max_value=datetime(2025, 12, 31),
    timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
)
# most draws land within a day of a DST change of the zones above
_near_changes = st.sampled_from(
    [
        _utc("2024-03-31 01:00"),
        _utc("2024-10-27 01:00"),
        _utc("2024-03-10 07:00"),
        _utc("2024-11-03 06:00"),
        _utc("2024-04-06 15:00"),
        _utc("2024-10-05 15:30"),
        _utc("2025-03-30 01:00"),
        _utc("2025-11-02 06:00"),
    ]
).flatmap(lambda at: st.integers(-26 * 3600, 2 * 3600).map(lambda s: at + timedelta(seconds=s)))


@st.composite
def _after(draw: st.DrawFn) -> datetime:
    at = draw(st.one_of(_aware, _near_changes))
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    local = at.astimezone(zone)
    return local.replace(fold=draw(st.integers(0, 1))) if draw(st.booleans()) else local


@settings(max_examples=150, deadline=None)
@given(expr=st.sampled_from(sorted(CRONS)), zone=st.sampled_from(ZONES), after=_after())
def test_fire_times_equal_the_minute_by_minute_reference(
    expr: str, zone: str, after: datetime
) -> None:
    until = after.astimezone(UTC) + timedelta(hours=28)
    got = list(fire_times(expr, zone, after, until))
    assert got == reference_fires(expr, zone, after, until)


@settings(max_examples=200, deadline=None)
@given(expr=st.sampled_from(sorted(CRONS)), zone=st.sampled_from(ZONES), after=_after())
def test_next_fire_is_the_first_of_fire_times(expr: str, zone: str, after: datetime) -> None:
    first = next_fire(expr, zone, after)
    assert first.tzinfo is UTC
    assert first > after
    listed = list(fire_times(expr, zone, after, after + timedelta(days=8)))
    assert listed[0] == first
    # strictly increasing, each wall time at most once
    assert all(a < b for a, b in itertools.pairwise(listed))
    walls = [t.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for t in listed]
    assert len(set(walls)) == len(walls)
    # and next_fire walks the same list
    steps = min(12, len(listed) - 1)
    assert [next_fire(expr, zone, t) for t in listed[:steps]] == listed[1 : steps + 1]


def test_every_wall_time_fires_at_most_once_around_both_changes_of_a_year() -> None:
    # Three days around each change: every UTC quarter hour fires except the autumn
    # fold's second pass (the spring gap's wall times all fire at its end, which is one
    # UTC quarter hour with its own wall time): an hour in Berlin and New York, half an
    # hour in Lord Howe.
    windows = {
        "Europe/Berlin": ["2024-03-30", "2024-10-26"],
        "America/New_York": ["2024-03-09", "2024-11-02"],
        "Australia/Lord_Howe": ["2024-04-05", "2024-10-05"],
    }
    folds = {"Europe/Berlin": 4, "America/New_York": 4, "Australia/Lord_Howe": 2}
    for zone, starts in windows.items():
        fires: list[datetime] = []
        for start in starts:
            fires += fire_times("*/15 * * * *", zone, _utc(start), _utc(start) + timedelta(days=3))
        walls = [t.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for t in fires]
        assert len(set(walls)) == len(walls)
        assert all(a < b for a, b in itertools.pairwise(fires))
        assert len(fires) == 2 * 3 * 96 - folds[zone]


# ---- cron_problem ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 0 * * * *", "5-field"),
        ("* * * *", "5-field"),
        ("", "5-field"),
        ("   ", "5-field"),
        ("@daily", "5-field"),
        ("@hourly", "5-field"),
        ("H * * * *", "only numbers"),
        ("0 H * * *", "only numbers"),
        ("0 0 L * *", "only numbers"),
        ("0 0 * * 5L", "only numbers"),
        ("0 0 * * 1#2", "only numbers"),
        ("0 0 ? * *", "only numbers"),
        ("0 0 1 1 mon?", "only numbers"),
        ("0 jan * * *", "only numbers"),
        ("0 0 * foo *", "only numbers"),
        ("60 * * * *", "not a valid"),
        ("0 24 * * *", "not a valid"),
        ("0 0 0 * *", "not a valid"),
        ("0 0 32 * *", "not a valid"),
        ("0 0 * 0 *", "not a valid"),
        ("0 0 * 13 *", "not a valid"),
        ("0 0 * * 8", "not a valid"),
        ("*/0 * * * *", "not a valid"),
        ("0 0 30 2 *", "not a valid"),
        ("0 0 31 4 *", "not a valid"),
        ("10-5 * * * *", "range"),
        ("0 22-2 * * *", "range"),
        ("0 0 * * fri-mon", "range"),
        ("0 0 * dec-feb *", "range"),
        ("0 0 20-10/2 * *", "range"),
        # Digits that str.isdigit() accepts and int() does not: a 422, never a 500.
        ("0 1-\u00b2 * * *", "only numbers"),
        ("0 \u00b9 * * *", "only numbers"),
        ("\u0660 * * * *", "only numbers"),
        ("0\u00a02 * * *", "only numbers"),
    ],
)
def test_cron_problem_refuses(expr: str, reason: str) -> None:
    problem = cron_problem(expr)
    assert problem is not None
    assert reason in problem
    if expr.strip():
        assert expr not in problem


@pytest.mark.parametrize(
    "expr",
    [
        "0 9 * * mon-fri",
        "0 9 * * MON-FRI",
        "0 0 1 jan *",
        "0 0 1 jan-jun *",
        "0 0 * * fri-sun",
        "0 0 * * 5-7",
        "0 0 * * 0",
        "0 0 * * 7",
        "5-10/2 1,2 * * *",
        "*/15 * * * *",
        "0 0 29 2 *",
        "0 0 31 * *",
        "0 0 * * sun",
    ],
)
def test_cron_problem_accepts(expr: str) -> None:
    assert cron_problem(expr) is None


def test_presets_are_valid_and_frequencies_map_to_theirs() -> None:
    for preset in PRESETS:
        assert cron_problem(preset.cron) is None
    assert FREQUENCY_CRONS == {
        "hourly": "0 * * * *",
        "daily": "0 2 * * *",
        "weekly": "0 3 * * 0",
        "monthly": "0 3 1 * *",
    }


def test_an_hourly_cron_has_no_fire_in_the_gaps_hour_and_keeps_its_real_time_cadence() -> None:
    """``10 * * * *`` in Berlin on the spring day: 01:10 (+01) then 03:10 (+02), one real
    hour apart; 02:10 does not exist and is not moved (the module docstring's rule)."""
    fires = list(
        fire_times(
            "10 * * * *",
            "Europe/Berlin",
            datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
            datetime(2026, 3, 29, 2, 0, tzinfo=UTC),
        )
    )
    assert fires == [
        datetime(2026, 3, 28, 23, 10, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 10, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 10, tzinfo=UTC),
    ]
