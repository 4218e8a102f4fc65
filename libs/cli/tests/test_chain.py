"""The export's hash chain: what verify finds after each kind of tampering, anywhere."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest
from tidemark_cli.chain import FORMAT, ZERO, ChainWriter, verify

EVENTS = 5  # lines: 1 header, 2-6 events, 7 trailer
LAST = EVENTS + 2


def export(events: int = EVENTS) -> list[bytes]:
    out = io.BytesIO()
    writer = ChainWriter(out)
    writer.header("2026-11-30T10:00:00.000000Z", {"organization": "o"}, ["a", "b"])
    writer.events_from(
        json.dumps(
            {"kind": "event", "store": "a", "position": n, "event": {"n": n}},
            separators=(",", ":"),
        )[1:-1].encode()
        for n in range(1, events + 1)
    )
    writer.trailer()
    return out.getvalue().splitlines(keepends=True)


def rewrite(line: bytes, change: dict[str, Any]) -> bytes:
    """The line with some members changed, its seq and prev kept (a careful forger)."""
    record = json.loads(line)
    record.update(change)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def changed(line: bytes) -> bytes:
    record = json.loads(line)
    if record["kind"] == "header":
        return rewrite(line, {"filters": {}})
    if record["kind"] == "trailer":
        return rewrite(line, {"count": record["count"] + 1})
    return rewrite(line, {"event": {"n": -1}})


def problem(lines: list[bytes]) -> tuple[str | None, int | None]:
    verdict = verify(lines)
    return verdict.problem, verdict.line


def test_an_untouched_export_verifies_with_its_count() -> None:
    verdict = verify(export())
    assert verdict.ok
    assert (verdict.lines, verdict.events) == (LAST, EVENTS)
    assert verdict.as_json() == {"ok": True, "lines": LAST, "events": EVENTS}


def test_each_line_names_the_hash_of_the_line_before_it() -> None:
    lines = export()
    records = [json.loads(line) for line in lines]
    assert records[0]["prev"] == ZERO
    assert records[0]["format"] == FORMAT
    for before, record in zip(lines, records[1:], strict=False):
        assert record["prev"] == hashlib.sha256(before).hexdigest()
    assert [r["seq"] for r in records] == list(range(1, LAST + 1))
    assert records[-1] == {
        "seq": LAST,
        "kind": "trailer",
        "count": EVENTS,
        "hash": records[-1]["prev"],
        "prev": records[-1]["prev"],
    }


def test_an_empty_export_is_a_header_and_a_trailer_and_verifies() -> None:
    lines = export(events=0)
    assert len(lines) == 2
    verdict = verify(lines)
    assert verdict.ok
    assert verdict.events == 0


def test_an_empty_file_lacks_its_header() -> None:
    assert problem([]) == ("removed", 1)


@pytest.mark.parametrize("number", [1, 2, 4, EVENTS + 1, LAST])
def test_a_changed_line_is_named(number: int) -> None:
    lines = export()
    lines[number - 1] = changed(lines[number - 1])
    assert problem(lines) == ("altered", number)


@pytest.mark.parametrize("number", [1, 2, 4, EVENTS + 1, LAST])
def test_a_removed_line_is_named(number: int) -> None:
    lines = export()
    del lines[number - 1]
    assert problem(lines) == ("removed", number)


@pytest.mark.parametrize("number", [1, 2, 4, LAST, LAST + 1])
def test_an_inserted_copy_of_a_line_is_named(number: int) -> None:
    lines = export()
    lines.insert(number - 1, lines[2])
    assert problem(lines) == ("inserted", number)


@pytest.mark.parametrize("number", [2, 4, LAST])
def test_an_inserted_line_made_to_fit_the_chain_is_named(number: int) -> None:
    """A forged event with the right seq and prev: the chain still breaks after it."""
    lines = export()
    before = lines[number - 2]
    forged = rewrite(
        lines[2], {"seq": number, "prev": hashlib.sha256(before).hexdigest(), "event": {}}
    )
    lines.insert(number - 1, forged)
    assert problem(lines) == ("inserted", number)


@pytest.mark.parametrize("number", [1, 3, EVENTS + 1])
def test_two_swapped_lines_are_named_as_reordered(number: int) -> None:
    lines = export()
    lines[number - 1], lines[number] = lines[number], lines[number - 1]
    assert problem(lines) == ("reordered", number)


def test_an_event_moved_far_down_is_reordered_at_its_place() -> None:
    lines = export()
    moved = lines.pop(1)
    lines.insert(EVENTS, moved)
    assert problem(lines) == ("reordered", 2)


def test_a_file_cut_off_before_its_trailer_is_missing_lines_at_the_end() -> None:
    lines = export()[:4]
    verdict = verify(lines)
    assert (verdict.problem, verdict.line) == ("removed", 5)
    assert "trailer" in verdict.detail


def test_a_last_line_cut_short_is_altered() -> None:
    lines = export()
    lines[-1] = lines[-1][:-10]
    assert problem(lines) == ("altered", LAST)


def test_a_trailer_whose_hash_is_changed_is_altered() -> None:
    lines = export()
    lines[-1] = rewrite(lines[-1], {"hash": "f" * 64})
    assert problem(lines) == ("altered", LAST)


def test_a_trailer_whose_prev_is_changed_is_the_trailer_altered_not_the_line_before() -> None:
    lines = export()
    lines[-1] = rewrite(lines[-1], {"prev": "f" * 64})
    assert problem(lines) == ("altered", LAST)


def test_an_event_line_whose_prev_is_changed_is_that_line() -> None:
    lines = export()
    lines[3] = rewrite(lines[3], {"prev": "f" * 64})
    assert problem(lines) == ("altered", 4)


def test_a_header_turned_into_something_else_is_altered() -> None:
    lines = export()
    lines[0] = rewrite(lines[0], {"kind": "event"})
    assert problem(lines) == ("altered", 1)


def test_a_line_that_is_not_json_is_altered() -> None:
    lines = export()
    lines[3] = b"not json\n"
    assert problem(lines) == ("altered", 4)


def test_an_event_turned_into_a_trailer_is_altered() -> None:
    lines = export()
    lines[3] = rewrite(lines[3], {"kind": "trailer"})
    assert problem(lines) == ("altered", 4)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda line: line[:-2] + b',"note":"added"}\n',  # a member more
        lambda line: line[:-1] + b" \n",  # trailing whitespace
        lambda line: line.replace(b'{"seq"', b'{ "seq"', 1),  # other spacing
    ],
)
def test_a_trailer_changed_in_any_way_that_keeps_its_values_is_altered(
    tamper: Any,
) -> None:
    lines = export()
    lines[-1] = tamper(lines[-1])
    assert problem(lines) == ("altered", len(lines))
