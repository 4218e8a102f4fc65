"""The PITR coverage rule on hand-made archives: windows never span a missing segment, a
timeline change or a time before the base completed, and end at the last record."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tidemark_recovery.coverage import (
    ArchivedSegment,
    BaseBackup,
    coverage_windows,
    current_window,
    plan_restore,
)
from tidemark_recovery.wal import (
    WalError,
    format_lsn,
    parse_lsn,
    parse_segment_name,
    segment_name,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def base(end_segno: int, completed: float, timeline: int = 1) -> BaseBackup:
    return BaseBackup(
        backup_id=uuid.uuid4(),
        completed_at=at(completed),
        wal_start_lsn=format_lsn(end_segno * 16 * 1024 * 1024 + 0x28),
        wal_end_lsn=format_lsn(end_segno * 16 * 1024 * 1024 + 0x100),
        timeline=timeline,
    )


def seg(segno: int, last: float | None, timeline: int = 1) -> ArchivedSegment:
    return ArchivedSegment(segment_name(timeline, segno), None if last is None else at(last))


def test_lsn_and_segment_names_round_trip_across_the_log_boundary() -> None:
    assert parse_lsn("0/2000028") == 0x2000028
    assert format_lsn(parse_lsn("1A/FF000000")) == "1A/FF000000"
    assert segment_name(1, 0xFF) == "0000000100000000000000FF"
    assert segment_name(1, 0x100) == "000000010000000100000000"
    assert parse_segment_name("000000010000000100000000") == (1, 0x100)
    for bad in ("", "0/", "x/1", "000000000000000000000001", "00000001000000000000010G"):
        with pytest.raises(WalError):
            parse_segment_name(bad) if len(bad) == 24 else parse_lsn(bad)


def test_the_window_runs_from_the_base_to_the_last_record_after_it() -> None:
    b = base(3, completed=1)
    windows = coverage_windows([b], [seg(3, 0.5), seg(4, 2), seg(5, 7), seg(6, None)])
    assert len(windows) == 1
    assert (windows[0].start, windows[0].end) == (at(1), at(7))
    plan = plan_restore(at(5), [b], [seg(3, 0.5), seg(4, 2), seg(5, 7), seg(6, None)])
    assert plan is not None
    assert plan.base == b
    assert plan.segments == tuple(segment_name(1, n) for n in (3, 4, 5, 6))
    assert plan_restore(at(0.9), [b], [seg(3, 0.5), seg(4, 2), seg(5, 7)]) is None
    assert plan_restore(at(7.01), [b], [seg(3, 0.5), seg(4, 2), seg(5, 7)]) is None


def test_a_missing_segment_splits_the_coverage_and_nothing_crosses_it() -> None:
    early, late = base(3, completed=1), base(10, completed=20)
    segments = [seg(3, 1), seg(4, 5), seg(6, 9), seg(10, 19), seg(11, 25)]
    windows = coverage_windows([early, late], segments)
    assert [(w.start, w.end) for w in windows] == [(at(1), at(5)), (at(20), at(25))]
    assert current_window(windows) == windows[-1]
    assert plan_restore(at(7), [early, late], segments) is None


def test_no_base_or_no_record_after_it_means_no_coverage() -> None:
    assert coverage_windows([], [seg(3, 1), seg(4, 2)]) == []
    assert coverage_windows([base(3, completed=5)], [seg(3, 1), seg(4, 2)]) == []
    assert coverage_windows([base(3, completed=0)], [seg(4, 2)]) == []


def test_a_base_of_another_timeline_does_not_continue_into_this_one() -> None:
    windows = coverage_windows([base(3, completed=1, timeline=1)], [seg(3, 2, 2), seg(4, 5, 2)])
    assert windows == []


def test_the_newest_base_before_the_target_is_chosen() -> None:
    older, newer = base(3, completed=1), base(5, completed=6)
    segments = [seg(n, n * 2.0) for n in range(3, 9)]
    plan = plan_restore(at(7), [older, newer], segments)
    assert plan is not None
    assert plan.base == newer
    assert plan.segments[0] == segment_name(1, 5)
    plan = plan_restore(at(3), [older, newer], segments)
    assert plan is not None
    assert plan.base == older


def archived(segno: int, last: float, archived_at: float) -> ArchivedSegment:
    return ArchivedSegment(segment_name(1, segno), at(last), archived_at=at(archived_at))


def test_a_reset_of_the_archive_cuts_the_coverage_and_no_window_mixes_histories() -> None:
    # History 1: base at segment 3, segments 3..6 archived before the reset at minute 10.
    # The cluster was restored (LSN rewound): history 2 archives 5..8 again, on the same
    # timeline, after the reset, and its own base at segment 5 completed at minute 12.
    old_base, new_base = base(3, completed=1), base(5, completed=12)
    segments = [
        archived(3, 1, 1.5),
        archived(4, 3, 3.5),
        archived(5, 12.5, 13),  # overwritten by history 2 (the read model keeps the newest)
        archived(6, 14, 14.5),
        archived(7, 16, 16.5),
    ]
    gaps = [at(10)]
    windows = coverage_windows([old_base, new_base], segments, gaps)
    assert [(w.start, w.end, w.epoch) for w in windows] == [
        (at(1), at(3), 0),
        (at(12), at(16), 1),
    ]
    assert windows[1].bases == (new_base,)
    # Without the gap, one "unbroken" run would span both histories from the old base.
    assert coverage_windows([old_base, new_base], segments)[0].start == at(1)
    assert plan_restore(at(5), [old_base, new_base], segments, gaps) is None
    plan = plan_restore(at(15), [old_base, new_base], segments, gaps)
    assert plan is not None
    assert plan.base == new_base
    assert plan.segments == tuple(segment_name(1, n) for n in (5, 6, 7))
    old = plan_restore(at(2), [old_base, new_base], segments, gaps)
    assert old is not None
    assert old.segments == tuple(segment_name(1, n) for n in (3, 4))


def test_a_base_completed_before_a_reset_does_not_start_a_window_after_it() -> None:
    segments = [archived(3, 6, 6.5), archived(4, 8, 8.5)]
    assert coverage_windows([base(3, completed=2)], segments, [at(5)]) == []
    assert len(coverage_windows([base(3, completed=2)], segments)) == 1
