"""Cron presets and fire times in a schedule's zone, DST-correct.

A fire is named by its local wall time. A wall time that exists twice (the autumn fold)
fires once, at its first occurrence. A wall time that does not exist (the spring gap)
fires once, at the end of the gap, when the cron names a fixed hour (croniter's rule:
``30 2 * * *`` fires at 03:00 that day); a cron that fires every hour has no fire in the
gap's hour (``10 * * * *`` in Berlin goes from 01:10 to 03:10, which is one real hour
later: its cadence in real time is unbroken; in a zone whose gap is 30 minutes, such as
Australia/Lord_Howe, that one interval is 90 minutes). Fire times are returned as aware
UTC datetimes, strictly increasing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from croniter.croniter import CroniterError
from tidemark_contracts.schedule import Frequency


@dataclass(frozen=True)
class Preset:
    id: str
    label: str
    cron: str
    frequency: Frequency


PRESETS: tuple[Preset, ...] = (
    Preset("hourly", "Every hour, on the hour", "0 * * * *", "hourly"),
    Preset("every-6-hours", "Every 6 hours", "0 */6 * * *", "custom"),
    Preset("every-12-hours", "Every 12 hours", "0 */12 * * *", "custom"),
    Preset("daily", "Every day at 02:00", "0 2 * * *", "daily"),
    Preset("weekly", "Every Sunday at 03:00", "0 3 * * 0", "weekly"),
    Preset("monthly", "On the 1st of every month at 03:00", "0 3 1 * *", "monthly"),
)

FREQUENCY_CRONS: dict[str, str] = {p.frequency: p.cron for p in PRESETS if p.frequency != "custom"}
"""The cron a preset frequency stands for (``custom`` brings its own, ``none`` has none)."""

# How far ahead a cron must fire at least once: a cron that names a date that never comes
# (``0 0 30 2 *``) is refused instead of being searched for at every fire.
HORIZON_YEARS = 5


# Names in the zone database that are not zones a schedule may name: ``localtime`` is the
# host's own zone (a schedule in it would fire by whichever host runs it), ``Factory`` and
# ``posixrules`` are the database's placeholders.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_ZONES


def zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA zone, or None."""
    if name not in _zones():
        return "must be an IANA time zone name, such as Europe/Berlin or UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "must be an IANA time zone name, such as Europe/Berlin or UTC"
    return None


_MONTHS = {
    name: n
    for n, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        start=1,
    )
}
_WEEKDAYS = {name: n for n, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


_NAMES = frozenset(_MONTHS) | frozenset(_WEEKDAYS)


def _reversed_range(index: int, field: str) -> bool:
    """Whether ``field`` has a range that runs backwards (``10-5``, ``fri-mon``): plain
    cron refuses one, croniter would wrap it around. A weekday range may end on Sunday
    as 7 (``fri-sun`` is ``5-7``)."""
    names = _MONTHS if index == 3 else _WEEKDAYS if index == 4 else {}
    for part in field.split(","):
        bounds = part.split("/")[0].split("-")
        if len(bounds) != 2:
            continue
        low, high = (names.get(b.lower(), b) for b in bounds)
        if not (isinstance(low, int) or low.isdigit()) or not (
            isinstance(high, int) or high.isdigit()
        ):
            continue  # croniter refuses it
        start, end = int(low), int(high)
        if index == 4 and end == 0:
            end = 7
        if start > end:
            return True
    return False


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a 5-field cron that fires, or None. Never repeats ``expr``.

    Plain cron only: numbers, ``* / , -``, and month and weekday names in their fields;
    none of croniter's extensions (seconds, ``@daily``, ``H``, ``L``, ``#``, ranges that
    wrap around)."""
    if not expr.isascii():
        return "may contain only numbers, * / , - and month or weekday names"
    fields = expr.split()
    if len(fields) != 5:
        return "must be a 5-field cron expression (minute hour day-of-month month day-of-week)"
    for index, field in enumerate(fields):
        words = list("".join(c if c.isalpha() else " " for c in field).split())
        if any(not (c.isalnum() or c in "*/,-") for c in field) or (
            words and (index < 3 or any(w.lower() not in _NAMES for w in words))
        ):
            return "may contain only numbers, * / , - and month or weekday names"
        if _reversed_range(index, field):
            return "has a range whose start is after its end (ranges do not wrap around)"
    try:
        if not croniter.is_valid(expr):
            return "is not a valid cron expression"
        start = datetime(2000, 1, 1, tzinfo=UTC)
        first = croniter(expr, start).get_next(datetime)
    except (CroniterError, ValueError, KeyError, OverflowError):
        return "is not a valid cron expression"
    if first.year - start.year > HORIZON_YEARS:
        return "never fires (names a date that does not exist)"
    return None


def _second_pass(local: datetime, tz: ZoneInfo) -> bool:
    """Whether ``local`` is the second occurrence of a wall time that exists twice."""
    wall = local.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return first < second and local.astimezone(UTC) == second


def _fires(expr: str, zone: str, after: datetime) -> Iterator[datetime]:
    tz = ZoneInfo(zone)
    iterator = croniter(expr, after.astimezone(tz))
    last: datetime | None = None
    while True:
        local: datetime = iterator.get_next(datetime)
        at = local.astimezone(UTC)
        if _second_pass(local, tz):
            continue  # its first occurrence fired (or was due) an hour earlier
        if at <= after or (last is not None and at <= last):
            continue  # the gap's end named twice (02:00 and 03:00 both fire at 03:00)
        last = at
        yield at


def next_fire(expr: str, zone: str, after: datetime) -> datetime:
    """The first fire time of ``expr`` in ``zone`` strictly after ``after`` (aware), UTC."""
    return next(_fires(expr, zone, after))


def fire_times(expr: str, zone: str, after: datetime, until: datetime) -> Iterator[datetime]:
    """Every fire time in (``after``, ``until``], UTC, increasing."""
    for at in _fires(expr, zone, after):
        if at > until:
            return
        yield at
