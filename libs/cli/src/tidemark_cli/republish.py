"""`tidemark events republish`: stored domain events sent to their Kafka topic once more.

For a new subscriber (a new consumer group, a new service) that needs history older than
the topic's retention. Every event store that publishes to the topic is read from a time
or from a store's position, each stored event is mapped through its store's own
``to_envelope`` (what the store's relay publishes), and the ones whose topic is the one
asked for are published again with the same key, value and headers. Their ``messageId`` is
derived from the aggregate id and version, and their envelope carries both, so every
existing consumer recognises an event it has already handled (version guards, source
message ids) and nothing happens twice.

Several stores (``alert.events`` has two) are merged by the event time; each store's own
events keep their store order, which is the order its relay published them in. Reading is
a stream (batches of the notification log), publishing is pipelined through an idempotent
producer (``acks=all``) a window at a time: memory stays flat however long the history.

Only domain-event topics are re-published: a command sent again is an order given again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from tidemark_contracts import Topic
from tidemark_contracts.topics import (
    ALERT_EVENTS,
    BACKUP_EVENTS,
    CATALOG_EVENTS,
    RESTORE_EVENTS,
    SCHEDULE_EVENTS,
)

from tidemark_cli import config, output
from tidemark_cli.errors import CliError
from tidemark_cli.sources import SOURCES, EventSource

PUBLISHES: dict[str, tuple[Topic, ...]] = {
    "gateway_catalog": (CATALOG_EVENTS,),
    "scheduler_store": (SCHEDULE_EVENTS,),  # its backup.commands are commands: never again
    "backup_runner": (BACKUP_EVENTS,),
    "restore_runner": (RESTORE_EVENTS,),
    "alerts": (ALERT_EVENTS,),
    "alert_webhooks": (ALERT_EVENTS,),
}
"""The event topics each store's relay publishes to (a store's ``to_envelope`` decides per
event; this is what may be asked for)."""

TOPICS: dict[str, Topic] = {t.name: t for topics in PUBLISHES.values() for t in topics}

READ_BATCH = 500
"""Notifications read from a store at a time."""

SEND_WINDOW = 500
"""Records handed to the producer before their answers are awaited."""

_POSITION = re.compile(r"^(?P<store>[A-Za-z_][A-Za-z0-9_]*):(?P<position>[0-9]+)$")
_LOOKS_LIKE_POSITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:")


# -- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FromTime:
    """Every event whose time is at or after ``at``."""

    at: datetime


@dataclass(frozen=True)
class FromPosition:
    """One store's events from ``position`` (its notification id) on."""

    store: str
    position: int


Start = FromTime | FromPosition


def parse_time(text: str, option: str) -> datetime:
    """A UTC time from ``2026-11-30``, ``2026-11-30T10:00:00Z`` or an ISO-8601 time with an
    offset (converted to UTC); a time without a zone is UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        # The value is not repeated: whatever was typed stays out of logs and terminals.
        raise CliError(
            f"{option}: not a UTC date or time (2026-11-30, 2026-11-30T10:00:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def topic_named(name: str) -> Topic:
    topic = TOPICS.get(name)
    if topic is None:
        raise CliError(f"--topic: not an event topic of Tidemark; one of: {', '.join(TOPICS)}")
    return topic


def stores_of(topic: Topic) -> list[EventSource]:
    """The stores whose relays publish to ``topic``, in the order of ``SOURCES``."""
    return [s for s in SOURCES if topic in PUBLISHES.get(s.store, ())]


def parse_from(text: str, topic: Topic) -> Start:
    """``--from``: a time, or ``STORE:POSITION`` of a store that publishes to ``topic``."""
    value = text.strip()
    if not _LOOKS_LIKE_POSITION.match(value):
        return FromTime(parse_time(value, "--from"))
    matched = _POSITION.match(value)
    publishing = [s.store for s in stores_of(topic)]
    if matched is None:
        raise CliError("--from: a position is STORE:POSITION, e.g. backup_runner:1234")
    store, position = matched["store"], int(matched["position"])
    if store not in PUBLISHES:
        raise CliError(f"--from: not an event store of Tidemark; one of: {', '.join(PUBLISHES)}")
    if store not in publishing:
        raise CliError(
            f"--from: the store {store} does not publish to {topic.name} "
            f"(its stores: {', '.join(publishing)})"
        )
    if position < 1:
        raise CliError("--from: positions start at 1")
    return FromPosition(store, position)


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One stored event as its relay publishes it."""

    at: datetime
    store_index: int
    store: str
    position: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    message_id: str


