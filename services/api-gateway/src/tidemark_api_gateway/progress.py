"""Live progress of backups over SSE: one Kafka tail per gateway, fanned out in memory.

Design (API.md "SSE streams"):

- Progress ticks (``BackupProgress``) are on ``backup.progress``, keyed by environment, so
  all ticks of one backup are in one partition, in order. Each gateway instance runs ONE
  groupless consumer of every partition, starting at the end (``TopicTail``), and hands
  each tick to the streams of its backup that this instance serves.
- Event ids are Kafka offsets: a tick at offset ``o`` of the backup's partition has id
  ``o + 1``, which reads "resume from offset o + 1". The first event of a new stream (the
  backup's current state, from the read model) has id ``p``, the tail's position in that
  partition when the stream subscribed: every tick it then receives has an offset >= p,
  so an id > p. Ids therefore increase within a stream and mean the same thing on every
  instance: ``Last-Event-ID: N`` on any gateway re-reads the partition from offset N up
  to where its tail stands (a short-lived catch-up read), then continues live, skipping
  offsets already delivered: no repeats, no gaps. A resumed stream does not repeat the
  current state; it only continues.
- A catch-up read is bounded: when the client is more than ``max_catchup_offsets`` behind
  the tail (``Last-Event-ID: 0``, or back after a long absence on a busy partition), or
  the read fails or times out, the stream starts afresh instead, exactly as a new one:
  the current state first, with id ``p`` (the tail's position, so greater than the id the
  client had, and ids still increase), then live ticks. Such a client gets the backup's
  current state in place of every tick it missed (ticks are progress, not history), and
  never a stream that ends before its first event only to be retried with the same id.
- The terminal event (``completed`` / ``failed``) carries the final resource as GET
  /backups/{id} returns it. When the terminal tick arrives before the projection shows a
  terminal status, the stream waits for the read model (bounded by
  ``sse_terminal_wait_seconds``); if it still is not terminal, the stream ends without a
  terminal event and the client, resuming with its last id, gets the terminal tick again.
  Ticks are ephemeral, so one watcher per followed backup also polls the read model: a
  backup that turned terminal without a terminal tick (lost) still gets its terminal
  event, with the next id, after the status was seen twice (the tick, which usually comes
  first, gets the chance to).
- ``deleting`` and ``deleted`` backups are terminal for a stream (nothing more will run):
  the terminal event is ``completed`` when the backup had completed (it has a checksum),
  else ``failed``, and its data is the resource as it stands (status ``deleting`` or
  ``deleted``).
- A slow client never holds the tail: a tick is offered to each stream without waiting,
  into a bounded per-stream buffer. When the buffer is full the stream is marked
  overflowed and ends as soon as it next runs (after what it already holds was not sent:
  its last delivered id is exact), and the client resumes with ``Last-Event-ID`` from
  Kafka. A client that stopped reading altogether holds only its socket and that buffer.
- A comment heartbeat (``: ping``) is sent whenever nothing else was for
  ``sse_heartbeat_seconds``, timed from what the stream last sent, also while it waits
  for a catch-up read or for the read model to show a terminal state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from litestar.response import ServerSentEventMessage
from prometheus_client import Counter, Gauge
from tidemark_contracts import BACKUP_PROGRESS, Envelope, utc_now
from tidemark_contracts.backup import BackupProgress
from tidemark_contracts.restore import RestoreProgress
from tidemark_contracts.topics import RESTORE_PROGRESS
from tidemark_platform.logging import get_logger
from tidemark_platform.tail import TailRecord, TopicTail

log = get_logger(__name__)

OPEN_STREAMS = Gauge("tidemark_sse_open_streams", "Progress streams open on this gateway")
OVERFLOWED_STREAMS = Counter(
    "tidemark_sse_overflowed_streams_total",
    "Progress streams ended because their client read too slowly (it resumes by id)",
)

TERMINAL_STATUSES = frozenset({"completed", "failed", "deleting", "deleted"})
# How often a stream waiting for the projection after a terminal tick reads the backup.
TERMINAL_POLL_SECONDS = 0.2

# The backup as GET /backups/{id} answers it (JSON, camelCase), or None.
ReadState = Callable[[], Awaitable[dict[str, Any] | None]]
AnyProgress = BackupProgress | RestoreProgress


@dataclass(frozen=True)
class ProgressKind:
    """What a hub follows: backups' progress, or restores' (same stream rules, one code
    path): its topic, its tick's class, and the attribute and JSON key naming the subject."""

    topic: str
    tick: type[BackupProgress] | type[RestoreProgress]
    id_attribute: str
    id_key: str

    def subject(self, progress: AnyProgress) -> uuid.UUID:
        subject: uuid.UUID = getattr(progress, self.id_attribute)
        return subject


