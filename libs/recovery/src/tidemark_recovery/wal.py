"""LSNs and WAL segment names as PostgreSQL writes them (16 MB segments).

A segment's file name is three 8-digit hex numbers: the timeline, then the segment number
split into the high and low halves of ``segno * segment size`` (``…00FF`` is followed by
``…000100000000``)."""

from __future__ import annotations

import re

SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENTS_PER_XLOGID = 0x1_0000_0000 // SEGMENT_SIZE

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


class WalError(ValueError):
    """An LSN or segment name that PostgreSQL would not write."""


def parse_lsn(text: str) -> int:
    """``"0/2000028"`` → its 64-bit position."""
    match = _LSN.match(text)
    if match is None:
        raise WalError("not an LSN (hex/hex)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(position: int) -> str:
    if not 0 <= position < 1 << 64:
        raise WalError("an LSN is an unsigned 64-bit position")
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def segment_number(position: int) -> int:
    """The number of the segment that holds ``position``."""
    return position // SEGMENT_SIZE


def segment_name(timeline: int, segno: int) -> str:
    if not 1 <= timeline <= 0xFFFFFFFF or segno < 0:
        raise WalError("timeline or segment number out of range")
    return f"{timeline:08X}{segno // SEGMENTS_PER_XLOGID:08X}{segno % SEGMENTS_PER_XLOGID:08X}"


def parse_segment_name(name: str) -> tuple[int, int]:
    """``"000000010000000000000003"`` → (timeline 1, segment number 3)."""
    if _SEGMENT.match(name) is None:
        raise WalError("not a WAL segment name (24 upper-case hex digits)")
    timeline = int(name[0:8], 16)
    high, low = int(name[8:16], 16), int(name[16:24], 16)
    if timeline == 0 or low >= SEGMENTS_PER_XLOGID:
        raise WalError("not a WAL segment name (timeline 0 or segment past the log's end)")
    return timeline, high * SEGMENTS_PER_XLOGID + low


def segment_bounds(segno: int) -> tuple[int, int]:
    """The first position of segment ``segno`` and the first one after it."""
    return segno * SEGMENT_SIZE, (segno + 1) * SEGMENT_SIZE