def read_store(
    app: Any,
    store: str,
    store_index: int,
    topic: Topic,
    *,
    start: int = 1,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = READ_BATCH,
) -> Iterator[Outgoing]:
    """The store's events for ``topic`` from position ``start``, within [since, until), in
    store order, read ``batch`` notifications at a time."""
    while True:
        notifications = app.recorder.select_notifications(start=start, limit=batch)
        if not notifications:
            return
        for notification in notifications:
            event = app.mapper.to_domain_event(notification)
            at: datetime = event.timestamp
            if (since is not None and at < since) or (until is not None and at >= until):
                continue
            mapped = app.to_envelope(event)
            if mapped is None or mapped[0].name != topic.name:
                continue
            envelope = mapped[1]
            yield Outgoing(
                at=at,
                store_index=store_index,
                store=store,
                position=notification.id,
                key=envelope.key,
                value=envelope.to_bytes(),
                # As the relay sends it (tidemark_platform.notification_log).
                headers=(("message-type", envelope.message_type.encode()),),
                message_id=str(envelope.message_id),
            )
        start = notifications[-1].id + 1


def merged(streams: Iterable[Iterator[Outgoing]]) -> Iterator[Outgoing]:
    """The stores' streams merged by event time (then store, then position); each store's
    own order is kept."""
    return heapq.merge(*streams, key=lambda o: (o.at, o.store_index, o.position))


def last_position(app: Any) -> int:
    return int(app.recorder.max_notification_id() or 0)


# -- publishing ------------------------------------------------------------------------


@dataclass
class StoreCount:
    count: int = 0
    first_position: int | None = None
    last_position: int | None = None

    def add(self, position: int) -> None:
        self.count += 1
        if self.first_position is None:
            self.first_position = position
        self.last_position = position


@dataclass
class Outcome:
    topic: str
    dry_run: bool
    stores: dict[str, StoreCount] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(c.count for c in self.stores.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dryRun": self.dry_run,
            "published": 0 if self.dry_run else self.total,
            "wouldPublish": self.total if self.dry_run else None,
            "stores": {
                store: {
                    "count": c.count,
                    "firstPosition": c.first_position,
                    "lastPosition": c.last_position,
                }
                for store, c in self.stores.items()
            },
        }


async def _topic_exists(bootstrap: str, name: str) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="tidemark-republish", request_timeout_ms=15_000
    )
    await admin.start()
    try:
        # Every topic, not this one by name: naming a missing topic auto-creates it.
        return any(t["topic"] == name for t in await admin.describe_topics())
    finally:
        await admin.close()


async def publish_all(
    bootstrap: str, topic: str, events: Iterable[Outgoing], outcome: Outcome
) -> None:
    """Publish ``events`` to ``topic`` in order, idempotently, ``acks=all``; count each one
    Kafka confirmed."""
    if not await _topic_exists(bootstrap, topic):
        raise CliError(f"Kafka has no topic {topic}: start Tidemark's services once to create it")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id="tidemark-republish",
        request_timeout_ms=15_000,
    )
    await producer.start()
    try:
        window: list[tuple[Outgoing, asyncio.Future[Any]]] = []
        for event in events:
            answer = await producer.send(
                topic, event.value, key=event.key, headers=list(event.headers)
            )
            window.append((event, answer))
            if len(window) >= SEND_WINDOW:
                await _settle(window, outcome)
        await _settle(window, outcome)
    finally:
        await producer.stop()


