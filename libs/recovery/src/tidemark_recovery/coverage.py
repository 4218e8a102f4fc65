"""The point-in-time recovery coverage of an environment: the times a restore can
actually reach, never wider.

A restore to time T lays down a ``full`` base backup and replays archived WAL until the
first commit or abort record after T. So T is reachable exactly when

- a base backup completed at or before T (a target before the base is consistent is not
  an error for PostgreSQL: it would silently stop later than asked), and
- every WAL segment from the one holding the base's end LSN up to a record later than or
  at T is archived, with no missing segment between (replay would otherwise stop at the
  hole, promote there, and lose everything after it), on the base's timeline, and
- such a record exists: with no commit or abort record at or after T in the archived WAL,
  recovery ends before the target and the server refuses to start.

Hence a window per unbroken run of archived segments: from the completion of the oldest
base backup whose WAL continues into the run, to the latest record time in the run.

A reset of the archive (``gaps``: the times the receiver had to start a new replication
slot while the archive already held WAL, e.g. after the cluster was restored) starts a new
history: WAL after it may reuse the names (and overwrite the files) of segments before it,
on the same timeline. So the archive is cut into epochs at those times: a segment belongs
to the epoch it was archived in, a base backup to the one it completed in, and a run (hence
a window) never mixes epochs.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tidemark_recovery.wal import parse_lsn, parse_segment_name, segment_number


@dataclass(frozen=True)
class BaseBackup:
    """A completed ``full`` backup: when it completed and the WAL range it needs."""

    backup_id: uuid.UUID
    completed_at: datetime
    wal_start_lsn: str
    wal_end_lsn: str
    timeline: int = 1


@dataclass(frozen=True)
class ArchivedSegment:
    """A segment stored in the archive (``WalSegmentArchived``)."""

    segment: str
    last_record_at: datetime | None
    first_record_at: datetime | None = None
    archived_at: datetime | None = None  # needed only when the archive was ever reset

    @property
    def timeline(self) -> int:
        return parse_segment_name(self.segment)[0]

    @property
    def segno(self) -> int:
        return parse_segment_name(self.segment)[1]


@dataclass(frozen=True)
class Window:
    """Times from ``start`` to ``end`` (both included) are reachable from the listed base
    backups (oldest first) and the segments ``first_segment`` … ``last_segment``."""

    start: datetime
    end: datetime
    timeline: int
    first_segment: str
    last_segment: str
    bases: tuple[BaseBackup, ...]
    epoch: int = 0  # how many archive resets came before the window's WAL

    def contains(self, at: datetime) -> bool:
        return self.start <= at <= self.end


@dataclass(frozen=True)
class RestorePlan:
    """What a restore to ``target`` lays down and replays: ``base`` and the archived
    segments from the one holding its end LSN to the end of the window, in order."""

    target: datetime
    base: BaseBackup
    segments: tuple[str, ...]


def _epoch(at: datetime | None, resets: Sequence[datetime]) -> int:
    """How many resets came strictly before ``at`` (None: before any reset)."""
    return 0 if at is None else bisect_left(resets, at)


def _runs(
    segments: Iterable[ArchivedSegment], resets: Sequence[datetime]
) -> list[tuple[int, list[ArchivedSegment]]]:
    """Unbroken runs of segments per epoch and timeline (consecutive numbers), each in
    order, with its epoch."""
    unique: dict[tuple[int, int, int], ArchivedSegment] = {}
    for segment in segments:
        key = (_epoch(segment.archived_at, resets), segment.timeline, segment.segno)
        unique.setdefault(key, segment)
    runs: list[tuple[int, list[ArchivedSegment]]] = []
    previous: tuple[int, int, int] | None = None
    for key in sorted(unique):
        if previous is not None and previous[:2] == key[:2] and previous[2] + 1 == key[2]:
            runs[-1][1].append(unique[key])
        else:
            runs.append((key[0], [unique[key]]))
        previous = key
    return runs


def coverage_windows(
    bases: Iterable[BaseBackup],
    segments: Iterable[ArchivedSegment],
    gaps: Iterable[datetime] = (),
) -> list[Window]:
    """Every window a restore can reach, oldest first (see the module's rule). ``gaps``:
    the times the archive was reset (a new history began)."""
    bases = list(bases)
    resets = sorted(gaps)
    windows: list[Window] = []
    for epoch, run in _runs(segments, resets):
        timeline, first, last = run[0].timeline, run[0].segno, run[-1].segno
        usable = sorted(
            (
                b
                for b in bases
                if b.timeline == timeline
                and _epoch(b.completed_at, resets) == epoch
                and first <= segment_number(parse_lsn(b.wal_end_lsn)) <= last
            ),
            key=lambda b: b.completed_at,
        )
        if not usable:
            continue
        oldest_end = min(segment_number(parse_lsn(b.wal_end_lsn)) for b in usable)
        record_times = [
            s.last_record_at for s in run if s.segno >= oldest_end and s.last_record_at is not None
        ]
        if not record_times:
            continue
        start, end = usable[0].completed_at, max(record_times)
        if end < start:
            continue
        windows.append(
            Window(
                start=start,
                end=end,
                timeline=timeline,
                first_segment=run[0].segment,
                last_segment=run[-1].segment,
                bases=tuple(b for b in usable if b.completed_at <= end),
                epoch=epoch,
            )
        )
    return sorted(windows, key=lambda w: (w.end, w.start))


def current_window(windows: Sequence[Window]) -> Window | None:
    """The window reaching the latest time: what the coverage endpoint reports."""
    return windows[-1] if windows else None


def plan_restore(
    target: datetime,
    bases: Iterable[BaseBackup],
    segments: Iterable[ArchivedSegment],
    gaps: Iterable[datetime] = (),
) -> RestorePlan | None:
    """The newest base completed at or before ``target`` whose window contains it, and the
    segments to replay; None when no window contains ``target``. ``gaps``: as for
    ``coverage_windows``."""
    segments = list(segments)
    resets = sorted(gaps)
    for window in reversed(coverage_windows(bases, segments, resets)):
        if not window.contains(target):
            continue
        candidates = [b for b in window.bases if b.completed_at <= target]
        if not candidates:
            continue
        base = max(candidates, key=lambda b: b.completed_at)
        begin = segment_number(parse_lsn(base.wal_end_lsn))
        _, last = parse_segment_name(window.last_segment)
        wanted = sorted(
            {
                s.segment
                for s in segments
                if s.timeline == window.timeline
                and begin <= s.segno <= last
                and _epoch(s.archived_at, resets) == window.epoch
            }
        )
        return RestorePlan(target=target, base=base, segments=tuple(wanted))
    return None
