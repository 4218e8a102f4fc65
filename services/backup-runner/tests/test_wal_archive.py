"""The WAL archive without I/O (and the spool on a real filesystem): which segment follows
which, gaps and duplicates, status changes, the relayed contracts, pg_waldump's times,
the stall and switch rules, and the spool's markers."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.walarchive import (
    RESET_REASON,
    ArchivedCopy,
    SegmentFacts,
    WalArchive,
    WalArchiveError,
    gap_reason,
    verdict,
)
from tidemark_backup_runner.walsegments import (
    clear_spool,
    compress,
    drop_unfilled_partials,
    finished_segments,
    has_wal,
    parse_record_times,
    segment_key,
    write_marker,
)
from tidemark_backup_runner.walsupervisor import WalPolicy, slot_name
from tidemark_contracts import BACKUP_EVENTS
from tidemark_contracts.wal import (
    WalArchivingStatusChanged,
    WalGapDetected,
    WalSegmentArchived,
    wal_archive_id,
)
from tidemark_recovery.wal import SEGMENT_SIZE, segment_name

T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
CHECKSUM = "sha256:" + "c" * 64


def facts(segno: int, timeline: int = 1, copies: int = 1) -> SegmentFacts:
    return SegmentFacts(
        segment=segment_name(timeline, segno),
        size_bytes=123,
        checksum=CHECKSUM,
        first_record_at=T0,
        last_record_at=T0 + timedelta(seconds=segno),
        copies=tuple(ArchivedCopy(uuid.uuid4(), f"e/wal/{segno}.zst") for _ in range(copies)),
    )


def opened(env: uuid.UUID | None = None) -> WalArchive:
    return WalArchive(
        environment_id=env or uuid.uuid4(),
        organization_id=uuid.uuid4(),
        status="active",
        reason="receiving WAL",
        wal_retention_days=7,
        changed_at=T0,
    )


# -- which segment follows which ----------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "segment", "expected"),
    [
        (None, segment_name(1, 5), "first"),
        (segment_name(1, 5), segment_name(1, 6), "next"),
        (segment_name(1, 0xFF), segment_name(1, 0x100), "next"),  # …00FF → …000100000000
        (segment_name(1, 5), segment_name(1, 5), "duplicate"),
        (segment_name(1, 5), segment_name(1, 3), "duplicate"),
        (segment_name(2, 5), segment_name(1, 9), "duplicate"),
        (segment_name(1, 5), segment_name(1, 8), "gap"),
        (segment_name(1, 5), segment_name(2, 6), "gap"),
    ],
)
def test_a_segment_is_first_next_a_gap_or_a_duplicate(
    last: str | None, segment: str, expected: str
) -> None:
    assert verdict(last, segment) == expected


def test_a_gaps_reason_names_the_missing_segments_or_the_timeline_change() -> None:
    assert gap_reason(segment_name(1, 5), segment_name(1, 8)) == (
        f"WAL segment(s) {segment_name(1, 6)}…{segment_name(1, 7)} were never received"
    )
    assert gap_reason(segment_name(1, 5), segment_name(1, 7), "why") == (
        f"WAL segment(s) {segment_name(1, 6)} were never received: why"
    )
    assert gap_reason(segment_name(1, 5), segment_name(2, 6)) == (
        "the timeline changed from 1 to 2"
    )


def test_consecutive_segments_are_recorded_without_a_gap() -> None:
    archive = opened()
    assert archive.archive(facts(3), T0)
    assert archive.archive(facts(4), T0)
    kinds = [type(e).__name__ for e in archive.collect_events()]
    assert kinds == ["Opened", "SegmentArchived", "SegmentArchived"]
    assert archive.last_segment == segment_name(1, 4)
    assert archive.archived_end_lsn == 5 * SEGMENT_SIZE


def test_a_segment_after_missing_ones_records_the_gap_first() -> None:
    archive = opened()
    archive.archive(facts(3), T0)
    archive.collect_events()
    assert archive.archive(facts(6), T0, "the server had removed it")
    gap, segment = archive.collect_events()
    assert isinstance(gap, WalArchive.GapDetected)
    assert (gap.after_segment, gap.resumed_at) == (segment_name(1, 3), segment_name(1, 6))
    assert gap.reason.endswith(": the server had removed it")
    assert isinstance(segment, WalArchive.SegmentArchived)


def test_a_segment_streamed_again_records_nothing() -> None:
    archive = opened()
    archive.archive(facts(3), T0)
    archive.collect_events()
    assert not archive.archive(facts(3), T0)
    assert not archive.archive(facts(2), T0)
    assert archive.collect_events() == []


def test_after_a_reset_the_next_segment_starts_a_new_history_whatever_its_name() -> None:
    # A restored cluster (no slot, LSN rewound on the same timeline) streams segments
    # that were archived before: they are the new history, not duplicates.
    app = BackupRunnerApplication()
    archive = opened()
    archive.archive(facts(3), T0)
    archive.archive(facts(4), T0)
    app.save(archive)
    assert archive.reset(RESET_REASON, T0)
    assert archive.last_segment is None
    assert archive.archive(facts(4), T0)
    assert archive.archive(facts(5), T0)
    pending = archive.collect_events()
    app.save(*pending)
    gap, *segments = pending
    assert isinstance(gap, WalArchive.GapDetected)
    assert (gap.after_segment, gap.resumed_at, gap.reason) == (
        segment_name(1, 4),
        None,
        RESET_REASON,
    )
    assert [type(e).__name__ for e in segments] == ["SegmentArchived", "SegmentArchived"]
    assert archive.last_segment == segment_name(1, 5)
    # The state is the same after a reload from the events.
    reloaded: WalArchive = app.repository.get(archive.id)
    assert reloaded.last_segment == segment_name(1, 5)


def test_a_reset_of_an_empty_archive_records_nothing() -> None:
    archive = opened()
    archive.collect_events()
    assert not archive.reset(RESET_REASON, T0)
    assert archive.collect_events() == []


def test_a_segment_no_destination_holds_is_refused() -> None:
    archive = opened()
    with pytest.raises(WalArchiveError):
        archive.archive(facts(3, copies=0), T0)


def test_only_status_changes_are_recorded() -> None:
    archive = opened()
    archive.collect_events()
    assert not archive.change_status("active", "again", 7, T0)
    assert archive.change_status("stalled", "no segment", 7, T0)
    assert archive.change_status("stalled", "no segment", 14, T0)  # retention changed
    assert [e.status for e in archive.collect_events()] == ["stalled", "stalled"]


# -- relayed as the contracts --------------------------------------------------------------


def test_the_archives_events_are_relayed_as_the_wal_contracts_keyed_by_environment() -> None:
    app = BackupRunnerApplication()
    env = uuid.uuid4()
    archive = opened(env)
    archive.archive(facts(3), T0)
    archive.archive(facts(5), T0)
    archive.change_status("disabled", "switched off", 7, T0)
    app.save(archive)
    envelopes = []
    for notification in app.recorder.select_notifications(start=1, limit=100):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        assert mapped is not None
        topic, envelope = mapped
        assert topic is BACKUP_EVENTS
        envelopes.append(envelope)
    messages = [
        BACKUP_EVENTS.message_class(e.message_type).model_validate(e.payload)  # type: ignore[union-attr]
        for e in envelopes
    ]
    assert [type(m) for m in messages] == [
        WalArchivingStatusChanged,
        WalSegmentArchived,
        WalGapDetected,
        WalSegmentArchived,
        WalArchivingStatusChanged,
    ]
    assert {e.key for e in envelopes} == {str(env).encode()}
    assert {e.aggregate_id for e in envelopes} == {wal_archive_id(env)}
    assert [e.aggregate_version for e in envelopes] == [1, 2, 3, 4, 5]
    first = messages[1]
    assert isinstance(first, WalSegmentArchived)
    assert (first.segment, first.start_lsn, first.end_lsn) == (
        segment_name(1, 3),
        "0/3000000",
        "0/4000000",
    )
    assert first.last_record_at == T0 + timedelta(seconds=3)
    assert first.checksum == CHECKSUM
    assert messages[-1].status == "disabled"  # type: ignore[union-attr]


# -- pg_waldump's times ----------------------------------------------------------------------

PREFIX = "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/01D1E1A0, "
WALDUMP = (
    f"{PREFIX}prev 0/01D1E168, desc: COMMIT 2026-11-30 04:40:01.123456 UTC\n"
    f"{PREFIX}prev 0/01D1E1A0, desc: ABORT 2026-11-30 04:40:02.5 UTC\n"
    f"{PREFIX}prev 0/01D1E1C8, desc: COMMIT 2026-11-30 04:40:03.000001 UTC; inval msgs: x 55\n"
    f"{PREFIX}prev 0/01D1E1F0, desc: COMMIT_PREPARED 738: 2026-11-30 04:40:04 UTC\n"
)


def test_the_first_and_last_commit_or_abort_times_are_read_from_pg_waldump() -> None:
    first, last = parse_record_times(WALDUMP)
    assert first == datetime(2026, 11, 30, 4, 40, 1, 123456, tzinfo=UTC)
    assert last == datetime(2026, 11, 30, 4, 40, 4, tzinfo=UTC)


def test_a_segment_without_commits_has_no_times() -> None:
    assert parse_record_times("rmgr: Standby len ... desc: RUNNING_XACTS\n") == (None, None)


# -- stall and switch ------------------------------------------------------------------------


def test_stalled_only_when_idle_past_the_stall_time_while_the_server_wrote_wal() -> None:
    policy = WalPolicy(stall_seconds=300)
    assert policy.stalled(idle_seconds=301, server_lsn=2, archived_end=1)
    assert not policy.stalled(idle_seconds=299, server_lsn=2, archived_end=1)
    assert not policy.stalled(idle_seconds=3000, server_lsn=1, archived_end=1)  # quiet database


def test_a_switch_is_forced_once_per_switch_time_when_the_open_segment_holds_old_wal() -> None:
    policy = WalPolicy(switch_seconds=60)
    assert not policy.should_switch(None, None)
    assert not policy.should_switch(59, None)
    assert policy.should_switch(60, None)
    assert not policy.should_switch(120, 30)
    assert policy.should_switch(120, 61)


def test_retries_back_off_doubling_up_to_the_cap() -> None:
    policy = WalPolicy(max_backoff_seconds=60)
    assert [policy.backoff(n) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]


def test_each_environment_has_a_slot_of_its_own_within_postgresqls_name_limit() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert slot_name(a) != slot_name(b)
    assert len(slot_name(a)) <= 63
    assert slot_name(a).replace("_", "").isalnum()


# -- the spool ---------------------------------------------------------------------------------


def test_only_complete_segment_files_are_finished_markers_included(tmp_path: Path) -> None:
    write_marker(tmp_path, segment_name(1, 7))
    (tmp_path / segment_name(1, 8)).write_bytes(b"short")  # being written? not finished
    (tmp_path / f"{segment_name(1, 9)}.partial").write_bytes(b"x")
    (tmp_path / "00000002.history").write_text("1\t0/9000000\tno recovery target\n")
    with open(tmp_path / segment_name(1, 0x100), "wb") as handle:
        handle.truncate(SEGMENT_SIZE)
    assert finished_segments(tmp_path) == [segment_name(1, 7), segment_name(1, 0x100)]
    marker = tmp_path / segment_name(1, 7)
    assert marker.stat().st_size == SEGMENT_SIZE
    assert marker.stat().st_blocks == 0  # sparse: no data kept


def test_an_empty_spool_has_no_wal_to_resume_from_and_clearing_keeps_other_files(
    tmp_path: Path,
) -> None:
    assert not has_wal(tmp_path)
    (tmp_path / f"{segment_name(1, 9)}.partial").write_bytes(b"x")
    (tmp_path / "00000002.history").write_text("")
    assert has_wal(tmp_path)
    clear_spool(tmp_path)
    assert not has_wal(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["00000002.history"]


def test_a_segment_is_stored_as_one_zstd_frame_checksummed_as_stored(tmp_path: Path) -> None:
    path = tmp_path / segment_name(1, 3)
    path.write_bytes(b"wal" * 1000)
    data, checksum = compress(path)
    assert zstandard.ZstdDecompressor().decompress(data) == b"wal" * 1000
    assert checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    env = uuid.uuid4()
    assert segment_key(env, path.name) == f"{env}/wal/{path.name}.zst"


def test_a_partial_cut_short_while_padding_is_dropped_and_a_full_one_kept(tmp_path: Path) -> None:
    # A runner killed while pg_receivewal padded a new segment leaves a .partial of an odd
    # size, beside which pg_receivewal refuses to start ("should be 0 or 16777216").
    short = tmp_path / f"{segment_name(1, 3)}.partial"
    short.write_bytes(b"\0" * 7659520)
    full = tmp_path / f"{segment_name(1, 4)}.partial"
    with open(full, "wb") as handle:
        handle.truncate(SEGMENT_SIZE)
    empty = tmp_path / f"{segment_name(1, 5)}.partial"
    empty.write_bytes(b"")
    other = tmp_path / "notes.partial"
    other.write_bytes(b"x")

    assert drop_unfilled_partials(tmp_path) == [short.name]

    assert not short.exists()
    assert full.exists()
    assert empty.exists()
    assert other.exists()