async def _settle(window: list[tuple[Outgoing, asyncio.Future[Any]]], outcome: Outcome) -> None:
    """Wait for the window's answers in order; count what Kafka confirmed."""
    try:
        for event, answer in window:
            await answer
            outcome.stores[event.store].add(event.position)
    finally:
        for _, answer in window:
            if not answer.done():
                answer.add_done_callback(lambda done: done.cancelled() or done.exception())
        window.clear()


def quiet_kafka_logs() -> None:
    """aiokafka logs its connection errors besides raising them, and with no handler
    configured Python prints those on stderr: the CLI's one-line error says it once."""
    kafka_log = logging.getLogger("aiokafka")
    kafka_log.addHandler(logging.NullHandler())
    kafka_log.propagate = False


def run(
    database_url: str,
    kafka_bootstrap: str | None,
    topic: Topic,
    start: Start,
    until: datetime | None,
    *,
    dry_run: bool,
) -> Outcome:
    """Read the stores that publish to ``topic`` and publish (or, dry, count) their events."""
    sources = stores_of(topic)
    if isinstance(start, FromPosition):
        sources = [s for s in sources if s.store == start.store]
    outcome = Outcome(topic.name, dry_run, {s.store: StoreCount() for s in sources})
    apps: list[Any] = []
    try:
        streams: list[Iterator[Outgoing]] = []
        for source in sources:
            app = source.open(database_url)
            apps.append(app)
            index = next(i for i, s in enumerate(SOURCES) if s.store == source.store)
            if isinstance(start, FromPosition):
                last = last_position(app)
                if start.position > last:
                    raise CliError(
                        f"--from: {source.store} has no event at position {start.position} "
                        f"(its last is {last})"
                    )
                streams.append(
                    read_store(app, source.store, index, topic, start=start.position, until=until)
                )
            else:
                streams.append(
                    read_store(app, source.store, index, topic, since=start.at, until=until)
                )
        events = merged(streams)
        if dry_run:
            for event in events:
                outcome.stores[event.store].add(event.position)
        else:
            assert kafka_bootstrap is not None
            asyncio.run(publish_all(kafka_bootstrap, topic.name, events, outcome))
    finally:
        for app in apps:
            app.close()
    return outcome


def republish(
    topic: Annotated[
        str,
        typer.Option("--topic", help=f"the event topic: {', '.join(TOPICS)}", show_default=False),
    ],
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="a UTC date or time (2026-11-30, 2026-11-30T10:00:00Z): events at or after "
            "it; or STORE:POSITION (backup_runner:1234): that store's events from that "
            "position on",
            show_default=False,
        ),
    ],
    until: Annotated[
        str | None,
        typer.Option(help="a UTC date or time: only events before it", show_default=False),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would be published; publish nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Re-publish stored events to their Kafka topic, for a new subscriber.

    Consumers recognise each one (same key, envelope, messageId): no second effect.
    """
    chosen = topic_named(topic)
    start = parse_from(from_, chosen)
    end = parse_time(until, "--until") if until is not None else None
    if end is not None and isinstance(start, FromTime) and end <= start.at:
        raise CliError("--until must be after --from")
    target = config.discover()
    database_url = target.need_database()
    kafka = None if dry_run else target.need_kafka()
    quiet_kafka_logs()
    outcome = run(database_url, kafka, chosen, start, end, dry_run=dry_run)
    if as_json:
        output.print_json(outcome.as_json())
        return
    verb = "would publish" if dry_run else "published"
    output.print_table(
        ("store", "events", "first position", "last position"),
        (
            (store, c.count, c.first_position, c.last_position)
            for store, c in outcome.stores.items()
        ),
        title=f"{chosen.name}: {verb} {outcome.total} event(s)",
    )