BACKUPS = ProgressKind(BACKUP_PROGRESS.name, BackupProgress, "backup_id", "backupId")
RESTORES = ProgressKind(RESTORE_PROGRESS.name, RestoreProgress, "restore_id", "restoreId")


class EncodedEvent(ServerSentEventMessage):
    """An event encoded once, however many streams send it (a tick reaches every stream
    of its backup with the same id and data)."""

    def __init__(self, message: ServerSentEventMessage) -> None:
        super().__init__(
            data=message.data, event=message.event, id=message.id, comment=message.comment
        )
        self._encoded = message.encode()

    def encode(self) -> bytes:
        return self._encoded


class EncodedEvents(ServerSentEventMessage):
    """Several encoded events sent in one write."""

    def __init__(self, events: list[EncodedEvent]) -> None:
        super().__init__(data=None, id=events[-1].id)
        self.events = events
        self._encoded = b"".join(e.encode() for e in events)

    def encode(self) -> bytes:
        return self._encoded


PING = EncodedEvent(ServerSentEventMessage(comment="ping", data=None))


@dataclass(frozen=True)
class Tick:
    """A progress tick as a stream delivers it: its id, and when Kafka took it."""

    event_id: int
    progress: AnyProgress
    published_ms: int
    kind: ProgressKind = BACKUPS
    encoded: list[EncodedEvent] = field(default_factory=list, compare=False)

    @property
    def subject(self) -> uuid.UUID:
        return self.kind.subject(self.progress)

    def as_event(self) -> EncodedEvent:
        """The tick as a ``progress`` event, encoded on first use."""
        if not self.encoded:
            self.encoded.append(
                EncodedEvent(
                    ServerSentEventMessage(
                        id=self.event_id,
                        event="progress",
                        data=_json(progress_data(self.progress, self.kind)),
                    )
                )
            )
        return self.encoded[0]

    @classmethod
    def of(cls, record: TailRecord, kind: ProgressKind = BACKUPS) -> Tick | None:
        """The tick in ``record``, or None when it is not a decodable tick of ``kind``."""
        if record.value is None:
            return None
        try:
            envelope = Envelope.from_bytes(record.value)
            if envelope.message_type != kind.tick.message_type:
                return None
            progress = kind.tick.model_validate(envelope.payload)
        except ValueError:
            return None
        return cls(record.offset + 1, progress, record.timestamp_ms, kind)


@dataclass(eq=False)
class Subscription:
    """One stream's mailbox: ticks of its backup at or past ``next_offset``."""

    backup_id: uuid.UUID
    partition: int
    capacity: int
    next_offset: int = 0
    ticks: deque[Tick] = field(default_factory=deque)
    overflowed: bool = False
    # Set by the hub: the tail stopped (ticks may be missed), or the read model shows the
    # backup terminal although no terminal tick came.
    interrupted: bool = False
    terminal_state: dict[str, Any] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # When the stream last sent something, and whether the hub asks it for a heartbeat.
    last_sent: float = field(default_factory=time.monotonic)
    ping_due: bool = False

    def offer(self, tick: Tick) -> None:
        """Take ``tick`` without ever waiting: a full mailbox marks the stream overflowed."""
        if self.overflowed or tick.event_id - 1 < self.next_offset:
            return
        if len(self.ticks) >= self.capacity:
            self.overflowed = True
            self.ticks.clear()
            OVERFLOWED_STREAMS.inc()
        else:
            self.ticks.append(tick)
        self.wake.set()


