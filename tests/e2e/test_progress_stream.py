"""GET /backups/{id}/progress end to end: real HTTP streams from two gateways on real Kafka
and PostgreSQL, a real backup held running by a lock, and backups whose events and ticks
the test publishes itself (as the runner's relay and publisher would) to control them."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from tidemark_contracts import BACKUP_EVENTS, BACKUP_PROGRESS, Envelope, Message, utc_now
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupProgress,
    BackupRequested,
    BackupStarted,
    DestinationRef,
)
from tidemark_contracts.envelope import event_message_id
from tidemark_devstack.e2e import Api, make_token
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration

GATEWAY = "api-gateway"
# The second gateway's stream settings: short, so the tests see heartbeats, a slow
# client's overflow and a watcher's poll in seconds; a catch-up bound above the ~300
# ticks a slow client misses, below what the far-behind test publishes.
SECOND_GATEWAY_ENV = {
    "TIDEMARK_API_GATEWAY_SSE_HEARTBEAT_SECONDS": "0.5",
    "TIDEMARK_API_GATEWAY_SSE_CLIENT_QUEUE": "16",
    "TIDEMARK_API_GATEWAY_SSE_STATE_POLL_SECONDS": "0.5",
    "TIDEMARK_API_GATEWAY_SSE_MAX_CATCHUP_OFFSETS": "400",
}


@pytest.fixture(scope="module")
def gateways(stack: Stack) -> Iterator[list[str]]:
    """The session's gateway and a second one (short stream settings) for this module."""
    saved = dict(stack.extra_env)
    stack.extra_env.update(SECOND_GATEWAY_ENV)
    try:
        stack.start(only=GATEWAY, instance=1)
    finally:
        stack.extra_env.clear()
        stack.extra_env.update(saved)
    stack.wait_ready(timeout=120)
    yield [stack.gateway_url, stack.service(GATEWAY, 1).url]
    stack.stop(only=GATEWAY, instance=1)
    stack.services.pop((GATEWAY, 1), None)


