"""The export file as a hash chain: composing its lines and finding the first tampered one.

Plain Python, no I/O beyond the file object it is given. The format (docs/cli/audit.md):
one compact JSON object per line, ``\\n``-terminated; line 1 is the header, the last line
the trailer, the lines between are events. Every line starts with ``{"seq":N,`` (N = its
1-based line number) and ends with ``,"prev":"<hex>"}``: the SHA-256 of the previous
line's bytes including its newline (64 zeros on line 1). The trailer holds the number of
events and, as ``hash``, the same digest as its ``prev``: the head of the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

FORMAT = "tidemark-events/1"
ZERO = "0" * 64
_ZERO = ZERO.encode()

Tamper = Literal["altered", "removed", "inserted", "reordered"]


def digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _inner(value: dict[str, Any]) -> bytes:
    """A JSON object's members without the braces, to be framed by seq and prev."""
    return _compact(value)[1:-1]


class ChainWriter:
    """Writes header, events and trailer as a chain. An event is given as the bytes of its
    members (``"kind":"event","store":…,"event":{…}``), composed elsewhere (in SQL)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.seq = 0
        self.events = 0
        self._prev = _ZERO

    def _write(self, members: bytes) -> None:
        self.seq += 1
        line = b'{"seq":%d,%s,"prev":"%s"}\n' % (self.seq, members, self._prev)
        self._out.write(line)
        self._prev = hashlib.sha256(line).hexdigest().encode()

    def header(self, exported_at: str, filters: dict[str, Any], stores: list[str]) -> None:
        self._write(
            _inner(
                {
                    "kind": "header",
                    "format": FORMAT,
                    "exportedAt": exported_at,
                    "filters": filters,
                    "stores": stores,
                }
            )
        )

    def events_from(self, bodies: Iterable[bytes]) -> None:
        """The hot loop of an export: frame, hash and write each event's members."""
        write = self._out.write
        sha256 = hashlib.sha256
        seq = self.seq
        prev = self._prev
        for body in bodies:
            seq += 1
            line = b'{"seq":%d,%s,"prev":"%s"}\n' % (seq, body, prev)
            write(line)
            prev = sha256(line).hexdigest().encode()
        self.events += seq - self.seq
        self.seq = seq
        self._prev = prev

    def trailer(self) -> None:
        head = self._prev.decode()
        self._write(_inner({"kind": "trailer", "count": self.events, "hash": head}))


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    raw: bytes
    record: dict[str, Any] | None  # None: not a JSON object

    @property
    def seq(self) -> int | None:
        seq = self.record.get("seq") if self.record else None
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else None

    @property
    def prev(self) -> Any:
        return self.record.get("prev") if self.record else None

    @property
    def kind(self) -> Any:
        return self.record.get("kind") if self.record else None


@dataclass
class Verdict:
    """What verify found: ``problem`` None when the chain is intact."""

    lines: int
    events: int
    problem: Tamper | None = None
    line: int | None = None  # the first line that was tampered with (1-based)
    detail: str = ""
    event_lines: list[Line] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "lines": self.lines, "events": self.events}
        return {
            "ok": False,
            "problem": self.problem,
            "line": self.line,
            "detail": self.detail,
            "lines": self.lines,
        }