def progress_data(tick: AnyProgress, kind: ProgressKind = BACKUPS) -> dict[str, Any]:
    return {
        kind.id_key: str(kind.subject(tick)),
        "status": tick.status,
        "phase": tick.phase,
        "percent": tick.percent,
        "bytesDone": tick.bytes_done,
        "bytesTotal": tick.bytes_total,
        "message": tick.message,
        "at": tick.at.isoformat().replace("+00:00", "Z"),
    }


def state_data(state: dict[str, Any], kind: ProgressKind = BACKUPS) -> dict[str, Any]:
    """The current state as a ``progress`` event's data (the read model keeps no finer
    progress than the status, which is also its phase)."""
    return {
        kind.id_key: state["id"],
        "status": state["status"],
        "phase": state["status"],
        "percent": None,
        "bytesDone": 0,
        "bytesTotal": None,
        "message": None,
        "at": utc_now().isoformat().replace("+00:00", "Z"),
    }


def terminal_event(state: dict[str, Any], event_id: int) -> ServerSentEventMessage:
    status = state["status"]
    if status in ("deleting", "deleted"):
        name = "completed" if state.get("checksum") else "failed"
    else:
        name = status
    return ServerSentEventMessage(id=event_id, event=name, data=_json(state))


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class ProgressHub:
    """This instance's progress streams, fed by one tail of ``backup.progress``."""

    def __init__(
        self,
        tail: TopicTail,
        *,
        queue_size: int = 256,
        heartbeat_seconds: float = 15.0,
        state_poll_seconds: float = 2.0,
        terminal_wait_seconds: float = 10.0,
        max_catchup_offsets: int = 10_000,
        kind: ProgressKind = BACKUPS,
    ) -> None:
        self.tail = tail
        self.kind = kind
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        self.state_poll_seconds = state_poll_seconds
        self.terminal_wait_seconds = terminal_wait_seconds
        self.max_catchup_offsets = max_catchup_offsets
        self.connected = asyncio.Event()
        self._subscriptions: dict[uuid.UUID, set[Subscription]] = {}
        self._watchers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._readers: dict[uuid.UUID, ReadState] = {}
        self._heartbeats: asyncio.Task[None] | None = None

    async def is_ready(self) -> bool:
        return self.connected.is_set()

    async def run(self) -> None:
        """Follow the topic for the life of the service (restarted by the runtime)."""
        await self.tail.start()
        try:
            self.connected.set()
            async for records in self.tail.batches():
                self.dispatch(records)
        finally:
            self.connected.clear()
            # Ticks may be missed until the tail is back: every stream ends, and resumes
            # by id from Kafka.
            for subscriptions in self._subscriptions.values():
                for subscription in subscriptions:
                    subscription.interrupted = True
                    subscription.wake.set()
            await self.tail.stop()

    def dispatch(self, records: list[TailRecord]) -> None:
        for record in records:
            tick = Tick.of(record, self.kind)
            if tick is None:
                continue
            for subscription in self._subscriptions.get(tick.subject, ()):
                subscription.offer(tick)

    def _subscribe(self, subscription: Subscription, read_state: ReadState) -> None:
        backup_id = subscription.backup_id
        self._subscriptions.setdefault(backup_id, set()).add(subscription)
        self._readers[backup_id] = read_state
        watcher = self._watchers.get(backup_id)
        if watcher is None or watcher.done():
            # A watcher that fired is done: a stream that came after it needs its own.
            self._watchers[backup_id] = asyncio.create_task(self._watch(backup_id))
        if self._heartbeats is None:
            self._heartbeats = asyncio.create_task(self._beat())
        OPEN_STREAMS.inc()

    def _unsubscribe(self, subscription: Subscription) -> None:
        OPEN_STREAMS.dec()
        backup_id = subscription.backup_id
        subscriptions = self._subscriptions.get(backup_id, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._subscriptions.pop(backup_id, None)
            self._readers.pop(backup_id, None)
            watcher = self._watchers.pop(backup_id, None)
            if watcher is not None:
                watcher.cancel()
        if not self._subscriptions and self._heartbeats is not None:
            self._heartbeats.cancel()
            self._heartbeats = None

    async def _beat(self) -> None:
        """One timer for every stream's heartbeat (not a timeout per wait): a stream idle
        for 3/4 of the interval, checked every 1/4, is woken to send a comment, so none
        is silent for longer than the interval."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds / 4)
            idle_since = time.monotonic() - self.heartbeat_seconds * 3 / 4
            for subscriptions in self._subscriptions.values():
                for subscription in subscriptions:
                    if subscription.last_sent <= idle_since:
                        subscription.ping_due = True
                        subscription.wake.set()

    def _ping_due_at(self, subscription: Subscription) -> float:
        """When ``subscription`` must next send a heartbeat, from when it last sent
        anything (3/4 of the interval, as ``_beat`` does, for slack in the writes)."""
        return subscription.last_sent + self.heartbeat_seconds * 3 / 4

    async def _watch(self, backup_id: uuid.UUID) -> None:
        """One reader of the read model per followed backup (not per stream): a backup
        seen terminal on two polls in a row ends its streams, tick or no tick."""
        try:
            await self._poll_until_terminal(backup_id)
        finally:
            # Gone once it returns: a stream subscribing later gets a new watcher.
            if self._watchers.get(backup_id) is asyncio.current_task():
                del self._watchers[backup_id]

    async def _poll_until_terminal(self, backup_id: uuid.UUID) -> None:
        seen_terminal = False
        while True:
            await asyncio.sleep(self.state_poll_seconds)
            read_state = self._readers.get(backup_id)
            if read_state is None:
                return
            try:
                state = await read_state()
            except Exception as exc:
                log.warning("sse_state_unreadable", backup_id=str(backup_id), error=repr(exc))
                continue
            terminal = state is not None and state["status"] in TERMINAL_STATUSES
            if terminal and seen_terminal:
                for subscription in self._subscriptions.get(backup_id, ()):
                    subscription.terminal_state = state
                    subscription.wake.set()
                return
            seen_terminal = terminal

    async def stream(
        self,
        backup_id: uuid.UUID,
        environment_id: uuid.UUID,
        read_state: ReadState,
        last_event_id: int | None,
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The events of one client's stream (see the module's docstring)."""
        partition = self.tail.partition_for(str(environment_id).encode())
        subscription = Subscription(backup_id, partition, self.queue_size)
        self._subscribe(subscription, read_state)
        events = self._events(subscription, read_state, last_event_id)
        try:
            # Closed with the stream (not when collected): a catch-up read stops at once.
            async with contextlib.aclosing(events):
                async for message in events:
                    # Whatever goes out counts for the heartbeat.
                    subscription.last_sent = time.monotonic()
                    subscription.ping_due = False
                    yield message
        finally:
            self._unsubscribe(subscription)

    async def _events(
        self, subscription: Subscription, read_state: ReadState, last_event_id: int | None
    ) -> AsyncGenerator[ServerSentEventMessage, None]:
        backup_id, partition = subscription.backup_id, subscription.partition
        live_from = await self.tail.position(partition)
        subscription.next_offset = live_from
        last_id = live_from
        missed: list[Tick] | None = None
        if last_event_id is not None:
            if live_from - last_event_id > self.max_catchup_offsets:
                log.info(
                    "sse_catch_up_too_far",
                    backup_id=str(backup_id),
                    behind=live_from - last_event_id,
                )
            else:
                reading = asyncio.ensure_future(
                    self.tail.read_range(partition, last_event_id, live_from)
                )
                try:
                    async for message in self._heartbeats_until(subscription, reading):
                        yield message
                finally:
                    reading.cancel()
                try:
                    records = reading.result()
                except Exception as exc:
                    log.warning("sse_catch_up_failed", backup_id=str(backup_id), error=repr(exc))
                else:
                    ticks = [Tick.of(r, self.kind) for r in records]
                    missed = [t for t in ticks if t and t.subject == backup_id]
        if missed is None:
            # A new stream, or a resumed one that cannot catch up: the current state first.
            state = await read_state()
            if state is None:
                return
            if state["status"] in TERMINAL_STATUSES:
                yield terminal_event(state, live_from)
                return
            yield ServerSentEventMessage(
                id=live_from, event="progress", data=_json(state_data(state, self.kind))
            )
        else:
            assert last_event_id is not None
            last_id = last_event_id
            # What this client missed, up to where live delivery starts.
            for tick in missed:
                async for message in self._deliver(subscription, tick, read_state):
                    yield message
                if tick.progress.status in TERMINAL_STATUSES:
                    return
                last_id = tick.event_id
            subscription.next_offset = max(live_from, last_event_id)
        async for message in self._live(subscription, read_state, last_id):
            yield message

    async def _heartbeats_until(
        self, subscription: Subscription, task: asyncio.Future[Any]
    ) -> AsyncIterator[ServerSentEventMessage]:
        """Heartbeats, on time, until ``task`` is done (its outcome is the caller's)."""
        while not task.done():
            delay = self._ping_due_at(subscription) - time.monotonic()
            if delay <= 0:
                yield PING
                continue
            await asyncio.wait({task}, timeout=delay)

    async def _live(
        self, subscription: Subscription, read_state: ReadState, last_id: int
    ) -> AsyncIterator[ServerSentEventMessage]:
        while True:
            if subscription.overflowed or subscription.interrupted:
                return
            if subscription.ticks:
                # Everything waiting goes out in one write: a stream that fell behind
                # catches up in fewer, larger sends.
                running: list[EncodedEvent] = []
                terminal: Tick | None = None
                while subscription.ticks and terminal is None:
                    tick = subscription.ticks.popleft()
                    if tick.event_id - 1 < subscription.next_offset:
                        continue  # delivered already (by the catch-up read)
                    subscription.next_offset = tick.event_id
                    if tick.progress.status in TERMINAL_STATUSES:
                        terminal = tick
                    else:
                        running.append(tick.as_event())
                        last_id = tick.event_id
                if running:
                    yield running[0] if len(running) == 1 else EncodedEvents(running)
                if terminal is not None:
                    async for message in self._deliver(subscription, terminal, read_state):
                        yield message
                    return
                continue
            if subscription.terminal_state is not None:
                yield terminal_event(subscription.terminal_state, last_id + 1)
                return
            if subscription.ping_due:
                yield PING
                continue
            subscription.wake.clear()
            await subscription.wake.wait()

    async def _deliver(
        self, subscription: Subscription, tick: Tick, read_state: ReadState
    ) -> AsyncIterator[ServerSentEventMessage]:
        """A running tick as a ``progress`` event; a terminal one as the terminal event,
        once the read model shows it (heartbeats while waiting); nothing when it does
        not in time: the stream then ends and the client resumes from before it."""
        if tick.progress.status not in TERMINAL_STATUSES:
            yield tick.as_event()
            return
        deadline = time.monotonic() + self.terminal_wait_seconds
        while True:
            with contextlib.suppress(Exception):
                state = await read_state()
                if state is not None and state["status"] in TERMINAL_STATUSES:
                    yield terminal_event(state, tick.event_id)
                    return
            now = time.monotonic()
            if now >= deadline:
                log.info("sse_terminal_not_projected", subject=str(tick.subject))
                yield ServerSentEventMessage(comment="final state not projected yet", data=None)
                return
            ping_at = self._ping_due_at(subscription)
            if now >= ping_at:
                yield PING  # the stream times the next one from now
                continue
            await asyncio.sleep(min(TERMINAL_POLL_SECONDS, ping_at - now, deadline - now))


class RestoreProgressHub(ProgressHub):
    """The hub of ``restore.progress``: restores' streams (``/backups/{id}/restore/progress``)."""

    def __init__(self, tail: TopicTail, **options: Any) -> None:
        super().__init__(tail, kind=RESTORES, **options)


def progress_tail(
    bootstrap_servers: str, client_id: str, topic: str = BACKUP_PROGRESS.name
) -> TopicTail:
    return TopicTail(bootstrap_servers, topic, client_id=client_id)
