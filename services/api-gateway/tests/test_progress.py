"""The progress hub and its streams, without I/O: an in-memory log stands in for the tail
of ``backup.progress`` (the real tail is tested on Kafka in the platform's tests, the
whole stream end to end in tests/e2e/test_progress_stream.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.response import ServerSentEventMessage
from tidemark_api_gateway.controllers.progress import parse_last_event_id
from tidemark_api_gateway.progress import EncodedEvents, ProgressHub
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import BackupProgress
from tidemark_platform.tail import TailRecord

BACKUP = uuid.uuid4()
ENVIRONMENT = uuid.uuid4()
ORGANIZATION = uuid.uuid4()


class MemoryLog:
    """One partition's records, and a tail position over them (the tail's contract)."""

    def __init__(self) -> None:
        self.records: list[TailRecord] = []
        self.position_now = 0
        self.range_reads: list[tuple[int, int]] = []
        # A catch-up read waits for this when set, and raises this when set.
        self.range_gate: asyncio.Event | None = None
        self.range_error: BaseException | None = None

    def partition_for(self, key: bytes) -> int:
        return 0

    async def position(self, partition: int) -> int:
        return self.position_now

    async def read_range(self, partition: int, start: int, end: int) -> list[TailRecord]:
        self.range_reads.append((start, end))
        if self.range_gate is not None:
            await self.range_gate.wait()
        if self.range_error is not None:
            raise self.range_error
        return [r for r in self.records if start <= r.offset < end]

    def append(self, status: str = "running", backup_id: uuid.UUID = BACKUP) -> TailRecord:
        tick = BackupProgress(
            backup_id=backup_id,
            environment_id=ENVIRONMENT,
            status=status,  # type: ignore[arg-type]
            phase="dumping" if status == "running" else status,
            percent=None,
            bytes_done=len(self.records),
            bytes_total=None,
            at=utc_now(),
        )
        envelope = Envelope.wrap(
            tick, producer="test", organization_id=ORGANIZATION, environment_id=ENVIRONMENT
        )
        record = TailRecord(0, len(self.records), b"k", envelope.to_bytes(), 0)
        self.records.append(record)
        return record


class ReadModel:
    def __init__(self, status: str = "running", checksum: str | None = None) -> None:
        self.status = status
        self.checksum = checksum
        self.reads = 0

    async def __call__(self) -> dict[str, Any] | None:
        self.reads += 1
        return {"id": str(BACKUP), "status": self.status, "checksum": self.checksum}


def hub(log: MemoryLog, **options: Any) -> ProgressHub:
    settings: dict[str, Any] = {
        "queue_size": 16,
        "heartbeat_seconds": 5.0,
        "state_poll_seconds": 5.0,
        "terminal_wait_seconds": 1.0,
        **options,
    }
    return ProgressHub(log, **settings)  # type: ignore[arg-type]


def live(progress: ProgressHub, log: MemoryLog, *records: TailRecord) -> None:
    """The tail hands ``records`` out: its position moves past them."""
    log.position_now = records[-1].offset + 1
    progress.dispatch(list(records))


def events(message: ServerSentEventMessage) -> list[ServerSentEventMessage]:
    """The events one write carries (ticks waiting together go out in one)."""
    return list(message.events) if isinstance(message, EncodedEvents) else [message]


async def take(stream: AsyncIterator[ServerSentEventMessage], n: int) -> list[Any]:
    got: list[ServerSentEventMessage] = []
    while len(got) < n:
        got += events(await asyncio.wait_for(anext(stream), 5.0))
    assert len(got) == n, got
    return got


async def rest(stream: AsyncIterator[ServerSentEventMessage]) -> list[Any]:
    return [e async for m in stream for e in events(m)]


def ids(messages: list[ServerSentEventMessage]) -> list[Any]:
    return [m.id for m in messages if m.id is not None]


async def test_a_stream_starts_with_the_state_then_live_ticks_then_the_final_resource() -> None:
    log, model = MemoryLog(), ReadModel("running")
    log.append()  # before the stream: not sent
    log.position_now = 1
    progress = hub(log)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    [first] = await take(stream, 1)
    assert (first.event, first.id) == ("progress", 1)
    assert json.loads(first.data)["status"] == "running"
    live(progress, log, log.append(), log.append("running", backup_id=uuid.uuid4()))
    live(progress, log, log.append())
    ticks = await take(stream, 2)
    assert [(m.event, m.id) for m in ticks] == [("progress", 2), ("progress", 4)]
    data = json.loads(ticks[0].data)
    assert set(data) == {
        "backupId",
        "status",
        "phase",
        "percent",
        "bytesDone",
        "bytesTotal",
        "message",
        "at",
    }
    assert data["backupId"] == str(BACKUP)
    assert data["phase"] == "dumping"
    model.status = "completed"
    live(progress, log, log.append("completed"))
    final = await rest(stream)
    assert [(m.event, m.id) for m in final] == [("completed", 5)]
    assert json.loads(final[0].data)["status"] == "completed"


async def test_a_terminal_tick_waits_for_the_read_model_to_show_the_final_state() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, terminal_wait_seconds=5.0)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    live(progress, log, log.append("failed"))
    waiting = asyncio.ensure_future(rest(stream))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    model.status = "failed"
    final = await asyncio.wait_for(waiting, 5.0)
    assert [(m.event, m.id) for m in final] == [("failed", 1)]


async def test_a_terminal_tick_never_projected_ends_the_stream_without_a_terminal_event() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, terminal_wait_seconds=0.5)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    live(progress, log, log.append("completed"))
    final = await asyncio.wait_for(rest(stream), 5.0)
    # Only a comment: the client resumes from before the tick, which it gets again.
    assert [m.event for m in final] == [None]
    assert ids(final) == []


async def test_a_terminal_state_without_a_tick_still_ends_the_stream() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, state_poll_seconds=0.1)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    live(progress, log, log.append())
    await take(stream, 1)
    model.status = "completed"  # its terminal tick was lost
    final = await asyncio.wait_for(rest(stream), 5.0)
    assert [(m.event, m.id) for m in final] == [("completed", 2)]
    assert progress._watchers == {}
    assert progress._subscriptions == {}


async def test_a_followed_backup_is_read_by_one_watcher_not_one_per_stream() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, state_poll_seconds=0.05)
    streams = [progress.stream(BACKUP, ENVIRONMENT, model, None) for _ in range(50)]
    for stream in streams:
        await take(stream, 1)
    before = model.reads
    await asyncio.sleep(0.5)
    assert model.reads - before <= 12
    for stream in streams:
        await stream.aclose()
    assert progress._watchers == {}


@pytest.mark.parametrize(
    ("status", "checksum", "event"),
    [
        ("completed", "sha256:" + "0" * 64, "completed"),
        ("failed", None, "failed"),
        ("deleting", "sha256:" + "0" * 64, "completed"),
        ("deleted", None, "failed"),
    ],
)
async def test_a_backup_already_over_gets_its_terminal_event_at_once(
    status: str, checksum: str | None, event: str
) -> None:
    log = MemoryLog()
    log.position_now = 7
    progress = hub(log)
    final = await asyncio.wait_for(
        rest(progress.stream(BACKUP, ENVIRONMENT, ReadModel(status, checksum), None)), 5.0
    )
    assert [(m.event, m.id) for m in final] == [(event, 7)]
    assert json.loads(final[0].data)["status"] == status


async def test_resuming_reads_what_was_missed_from_the_log_then_goes_on_live() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    first = progress.stream(BACKUP, ENVIRONMENT, model, None)
    [state] = await take(first, 1)
    live(progress, log, log.append())
    got = await take(first, 1)
    await first.aclose()  # the client drops after id 1
    live(progress, log, log.append(), log.append())
    live(progress, log, log.append("running", backup_id=uuid.uuid4()))
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, int(got[-1].id))
    got += await take(resumed, 2)
    assert log.range_reads == [(1, 4)]
    live(progress, log, log.append())
    got += await take(resumed, 1)
    assert ids([state, *got]) == [0, 1, 2, 3, 5]
    await resumed.aclose()


async def test_resuming_ahead_of_this_instance_skips_what_the_client_already_has() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    for _ in range(3):
        log.append()
    log.position_now = 1  # this instance's tail is behind the one the client came from
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, 3)
    waiting = asyncio.ensure_future(take(resumed, 1))
    await asyncio.sleep(0)
    live(progress, log, *log.records[1:3])
    live(progress, log, log.append())
    assert ids(await waiting) == [4]
    await resumed.aclose()


async def test_a_client_too_far_behind_gets_a_fresh_stream_not_a_catch_up_read() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, max_catchup_offsets=5)
    for _ in range(10):
        log.append()
    log.position_now = 10
    # Last-Event-ID: 0 (or a long absence): 10 offsets behind, more than 5.
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, 0)
    [state] = await take(resumed, 1)
    assert log.range_reads == []
    # The current state, with an id past the client's: ids still increase.
    assert (state.event, state.id) == ("progress", 10)
    assert json.loads(state.data)["phase"] == "running"
    live(progress, log, log.append())
    assert ids(await take(resumed, 1)) == [11]
    await resumed.aclose()
    # Within the bound, it is still a catch-up read with every missed tick.
    within = progress.stream(BACKUP, ENVIRONMENT, model, 6)
    assert ids(await take(within, 5)) == [7, 8, 9, 10, 11]
    assert log.range_reads == [(6, 11)]
    await within.aclose()


@pytest.mark.parametrize("error", [TimeoutError(), OSError("broker gone"), RuntimeError("x")])
async def test_a_catch_up_read_that_fails_falls_back_to_a_fresh_stream(
    error: BaseException,
) -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    for _ in range(3):
        log.append()
    log.position_now = 3
    log.range_error = error
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, 1)
    [state] = await take(resumed, 1)
    assert log.range_reads == [(1, 3)]
    assert (state.event, state.id) == ("progress", 3)
    assert json.loads(state.data)["status"] == "running"
    live(progress, log, log.append())
    assert ids(await take(resumed, 1)) == [4]
    await resumed.aclose()


async def test_a_catch_up_read_that_fails_on_a_finished_backup_sends_the_terminal_event() -> None:
    log, model = MemoryLog(), ReadModel("completed", "sha256:" + "0" * 64)
    progress = hub(log)
    log.append()
    log.append("completed")
    log.position_now = 2
    log.range_error = TimeoutError()
    final = await asyncio.wait_for(rest(progress.stream(BACKUP, ENVIRONMENT, model, 0)), 5.0)
    assert [(m.event, m.id) for m in final] == [("completed", 2)]


async def test_a_slow_catch_up_read_sends_heartbeats_and_is_dropped_with_its_stream() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, heartbeat_seconds=0.2)
    log.append()
    log.append()
    log.position_now = 2
    log.range_gate = asyncio.Event()
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, 0)
    beats = await take(resumed, 2)
    assert [m.comment for m in beats] == ["ping", "ping"]
    log.range_gate.set()
    assert ids(await take(resumed, 2)) == [1, 2]
    await resumed.aclose()
    # A client that leaves during the read leaves nothing behind.
    log.range_gate.clear()
    gone = progress.stream(BACKUP, ENVIRONMENT, model, 0)
    await take(gone, 1)
    await gone.aclose()
    assert progress._subscriptions == {}
    await asyncio.sleep(0)  # the cancelled read ends at its next step
    assert [t for t in asyncio.all_tasks() if "read_range" in repr(t) and not t.done()] == []


async def test_no_stream_is_silent_longer_than_the_heartbeat_while_a_terminal_tick_waits() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, heartbeat_seconds=1.0, terminal_wait_seconds=2.5)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    loop = asyncio.get_running_loop()
    [beat] = await take(stream, 1)
    assert beat.comment == "ping"
    times = [loop.time()]
    await asyncio.sleep(0.6)  # idle since the ping when the terminal tick comes
    live(progress, log, log.append("completed"))  # the read model never shows it
    async for _ in stream:
        times.append(loop.time())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 3, gaps
    assert max(gaps) <= 1.0, gaps


async def test_a_stream_resumed_after_the_watcher_fired_gets_its_own_watcher() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, state_poll_seconds=0.05)
    first = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(first, 1)
    model.status = "completed"  # its terminal tick was lost
    # The watcher fires for the first stream, which its client does not read yet: the
    # backup is still followed on this gateway.
    for _ in range(100):
        if not progress._watchers:
            break
        await asyncio.sleep(0.05)
    assert BACKUP in progress._subscriptions
    resumed = progress.stream(BACKUP, ENVIRONMENT, model, 0)
    final = await asyncio.wait_for(rest(resumed), 5.0)
    assert [(m.event, m.id) for m in final] == [("completed", 1)]
    assert [(m.event, m.id) for m in await asyncio.wait_for(rest(first), 5.0)] == [("completed", 1)]
    assert progress._watchers == {}


async def test_a_slow_client_overflows_and_ends_while_the_others_get_every_tick() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, queue_size=4)
    slow = progress.stream(BACKUP, ENVIRONMENT, model, None)
    fast = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(slow, 1)
    await take(fast, 1)
    received: list[Any] = []
    for _ in range(10):
        live(progress, log, log.append())  # never waits for anyone
        received += await take(fast, 1)
    assert ids(received) == list(range(1, 11))
    # The slow one was offered more than it may hold: it ends, with no tick past the gap.
    assert await asyncio.wait_for(rest(slow), 5.0) == []
    assert len(progress._subscriptions[BACKUP]) == 1
    await fast.aclose()


async def test_ticks_waiting_together_go_out_in_one_write_encoded_once() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    one = progress.stream(BACKUP, ENVIRONMENT, model, None)
    other = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(one, 1)
    await take(other, 1)
    live(progress, log, log.append(), log.append(), log.append())
    [write] = [await asyncio.wait_for(anext(one), 5.0)]
    assert isinstance(write, EncodedEvents)
    assert [e.id for e in write.events] == [1, 2, 3]
    assert write.encode() == b"".join(e.encode() for e in write.events)
    assert write.encode().count(b"event: progress") == 3
    [same] = [await asyncio.wait_for(anext(other), 5.0)]
    assert [a is b for a, b in zip(write.events, same.events, strict=True)] == [True] * 3
    await one.aclose()
    await other.aclose()


async def test_an_idle_stream_sends_comment_heartbeats() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log, heartbeat_seconds=0.1)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    beats = await take(stream, 3)
    assert all(m.comment == "ping" and m.data is None and m.id is None for m in beats)
    assert ServerSentEventMessage(comment="ping", data=None).encode() == b": ping\r\n\r\n"
    await stream.aclose()


async def test_when_the_tail_stops_every_stream_ends_to_resume_by_id() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    for subscription in progress._subscriptions[BACKUP]:
        subscription.interrupted = True
        subscription.wake.set()
    assert await asyncio.wait_for(rest(stream), 5.0) == []


async def test_records_that_are_not_progress_ticks_are_skipped() -> None:
    log, model = MemoryLog(), ReadModel("running")
    progress = hub(log)
    stream = progress.stream(BACKUP, ENVIRONMENT, model, None)
    await take(stream, 1)
    log.records.append(TailRecord(0, 0, b"k", b"not json", 0))
    log.records.append(TailRecord(0, 1, b"k", None, 0))
    live(progress, log, *log.records)
    live(progress, log, log.append())
    assert ids(await take(stream, 1)) == [3]
    await stream.aclose()


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "٣", "9" * 19, "null", " ", ""])
def test_a_last_event_id_this_api_never_sent_starts_a_new_stream(value: str) -> None:
    assert parse_last_event_id(value) is None


def test_a_last_event_id_resumes_from_its_number() -> None:
    assert parse_last_event_id(None) is None
    assert parse_last_event_id("42") == 42
    assert parse_last_event_id(" 7 ") == 7