def read_lines(data: Iterable[bytes]) -> Iterator[Line]:
    for number, raw in enumerate(data, start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        yield Line(number, raw, record if isinstance(record, dict) else None)


def verify(data: Iterable[bytes]) -> Verdict:
    """Check the chain of ``data`` (the file's lines, newlines kept)."""
    lines = list(read_lines(data))
    verdict = _first_break(lines)
    if verdict is not None:
        return verdict
    events = [line for line in lines if line.kind == "event"]
    return Verdict(len(lines), len(events), event_lines=events)


def _fail(lines: list[Line], problem: Tamper, number: int, detail: str) -> Verdict:
    return Verdict(len(lines), 0, problem, number, detail)


def _first_break(lines: list[Line]) -> Verdict | None:
    n = len(lines)
    if n == 0:
        return _fail(lines, "removed", 1, "the file is empty: its header is missing")
    for index, line in enumerate(lines):
        number = index + 1
        expected_prev = ZERO if index == 0 else digest(lines[index - 1].raw)
        if line.seq != number:
            return _out_of_sequence(lines, index)
        if not line.raw.endswith(b"\n"):
            return _fail(lines, "altered", number, "the line is cut short (no newline)")
        if line.prev != expected_prev:
            return _broken_link(lines, index)
        if problem := _misplaced(lines, index):
            return problem
    last = lines[-1]
    if last.kind != "trailer":
        return _fail(
            lines,
            "removed",
            n + 1,
            f"the file ends after line {n} without its trailer: lines at the end were removed",
        )
    record = last.record or {}
    if record.get("hash") != last.prev:
        return _fail(lines, "altered", n, "the trailer's hash is not the chain's head")
    count = record.get("count")
    if count != n - 2:
        return _fail(
            lines, "altered", n, f"the trailer counts {count} events, the file has {n - 2}"
        )
    # No line hashes the trailer itself: it must be exactly what an export writes.
    members = _inner({"kind": "trailer", "count": count, "hash": last.prev})
    if last.raw != b'{"seq":%d,%s,"prev":"%s"}\n' % (n, members, str(last.prev).encode()):
        return _fail(lines, "altered", n, "the trailer is not as an export writes it")
    return None


def _misplaced(lines: list[Line], index: int) -> Verdict | None:
    """A line whose kind does not fit where it is (the chain around it being intact)."""
    line, number = lines[index], index + 1
    if number == 1:
        if line.kind != "header" or line.record is None or line.record.get("format") != FORMAT:
            return _fail(lines, "altered", 1, f"line 1 is not a {FORMAT} header")
        return None
    if line.kind == "trailer":
        if number != len(lines) and line.record is not None and "count" not in line.record:
            return _fail(lines, "altered", number, f"line {number} was changed into a trailer")
        if number != len(lines):
            return _fail(lines, "inserted", number + 1, f"line {number + 1} follows the trailer")
        return None
    if line.kind != "event":
        return _fail(lines, "altered", number, "the line is neither an event nor the trailer")
    return None


def _out_of_sequence(lines: list[Line], index: int) -> Verdict:
    """Line ``index + 1`` carries another sequence number than its own line number."""
    number = index + 1
    seq = lines[index].seq
    following = lines[index + 1].seq if index + 1 < len(lines) else None
    later = {line.seq for line in lines[index + 1 :]}
    if seq == number - 1 and lines[index].raw != lines[index - 1].raw and _chains_to(lines, index):
        # Two lines claim one place and the chain goes on from this one: the line before it
        # was put in (with a sequence number and ``prev`` made to fit).
        return _fail(lines, "inserted", number - 1, f"line {number - 1} was inserted")
    if seq is not None and sum(1 for line in lines if line.seq == seq) > 1:
        # A second line with this number, where the lines before are all in place.
        return _fail(lines, "inserted", number, f"line {number} repeats line {seq} (inserted)")
    if seq is not None and seq > number and number in later:
        return _fail(
            lines,
            "reordered",
            number,
            f"line {number} holds line {seq}; line {number} comes later in the file",
        )
    if following == number:
        # The rest moved down by one: this line was put in.
        return _fail(lines, "inserted", number, f"line {number} was inserted (not in the chain)")
    if seq is not None and seq > number:
        gone = f"lines {number}-{seq - 1}" if seq - 1 > number else f"line {number}"
        return _fail(lines, "removed", number, f"{gone} removed (line {number} holds line {seq})")
    if seq is not None and seq < number:
        return _fail(
            lines, "inserted", number, f"line {number} repeats line {seq} (inserted or duplicated)"
        )
    return _fail(lines, "altered", number, f"line {number} was changed (its sequence number)")


def _chains_to(lines: list[Line], index: int) -> bool:
    """Whether the chain goes on from line ``index``: the next line names it as its
    predecessor, or it is the trailer that ends the file."""
    if index + 1 == len(lines):
        return bool(lines[index].kind == "trailer")
    return bool(lines[index + 1].prev == digest(lines[index].raw))


def _broken_link(lines: list[Line], index: int) -> Verdict:
    """Line ``index + 1`` is in sequence but its ``prev`` is not the previous line's hash:
    either the previous line was changed (then this line's successor still chains to this
    line), or this line's own ``prev`` was (then its successor does not chain to it)."""
    number = index + 1
    if index + 1 < len(lines) and lines[index + 1].seq == number:
        return _fail(lines, "inserted", number, f"line {number} was inserted (not in the chain)")
    if index + 1 < len(lines):
        this_changed = lines[index + 1].prev != digest(lines[index].raw)
    else:
        # The trailer: its ``hash`` repeats the head; a changed ``prev`` no longer equals it.
        record = lines[index].record or {}
        this_changed = record.get("hash") != lines[index].prev
    if this_changed:
        return _fail(lines, "altered", number, f"line {number} was changed")
    return _fail(
        lines,
        "altered",
        number - 1,
        f"line {number - 1} was changed (line {number} no longer chains)",
    )
