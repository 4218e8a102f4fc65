"""One artifact to several destinations at once: each at its own pace, each failing alone."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tidemark_backup_runner.storage import LocalArtifactWriter
from tidemark_backup_runner.storage.fanout import AllDestinationsFailed, FanOut

ORG = uuid.uuid4()
KEY = "env/backup.db.pgdump.zst"
CHUNKS = [bytes([i]) * 1000 for i in range(20)]
MANIFEST = {"sizeBytes": 20_000, "checksum": "sha256:" + "0" * 64}


class RecordingWriter:
    """A test double of a destination: records what it gets, optionally slowly, and fails
    at the chunk or the step it is told to."""

    def __init__(
        self, *, delay: float = 0.0, fail_at_chunk: int | None = None, fail_on: str = ""
    ) -> None:
        self.delay = delay
        self.fail_at_chunk = fail_at_chunk
        self.fail_on = fail_on
        self.chunks: list[bytes] = []
        self.calls: list[str] = []
        self.threads: set[str] = set()

    def open(self) -> None:
        self.calls.append("open")
        if self.fail_on == "open":
            raise OSError(28, "No space left on device")

    def write(self, chunk: bytes) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_at_chunk is not None and len(self.chunks) == self.fail_at_chunk:
            raise OSError(5, "Input/output error")
        time.sleep(self.delay)
        self.chunks.append(chunk)

    def seal(self, manifest: Mapping[str, Any]) -> None:
        self.calls.append("seal")
        if self.fail_on == "seal":
            raise OSError(5, "verification failed")

    def abort(self) -> None:
        self.calls.append("abort")


def produce(fan: FanOut) -> None:
    fan.open()
    for chunk in CHUNKS:
        fan.write(chunk)


def test_a_failing_destination_is_dropped_while_the_others_get_everything(
    tmp_path: Path,
) -> None:
    local = LocalArtifactWriter(tmp_path, ORG, "ok", KEY, "t1")
    failing = RecordingWriter(fail_at_chunk=3)
    fan = FanOut([local, failing], queue_chunks=2)  # type: ignore[list-item]
    produce(fan)
    fan.seal(MANIFEST)
    assert [lane.sealed for lane in fan.lanes] == [True, False]
    assert fan.lanes[1].error == "Input/output error"
    assert failing.calls == ["open", "abort"]
    local.commit()
    assert (tmp_path / str(ORG) / "ok" / KEY).read_bytes() == b"".join(CHUNKS)


def test_destinations_are_written_at_the_same_time_each_on_its_own_thread() -> None:
    slow = [RecordingWriter(delay=0.05), RecordingWriter(delay=0.05)]
    fan = FanOut(slow, queue_chunks=4)  # type: ignore[arg-type]
    started = time.monotonic()
    produce(fan)
    fan.seal(MANIFEST)
    elapsed = time.monotonic() - started
    # One after the other would take 2 s (20 chunks x 50 ms, twice).
    assert elapsed < 1.6, elapsed
    assert all(w.chunks == CHUNKS for w in slow)
    assert len(slow[0].threads | slow[1].threads) == 2


def test_when_every_destination_failed_the_producer_is_stopped_with_every_reason() -> None:
    fan = FanOut(
        [RecordingWriter(fail_on="open"), RecordingWriter(fail_at_chunk=0)]  # type: ignore[list-item]
    )
    with pytest.raises(AllDestinationsFailed) as failed:
        produce(fan)
    assert str(failed.value) == "No space left on device; Input/output error"
    fan.abort()  # ends the lanes; safe after they failed


def test_a_destination_failing_its_seal_fails_alone_and_none_left_fails_the_artifact() -> None:
    fine, failing = RecordingWriter(), RecordingWriter(fail_on="seal")
    fan = FanOut([fine, failing])  # type: ignore[list-item]
    produce(fan)
    fan.seal(MANIFEST)
    assert [lane.sealed for lane in fan.lanes] == [True, False]
    assert failing.calls == ["open", "seal", "abort"]

    alone = FanOut([RecordingWriter(fail_on="seal")])  # type: ignore[list-item]
    produce(alone)
    with pytest.raises(AllDestinationsFailed, match="verification failed"):
        alone.seal(MANIFEST)


def test_abort_reaches_every_destination_opened_or_not() -> None:
    never_opened = RecordingWriter()
    FanOut([never_opened]).abort()  # type: ignore[list-item]
    assert never_opened.calls == ["abort"]
    writers = [RecordingWriter(), RecordingWriter()]
    fan = FanOut(writers)  # type: ignore[arg-type]
    produce(fan)
    fan.abort()
    assert [w.calls for w in writers] == [["open", "abort"], ["open", "abort"]]
    with pytest.raises(AllDestinationsFailed):
        fan.write(b"after the end")


def test_a_destination_failure_names_what_failed_never_the_runners_path(
    tmp_path: Path,
) -> None:
    (tmp_path / str(ORG)).mkdir()
    (tmp_path / str(ORG) / "blocked").write_text("a file where the directory should be")
    fan = FanOut([LocalArtifactWriter(tmp_path, ORG, "blocked", KEY, "t1")])
    with pytest.raises(AllDestinationsFailed) as failed:
        produce(fan)
    assert str(failed.value) == "Not a directory: <organization>/blocked"
    assert str(tmp_path) not in str(failed.value)
