"""A receiver's spool directory and what happens to each finished WAL segment in it:
its commit/abort times (pg_waldump), zstd, SHA-256, and a copy in every destination.

pg_receivewal writes the open segment as ``<name>.partial`` and renames it when full, so a
file named exactly like a segment (24 hex digits) and 16 MB long is finished. After a
segment is recorded its file is cut down to a *marker*: the same name and size, sparse
(no data blocks). pg_receivewal resumes after the newest complete segment in its
directory, so the marker keeps it from streaming the archived WAL again after a restart,
and a marker written into an empty spool (another instance took over) makes it continue
right after the last archived segment (see NOTES.md "WAL archiving and PITR").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import zstandard
from tidemark_contracts.backup import DestinationTarget
from tidemark_recovery.wal import SEGMENT_SIZE, parse_segment_name

from tidemark_backup_runner.storage import writer_for
from tidemark_backup_runner.walarchive import ArchivedCopy, SegmentFacts

SEGMENT_FILE = re.compile(r"^[0-9A-F]{24}$")
# pg_waldump's description of a commit or abort record, its time in the process's zone
# (run with TZ=UTC): "COMMIT 2026-11-30 04:40:01.123456 UTC", "ABORT_PREPARED 7: …".
_RECORD_TIME = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (?:\d+: )?"
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
WALDUMP_TIMEOUT_SECONDS = 120


def segment_key(environment_id: UUID, segment: str) -> str:
    """Where a segment is stored in each destination (interfaces9.md's layout)."""
    return f"{environment_id}/wal/{segment}.zst"


def finished_segments(spool: Path) -> list[str]:
    """Complete segment files in the spool (markers included), oldest first."""
    names = []
    for entry in os.scandir(spool):
        if (
            SEGMENT_FILE.match(entry.name)
            and entry.is_file(follow_symlinks=False)
            and entry.stat(follow_symlinks=False).st_size == SEGMENT_SIZE
        ):
            names.append(entry.name)
    return sorted(names, key=parse_segment_name)


def has_wal(spool: Path) -> bool:
    """Whether pg_receivewal would find a place to resume from in the spool."""
    return any(SEGMENT_FILE.match(name.removesuffix(".partial")) for name in os.listdir(spool))


def drop_unfilled_partials(spool: Path) -> list[str]:
    """Remove ``.partial`` files cut short while pg_receivewal was still padding them.

    pg_receivewal fills a new segment file with zeros to its full 16 MB before it writes
    any WAL into it, and refuses to start again beside a ``.partial`` of any other size
    ("should be 0 or 16777216"). A runner killed during that padding leaves exactly such a
    file, which therefore holds no WAL: removing it loses nothing, and the receiver
    resumes from the segment before it."""
    dropped = []
    for entry in os.scandir(spool):
        name = entry.name
        if (
            name.endswith(".partial")
            and SEGMENT_FILE.match(name.removesuffix(".partial"))
            and entry.is_file(follow_symlinks=False)
            and entry.stat(follow_symlinks=False).st_size not in (0, SEGMENT_SIZE)
        ):
            (spool / name).unlink(missing_ok=True)
            dropped.append(name)
    return dropped


def write_marker(spool: Path, segment: str) -> None:
    """``segment``'s file as a sparse 16 MB marker (its data is archived already)."""
    path = spool / segment
    with open(path, "wb") as handle:
        handle.truncate(SEGMENT_SIZE)
        handle.flush()
        os.fsync(handle.fileno())


def clear_spool(spool: Path) -> None:
    """Remove every segment (finished, marker or partial): pg_receivewal starts from the
    slot then."""
    for name in os.listdir(spool):
        if SEGMENT_FILE.match(name.removesuffix(".partial")):
            (spool / name).unlink(missing_ok=True)


def parse_record_times(output: str) -> tuple[datetime | None, datetime | None]:
    """The first and last commit/abort record time in pg_waldump's output (UTC)."""
    times = [
        datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
        for match in _RECORD_TIME.finditer(output)
    ]
    return (times[0], times[-1]) if times else (None, None)


def record_times(pg_waldump: str, path: Path) -> tuple[datetime | None, datetime | None]:
    """pg_waldump over one segment: the first and last commit/abort time in it.

    Its exit status is not used: on a single segment it always ends with an error about
    the record continuing into the next one (or the end of WAL); the records before it are
    printed. A commit record split across the boundary is in neither segment's times:
    coverage is then slightly narrower, never wider."""
    result = subprocess.run(
        [pg_waldump, "--rmgr=Transaction", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"TZ": "UTC", "LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
        timeout=WALDUMP_TIMEOUT_SECONDS,
    )
    return parse_record_times(result.stdout)


def compress(path: Path, level: int = 3) -> tuple[bytes, str]:
    """The segment as one zstd frame, and the SHA-256 of those stored bytes."""
    data = zstandard.ZstdCompressor(level=level).compress(path.read_bytes())
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def store(
    data: bytes,
    key: str,
    destinations: Sequence[DestinationTarget],
    organization_id: UUID,
    *,
    tag: str,
    local_root: Path | None,
    credentials: Callable[[str | None], str | None] | None,
) -> tuple[ArchivedCopy, ...]:
    """Write ``data`` at ``key`` in every destination (raises on the first failure; a
    later attempt writes it again: an upload replaces the object whole)."""
    copies = []
    for destination in destinations:
        writer = writer_for(
            destination, organization_id, key, tag, local_root=local_root, credentials=credentials
        )
        writer.open()
        try:
            for start in range(0, len(data), 1 << 20):
                writer.write(data[start : start + (1 << 20)])
            location = writer.commit()
        except BaseException:
            writer.abort()
            raise
        # A leftover temporary copy at worst; the segment itself is stored.
        with contextlib.suppress(OSError):
            writer.forget_proofs()
        copies.append(ArchivedCopy(destination.destination_id, location))
    return tuple(copies)


def archive_file(
    path: Path,
    *,
    environment_id: UUID,
    organization_id: UUID,
    destinations: Sequence[DestinationTarget],
    pg_waldump: str,
    tag: str,
    local_root: Path | None,
    credentials: Callable[[str | None], str | None] | None,
    zstd_level: int = 3,
) -> SegmentFacts:
    """Everything short of recording it: times, compression, checksum, every copy."""
    first, last = record_times(pg_waldump, path)
    data, checksum = compress(path, zstd_level)
    copies = store(
        data,
        segment_key(environment_id, path.name),
        destinations,
        organization_id,
        tag=tag,
        local_root=local_root,
        credentials=credentials,
    )
    return SegmentFacts(
        segment=path.name,
        size_bytes=len(data),
        checksum=checksum,
        first_record_at=first,
        last_record_at=last,
        copies=copies,
    )