@dataclass
class Event:
    id: int | None
    event: str | None
    data: Any
    comment: str | None
    at: float


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """The events of a text/event-stream response, comments included, as they arrive."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                yield Event(
                    int(fields["id"]) if "id" in fields else None,
                    fields.get("event"),
                    json.loads(fields["data"]) if fields.get("data") else None,
                    None,
                    time.monotonic(),
                )
            fields = {}
        elif line.startswith(":"):
            yield Event(None, None, None, line[1:].strip(), time.monotonic())
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def progress_url(base: str, backup_id: str) -> str:
    return f"{base}/api/v1/backups/{backup_id}/progress"


def auth(org_id: uuid.UUID, last_event_id: int | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {make_token(org_id)}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


def read_stream(
    url: str, headers: dict[str, str], *, until: Callable[[list[Event]], bool] | None = None
) -> list[Event]:
    """Events (not comments) of one connection, to the stream's end or until ``until``."""
    got: list[Event] = []
    with (
        httpx.Client(timeout=httpx.Timeout(60.0)) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(response):
            if event.comment is None:
                got.append(event)
            if until is not None and until(got):
                break
    return got


class Reader(threading.Thread):
    """A client reading one whole stream in the background."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.events: list[Event] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(60.0)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                assert response.status_code == 200
                for event in sse_events(response):
                    if event.comment is None:
                        self.events.append(event)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 90.0) -> list[Event]:
        self.join(timeout)
        assert not self.is_alive(), f"stream still open after {timeout}s: {self.events[-3:]}"
        assert self.error is None, repr(self.error)
        return self.events


def ticks(events: list[Event]) -> list[Event]:
    """The live progress events (after the first event, the current state)."""
    return [e for e in events[1:] if e.event == "progress"]


def has_tick_or_ended(reader: Reader, tick_id: int) -> Callable[[], bool]:
    """True once the reader's last tick is ``tick_id``, or its stream has ended."""
    return lambda: [e.id for e in ticks(reader.events)][-1:] == [tick_id] or not reader.is_alive()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_stream_resumed_on_the_other_gateway_has_no_repeat_and_no_gap(
    gateways: list[str], api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    api.destination()
    # pg_dump waits for this lock: the backup runs (and ticks) until the test lets go.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        backup_id = api.request_backup(environment["id"]).json()["id"]
        assert api.wait_for(backup_id, ("running",))["status"] == "running"
        uninterrupted = Reader(progress_url(gateways[0], backup_id), auth(api.org_id))
        uninterrupted.start()
        wait_until(lambda: len(uninterrupted.events) >= 2, "the first reader's first tick")

        first = read_stream(
            progress_url(gateways[0], backup_id),
            auth(api.org_id),
            until=lambda got: len(ticks(got)) >= 3,
        )
        dropped_at = time.monotonic()
        time.sleep(1.5)  # ticks go on (every 0.2 s) while this client is away
        last_id = first[-1].id
        assert last_id is not None
        second = read_stream(
            progress_url(gateways[1], backup_id),
            auth(api.org_id, last_id),
            until=lambda got: len(got) >= 10,
        )
        resumed_at = time.monotonic()
        assert second[0].event == "progress"
        assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "running"
    finally:
        blocker.close()
    rest = read_stream(progress_url(gateways[1], backup_id), auth(api.org_id, second[-1].id))
    everything = uninterrupted.result()
    final = api.get(f"/api/v1/backups/{backup_id}").json()

    # The whole stream: the state, live ticks of a running backup, the final resource.
    assert everything[0].event == "progress"
    assert everything[0].data["status"] == "running"
    running = [e for e in ticks(everything) if e.data["status"] == "running"]
    assert len(running) >= 5
    assert all(e.data["backupId"] == backup_id for e in running)
    assert everything[-1].event == "completed"
    assert everything[-1].data == final
    assert final["status"] == "completed"
    ids = [e.id for e in everything]
    assert ids == sorted(set(ids)), "ids increase within a stream"

    # Interrupted and resumed elsewhere: exactly the uninterrupted reader's events.
    resumed = [*first, *second, *rest]
    resumed_ids = [e.id for e in resumed]
    assert resumed_ids == sorted(set(resumed_ids)), "an event came twice"
    after_start = [(e.id, e.event, e.data) for e in everything if e.id > resumed[0].id]
    assert [(e.id, e.event, e.data) for e in resumed[1:]] == after_start, "an event is missing"
    # And the gap was real: ticks were published while that client was away.
    assert [e for e in everything if dropped_at < e.at < resumed_at and e.id > last_id]


def test_a_finished_backup_gets_its_terminal_event_at_once(
    gateways: list[str], api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    api.destination()
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "completed"
    for gateway in gateways:
        started = time.monotonic()
        events = read_stream(progress_url(gateway, backup["id"]), auth(api.org_id))
        assert time.monotonic() - started < 5
        assert [(e.event, e.data) for e in events] == [("completed", backup)]
        assert events[0].id is not None


def test_unknown_and_foreign_backups_are_404_before_any_stream(
    gateways: list[str], api_for: Callable[..., Api], source_database: str
) -> None:
    owner, stranger = api_for(), api_for()
    environment = owner.environment(source_database)
    owner.destination()
    backup_id = owner.request_backup(environment["id"]).json()["id"]
    for gateway in gateways:
        for org, target in ((stranger.org_id, backup_id), (owner.org_id, str(uuid.uuid4()))):
            answer = httpx.get(progress_url(gateway, target), headers=auth(org), timeout=10)
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert backup_id not in answer.text
    # An id this API never sent starts a new stream: the current state comes first.
    [first] = read_stream(
        progress_url(gateways[0], backup_id),
        {**auth(owner.org_id), "Last-Event-ID": "not-an-id"},
        until=lambda got: len(got) >= 1,
    )
    assert first.data["id" if first.event != "progress" else "backupId"] == backup_id
    owner.wait_for(backup_id)


# Backups driven by the test: their events and ticks published as the runner would.


class Phantom:
    """A backup the read model knows (events on backup.events) that no runner runs."""

    def __init__(self, bootstrap: str, org_id: uuid.UUID) -> None:
        self.bootstrap = bootstrap
        self.org_id = org_id
        self.id = uuid.uuid4()
        self.environment_id = uuid.uuid4()
        self.version = 0

    def event(self, message: Message) -> Envelope:
        self.version += 1
        return Envelope.wrap(
            message,
            producer="backup-runner",
            organization_id=self.org_id,
            environment_id=self.environment_id,
            aggregate_id=self.id,
            aggregate_version=self.version,
            message_id=event_message_id(self.id, self.version),
        )

    def tick(self, status: str = "running", message: str | None = None) -> Envelope:
        progress = BackupProgress(
            backup_id=self.id,
            environment_id=self.environment_id,
            status=status,  # type: ignore[arg-type]
            phase="dumping" if status == "running" else status,
            bytes_done=1,
            message=message,
            at=utc_now(),
        )
        return Envelope.wrap(
            progress,
            producer="backup-runner",
            organization_id=self.org_id,
            environment_id=self.environment_id,
        )

    def start(self) -> None:
        now = utc_now()
        requested = BackupRequested(
            backup_id=self.id,
            organization_id=self.org_id,
            project_id=uuid.uuid4(),
            environment_id=self.environment_id,
            type="db",
            trigger="manual",
            requested_by="e2e",
            requested_at=now,
            destinations=[DestinationRef(destination_id=uuid.uuid4(), name="d", type="local")],
        )
        started = BackupStarted(
            backup_id=self.id, environment_id=self.environment_id, started_at=now
        )
        self.publish(BACKUP_EVENTS.name, [self.event(requested), self.event(started)])

    def complete(self) -> None:
        completed = BackupCompleted(
            backup_id=self.id,
            environment_id=self.environment_id,
            size_bytes=10,
            checksum="sha256:" + "a" * 64,
            compression="zstd",
            completed_at=utc_now(),
            duration_ms=5,
        )
        self.publish(BACKUP_EVENTS.name, [self.event(completed)])

    def publish(self, topic: str, envelopes: list[Envelope]) -> list[int]:
        async def send() -> list[int]:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
            )
            await producer.start()
            try:
                offsets = []
                for envelope in envelopes:
                    sent = await producer.send_and_wait(
                        topic, envelope.to_bytes(), key=envelope.key
                    )
                    offsets.append(sent.offset)
                return offsets
            finally:
                await producer.stop()

        return asyncio.run(send())


@pytest.fixture
def phantoms(database_url: str) -> Iterator[list[Phantom]]:
    """Phantom backups of a test, removed from the read model afterwards: no event store
    holds them, so a rebuild of the read model (test_rolling_restart) would not."""
    made: list[Phantom] = []
    yield made
    key = ("organization_id", "project_id", "environment_id", "status", "type")
    match = " AND ".join(f"{column} = %s" for column in key)
    with psycopg.connect(database_url) as conn, conn.transaction():
        # The rows go, and the counts the projection kept for them with them.
        gone = conn.execute(
            f"DELETE FROM gateway.backups WHERE id = ANY(%s) RETURNING {', '.join(key)}",
            ([p.id for p in made],),
        ).fetchall()
        for values, k in collections.Counter(gone).items():
            removed = conn.execute(
                f"DELETE FROM gateway.backup_counts WHERE {match} AND n <= %s", [*values, k]
            )
            if removed.rowcount == 0:
                conn.execute(
                    f"UPDATE gateway.backup_counts SET n = n - %s WHERE {match}", [k, *values]
                )


def test_an_idle_stream_heartbeats_and_a_lost_terminal_tick_still_ends_it(
    gateways: list[str], api: Api, kafka_bootstrap: str, phantoms: list[Phantom]
) -> None:
    phantom = Phantom(kafka_bootstrap, api.org_id)
    phantoms.append(phantom)
    phantom.start()
    assert api.wait_for(str(phantom.id), ("running",), missing_ok=True)["status"] == "running"
    comments: list[Event] = []
    events: list[Event] = []
    completed_after: list[float] = []
    with (
        httpx.Client(timeout=httpx.Timeout(30.0)) as client,
        client.stream(
            "GET", progress_url(gateways[1], str(phantom.id)), headers=auth(api.org_id)
        ) as response,
    ):
        for event in sse_events(response):
            (comments if event.comment is not None else events).append(event)
            if len(comments) == 3 and not completed_after:
                # No tick at all, only the domain event: as if the terminal tick was lost.
                phantom.complete()
                completed_after.append(time.monotonic())
    # The second gateway beats every 0.5 s while nothing else is sent.
    assert [c.comment for c in comments[:3]] == ["ping"] * 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(comments)][:2]
    assert all(0.3 < gap < 3.0 for gap in gaps), gaps
    final = api.get(f"/api/v1/backups/{phantom.id}").json()
    assert final["status"] == "completed"
    assert [e.event for e in events] == ["progress", "completed"]
    assert events[-1].data == final
    assert events[-1].id is not None
    assert events[0].id is not None
    assert events[-1].id > events[0].id


def test_a_client_far_behind_gets_the_current_state_at_once_not_every_missed_tick(
    gateways: list[str], api: Api, kafka_bootstrap: str, phantoms: list[Phantom]
) -> None:
    phantom = Phantom(kafka_bootstrap, api.org_id)
    phantoms.append(phantom)
    phantom.start()
    assert api.wait_for(str(phantom.id), ("running",), missing_ok=True)["status"] == "running"
    offsets = phantom.publish(BACKUP_PROGRESS.name, [phantom.tick() for _ in range(420)])
    time.sleep(1.5)  # the gateway's tail is past them (it polls every 0.5 s)
    for last_event_id in (0, offsets[0] + 1):
        # More than the second gateway's 400 offsets behind: no catch-up read.
        started = time.monotonic()
        events = read_stream(
            progress_url(gateways[1], str(phantom.id)),
            auth(api.org_id, last_event_id),
            until=lambda got: len(got) >= 1,
        )
        assert time.monotonic() - started < 5
        [state] = events
        assert state.event == "progress"
        # The current state (from the read model: its phase is its status), not a tick.
        assert state.data["phase"] == "running"
        assert state.data["backupId"] == str(phantom.id)
        assert state.id is not None
        assert state.id > offsets[-1] >= last_event_id
    # Within the bound the same gateway still replays exactly what was missed.
    near = read_stream(
        progress_url(gateways[1], str(phantom.id)),
        auth(api.org_id, offsets[-3] + 1),
        until=lambda got: len(got) >= 2,
    )
    assert [(e.event, e.id, e.data["phase"]) for e in near] == [
        ("progress", offsets[-2] + 1, "dumping"),
        ("progress", offsets[-1] + 1, "dumping"),
    ]


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_client_that_stops_reading_never_holds_back_another_and_resumes_by_id(
    gateways: list[str], api: Api, kafka_bootstrap: str, phantoms: list[Phantom]
) -> None:
    phantom = Phantom(kafka_bootstrap, api.org_id)
    phantoms.append(phantom)
    phantom.start()
    api.wait_for(str(phantom.id), ("running",), missing_ok=True)
    url = progress_url(gateways[1], str(phantom.id))
    overflowed_before = metric(gateways[1], "tidemark_sse_overflowed_streams_total")

    # A client that sends its request and then reads nothing.
    host, port = gateways[1].removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    token = make_token(api.org_id)
    slow.sendall(
        f"GET /api/v1/backups/{phantom.id}/progress HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    reader = Reader(url, auth(api.org_id))
    reader.start()
    wait_until(lambda: len(reader.events) >= 1, "the reader's first event")
    time.sleep(0.5)  # the slow client's stream is open too

    # ~10 MB of ticks: far more than the socket buffers and the 16-tick queue hold. They go
    # out in batches of 10, each once the reading client has the one before: the reader is
    # never more than 10 ticks behind, so on a loaded machine it cannot overflow itself,
    # while the slow client, reading nothing, falls ever further behind.
    wanted: list[int] = []
    for _ in range(30):
        offsets = phantom.publish(
            BACKUP_PROGRESS.name, [phantom.tick(message="x" * 32_000) for _ in range(10)]
        )
        wanted += [o + 1 for o in offsets]
        wait_until(
            has_tick_or_ended(reader, wanted[-1]),
            f"tick {len(wanted)} at the reading client",
            timeout=60,
        )
        assert reader.is_alive(), f"the reading client's stream ended: {reader.error!r}"
    assert [e.id for e in ticks(reader.events)] == wanted
    assert metric(gateways[1], "tidemark_sse_overflowed_streams_total") > overflowed_before

    # The slow client, reading at last, gets a clean prefix and then the end of its stream.
    slow.settimeout(30)
    raw = b""
    while chunk := slow.recv(1 << 20):
        raw += chunk
    slow.close()
    received = [
        int(line.split(b":", 1)[1]) for line in raw.split(b"\r\n") if line.startswith(b"id:")
    ]
    assert received[1:] == wanted[: len(received) - 1]
    assert len(received) - 1 < len(wanted)
    assert b"event: completed" not in raw

    # It resumes by id and gets the rest, then the final resource.
    rest = Reader(progress_url(gateways[1], str(phantom.id)), auth(api.org_id, received[-1]))
    rest.start()
    wait_until(lambda: [e.id for e in rest.events][-1:] == wanted[-1:], "the rest after resuming")
    phantom.publish(BACKUP_PROGRESS.name, [phantom.tick("completed")])
    phantom.complete()
    resumed = rest.result()
    assert [e.id for e in resumed[:-1]] == wanted[len(received) - 1 :]
    assert resumed[-1].event == "completed"
    assert reader.result()[-1].event == "completed"
