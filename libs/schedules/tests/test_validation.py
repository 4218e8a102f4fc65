"""A schedule body → effective settings or field problems, and the next fire times."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from tidemark_contracts.schedule import ScheduleSettings
from tidemark_schedules.cron import FREQUENCY_CRONS
from tidemark_schedules.validation import (
    FieldProblem,
    InvalidSchedule,
    effective_settings,
    next_fires,
)

DEST_A, DEST_B = uuid.uuid4(), uuid.uuid4()


def body(**fields: Any) -> ScheduleSettings:
    return ScheduleSettings.model_validate({"destinationIds": [str(DEST_A)], **fields})


def problems(**fields: Any) -> list[FieldProblem]:
    with pytest.raises(InvalidSchedule) as raised:
        effective_settings(body(**fields))
    return list(raised.value.problems)


def test_the_defaults_are_a_daily_db_backup_in_utc_without_wal() -> None:
    settings = effective_settings(body())
    assert (settings.db_frequency, settings.db_cron) == ("daily", FREQUENCY_CRONS["daily"])
    assert (settings.full_frequency, settings.full_cron) == ("none", None)
    assert settings.timezone == "UTC"
    assert (settings.wal_enabled, settings.wal_retention_days) == (False, None)


@pytest.mark.parametrize("frequency", ["hourly", "daily", "weekly", "monthly"])
def test_a_preset_frequency_derives_its_cron(frequency: str) -> None:
    settings = effective_settings(body(dbFrequency=frequency, fullFrequency=frequency))
    assert settings.db_cron == settings.full_cron == FREQUENCY_CRONS[frequency]


def test_a_preset_frequency_accepts_its_own_cron_with_any_spacing() -> None:
    settings = effective_settings(body(dbFrequency="daily", dbCron="  0   2 * * * "))
    assert settings.db_cron == "0 2 * * *"


def test_a_preset_frequency_with_another_cron_says_to_use_custom() -> None:
    [problem] = problems(dbFrequency="daily", dbCron="17 4 * * *")
    assert problem.field == "dbCron"
    assert "custom" in problem.message
    assert "17 4" not in problem.message  # the rejected value is never repeated


def test_custom_needs_a_cron() -> None:
    assert problems(fullFrequency="custom") == [
        FieldProblem("fullCron", "is required when fullFrequency is custom")
    ]


def test_custom_takes_a_valid_cron_as_its_own() -> None:
    settings = effective_settings(body(dbFrequency="custom", dbCron="*/15  * * * 1-5"))
    assert (settings.db_frequency, settings.db_cron) == ("custom", "*/15 * * * 1-5")


@pytest.mark.parametrize(
    "expr", ["* * * *", "61 * * * *", "@daily", "0 0 30 2 *", "0 0 * * * *", "x y z w v"]
)
def test_custom_with_a_bad_cron_is_a_problem_of_that_field(expr: str) -> None:
    [problem] = problems(dbFrequency="custom", dbCron=expr)
    assert problem.field == "dbCron"
    assert expr not in problem.message


def test_frequency_none_has_no_cron_and_refuses_one() -> None:
    settings = effective_settings(body(dbFrequency="none"))
    assert settings.db_cron is None
    assert problems(dbFrequency="none", dbCron="0 2 * * *") == [
        FieldProblem("dbCron", "must be absent when dbFrequency is none")
    ]


# localtime is the host's own zone (each host would fire at its own time); Factory and
# posixrules are the zone database's placeholders, not zones.
@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "utc+2", "", "../../etc/passwd", "localtime", "Factory", "posixrules"]
)
def test_an_unknown_zone_is_a_problem_of_timezone(zone: str) -> None:
    [problem] = problems(timezone=zone)
    assert problem.field == "timezone"
    assert "IANA" in problem.message


def test_a_known_zone_is_kept() -> None:
    assert effective_settings(body(timezone="Europe/Berlin")).timezone == "Europe/Berlin"


def test_wal_on_without_retention_days_gets_seven() -> None:
    assert effective_settings(body(walEnabled=True)).wal_retention_days == 7
    assert effective_settings(body(walEnabled=True, walRetentionDays=35)).wal_retention_days == 35


@pytest.mark.parametrize("days", [0, 36, -1])
def test_wal_retention_days_outside_1_to_35_is_refused(days: int) -> None:
    with pytest.raises(ValidationError) as raised:
        body(walEnabled=True, walRetentionDays=days)
    assert raised.value.errors()[0]["loc"] == ("walRetentionDays",)
    # Also when a caller built the settings without validating them.
    built = body(walEnabled=True).model_copy(update={"wal_retention_days": days})
    with pytest.raises(InvalidSchedule) as invalid:
        effective_settings(built)
    assert [p.field for p in invalid.value.problems] == ["walRetentionDays"]


def test_a_repeated_destination_names_the_repetition() -> None:
    assert problems(destinationIds=[str(DEST_A), str(DEST_B), str(DEST_A)]) == [
        FieldProblem("destinationIds[2]", "repeats destinationIds[0]")
    ]


def test_no_destination_is_refused() -> None:
    with pytest.raises(ValidationError):
        body(destinationIds=[])
    built = body().model_copy(update={"destination_ids": []})
    with pytest.raises(InvalidSchedule) as invalid:
        effective_settings(built)
    assert [p.field for p in invalid.value.problems] == ["destinationIds"]


@pytest.mark.parametrize("field", ["retainDaily", "retainFullWeekly", "retainMonthlyDays"])
def test_a_negative_count_is_refused(field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        body(**{field: -1})
    assert raised.value.errors()[0]["loc"] == (field,)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        timezone="Nowhere/Atall",
        dbFrequency="custom",
        fullFrequency="none",
        fullCron="0 1 * * *",
        destinationIds=[str(DEST_A), str(DEST_A)],
    )
    assert [p.field for p in found] == ["timezone", "dbCron", "fullCron", "destinationIds[1]"]


NOW = datetime(2026, 3, 28, 12, 30, tzinfo=UTC)


def test_next_fires_are_in_the_schedules_zone() -> None:
    settings = effective_settings(
        body(timezone="Europe/Berlin", dbFrequency="daily", fullFrequency="weekly")
    )
    fires = next_fires(settings, NOW)
    # 02:00 in Berlin on Sunday 29 March 2026 does not exist (clocks go to 03:00): fires
    # at the gap's end, 01:00 UTC; the weekly (Sunday 03:00, CEST) is 01:00 UTC too.
    assert fires == {
        "db": datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        "full": datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    }


def test_next_fires_are_none_when_paused_disabled_or_none() -> None:
    assert next_fires(effective_settings(body(paused=True)), NOW) == {"db": None, "full": None}
    assert next_fires(effective_settings(body(enabled=False)), NOW) == {"db": None, "full": None}
    fires = next_fires(effective_settings(body(dbFrequency="hourly")), NOW)
    assert fires == {"db": datetime(2026, 3, 28, 13, 0, tzinfo=UTC), "full": None}
