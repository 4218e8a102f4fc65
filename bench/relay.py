"""How fast do Tidemark's relay and projection move messages, against plain aiokafka?

Two figures, each a ratio of rates measured in the same run on the same Kafka and
PostgreSQL:

``relay``
    ``--count`` RequestBackup envelopes sit in the gateway's outbox (rows as ``enqueue``
    writes them). The real relay (``tidemark_platform.relay.Relay`` over
    ``tidemark_api_gateway.outbox.OutboxSource``, publishing through the service
    runtime's broker exactly as the gateway wires it) moves them to Kafka. Baseline: a
    plain aiokafka producer (``acks="all"``, idempotent) sending the same records.
    Ratio = relay rate / producer rate; target >= 0.5.

``projection``
    ``--count`` backup events (BackupRequested, BackupStarted, BackupCompleted per
    backup, keyed by environment) on a topic. The gateway's backups view (a platform
    ``ProjectionRunner`` over ``BackupsView``) applies them into PostgreSQL, fed by a
    plain consumer. Baseline: the same plain consumer reading the same records and
    decoding nothing. Ratio = apply rate / read rate; reported against ``--projection-target``.

One summary line per figure (``relay: <name> ratio=… target>=… PASS|FAIL``), then detail
lines. Missing a target does not fail the process; errors do (exit 1; 130 on Ctrl-C).
See bench/README.md.

Run: ``uv run python bench/relay.py --count 100000``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eventsourcing.persistence import Tracking
from harness import BenchError, note, terminate
from tidemark_api_gateway.outbox import OutboxSource
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA, Pool, migrate
from tidemark_contracts import BACKUP_COMMANDS, Envelope, Message, event_message_id, utc_now
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupRequested,
    BackupStarted,
    DatabaseTarget,
    DestinationRef,
    DestinationTarget,
    RequestBackup,
)
from tidemark_devstack.kafka import LocalKafka
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import LocalPostgres, create_database_at, drop_database_at
from tidemark_platform.database import connection_pool
from tidemark_platform.kafka import make_broker
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings

PREFIX = "relay:"
RELAY_TARGET = 0.5
DEFAULT_COUNT = 100_000
ENVIRONMENTS = 64  # distinct keys, spread over the topic's partitions like real traffic
PARTITIONS = BACKUP_COMMANDS.partitions
SEND_WINDOW = 10_000  # baseline producer: records in flight before it waits for acks
READ_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    headers: dict[str, str]


# --- the records ------------------------------------------------------------------------


def _environments() -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """(organization, project, environment) triples the records are spread over."""
    return [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(ENVIRONMENTS)]


def command_records(count: int) -> list[Record]:
    """``count`` RequestBackup envelopes as the gateway enqueues them."""
    scopes = _environments()
    destination = DestinationTarget.model_validate(
        {
            "destinationId": str(uuid.uuid4()),
            "name": "bench",
            "type": "local",
            "config": {"kind": "local", "path": "backups"},
        }
    )
    records = []
    for i in range(count):
        org, project, env = scopes[i % len(scopes)]
        command = RequestBackup(
            backup_id=uuid.uuid4(),
            organization_id=org,
            project_id=project,
            environment_id=env,
            type="db",
            trigger="manual",
            requested_by="bench",
            requested_at=utc_now(),
            database=DatabaseTarget(host="db.internal", port=5432, dbname="shop", user="shop"),
            destinations=[destination],
        )
        envelope = Envelope.wrap(
            command,
            producer="api-gateway",
            organization_id=org,
            environment_id=env,
            correlation_id=uuid.uuid4(),
        )
        records.append(
            Record(envelope.key, envelope.to_bytes(), {"message-type": envelope.message_type})
        )
    return records


def event_records(count: int) -> list[Record]:
    """``count`` domain events, Requested/Started/Completed per backup, as the runner relays
    them (stable message ids, aggregate versions)."""
    scopes = _environments()
    destination = DestinationRef(destination_id=uuid.uuid4(), name="bench", type="local")
    records: list[Record] = []
    i = 0
    while len(records) < count:
        org, project, env = scopes[i % len(scopes)]
        i += 1
        backup_id, now = uuid.uuid4(), utc_now()
        messages: list[Message] = [
            BackupRequested(
                backup_id=backup_id,
                organization_id=org,
                project_id=project,
                environment_id=env,
                type="db",
                trigger="manual",
                requested_by="bench",
                requested_at=now,
                destinations=[destination],
            ),
            BackupStarted(backup_id=backup_id, environment_id=env, started_at=now),
            BackupCompleted(
                backup_id=backup_id,
                environment_id=env,
                size_bytes=123_456,
                checksum="sha256:" + "0" * 64,
                compression="zstd",
                completed_at=now + timedelta(seconds=3),
                duration_ms=3000,
            ),
        ]
        for version, message in enumerate(messages, start=1):
            envelope = Envelope.wrap(
                message,
                producer="backup-runner",
                organization_id=org,
                environment_id=env,
                message_id=event_message_id(backup_id, version),
                aggregate_id=backup_id,
                aggregate_version=version,
                causation_id=backup_id,
            )
            records.append(
                Record(envelope.key, envelope.to_bytes(), {"message-type": envelope.message_type})
            )
    return records[:count]


# --- Kafka helpers ----------------------------------------------------------------------


def _headers(record: Record) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in record.headers.items()]


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=n, num_partitions=PARTITIONS, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def plain_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=30_000,
    )


async def produce(bootstrap: str, topic: str, records: list[Record]) -> float:
    """Send ``records`` with a plain idempotent producer; seconds until all are acked."""
    producer = plain_producer(bootstrap)
    await producer.start()
    try:
        started = time.perf_counter()
        for first in range(0, len(records), SEND_WINDOW):
            window = [
                await producer.send(topic, r.value, key=r.key, headers=_headers(r))
                for r in records[first : first + SEND_WINDOW]
            ]
            await asyncio.gather(*window)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        await consumer.stop()


Apply = Callable[[str, int, int, bytes], Awaitable[None]]


async def consume(bootstrap: str, topic: str, count: int, apply: Apply | None) -> float:
    """Read ``count`` records of ``topic`` from the beginning with a plain consumer,
    handing each to ``apply(topic, partition, offset, value)`` when given; seconds taken."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_bytes=64 * 2**20,
        max_partition_fetch_bytes=16 * 2**20,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if apply is not None:
                        await apply(tp.topic, tp.partition, record.offset, record.value)
                    seen += 1
            if time.perf_counter() - started > READ_TIMEOUT_S:
                raise BenchError(f"read {seen} of {count} records of {topic} in time")
        return time.perf_counter() - started
    finally:
        await consumer.stop()


# --- the outbox and the relay -----------------------------------------------------------


def open_pool(database_url: str) -> Pool:
    return connection_pool(database_url)  # as the gateway opens it (main.create_app)


async def fill_outbox(pool: Pool, topic: str, records: list[Record]) -> None:
    """The rows ``outbox.enqueue`` writes, loaded with COPY (filling is not measured)."""
    async with pool.connection() as conn:
        await conn.execute(f"TRUNCATE {SCHEMA}.outbox")
        cursor = conn.cursor()
        async with cursor.copy(
            f"COPY {SCHEMA}.outbox (topic, key, value, headers) FROM STDIN"
        ) as copy:
            for record in records:
                await copy.write_row((topic, record.key, record.value, json.dumps(record.headers)))
        await conn.execute(f"ANALYZE {SCHEMA}.outbox")


async def outbox_size(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT count(*) AS n FROM {SCHEMA}.outbox")
        row = await cursor.fetchone()
    assert row is not None
    return int(row["n"])


async def run_relay(pool: Pool, database_url: str, bootstrap: str, count: int) -> float:
    """Relay the outbox to Kafka with the gateway's wiring; seconds until it is empty."""
    settings = ServiceSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap)
    broker = make_broker(bootstrap, "bench-relay")
    runtime = ServiceRuntime("bench-relay", settings, broker)
    source = OutboxSource(pool, database_url)
    relay = runtime.add_relay(source)
    await broker.start()
    try:
        moved = 0
        started = time.perf_counter()
        # The loop of Relay.run without its idle wait: every round here is a full batch.
        while moved < count:
            taken = await relay.publish_pending()
            if taken == 0:
                raise BenchError(f"the relay found nothing after {moved} of {count} entries")
            moved += taken
        return time.perf_counter() - started
    finally:
        await source.close()
        await broker.stop()


# --- orchestration ----------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    rate: float
    baseline_rate: float
    target: float
    detail: str

    @property
    def ratio(self) -> float:
        return self.rate / self.baseline_rate

    def line(self) -> str:
        verdict = "PASS" if self.ratio >= self.target else "FAIL"
        return (
            f"{PREFIX} {self.name} ratio={self.ratio:.3f} ({self.detail}) "
            f"target>={self.target} {verdict}"
        )


async def measure(args: argparse.Namespace, database_url: str, bootstrap: str) -> list[Figure]:
    count = args.count
    run_id = uuid.uuid4().hex[:8]
    relayed, baseline, events = (f"bench.{kind}.{run_id}" for kind in ("relay", "send", "events"))
    topics = [relayed, baseline, events]
    await create_topics(bootstrap, topics)
    pool = open_pool(database_url)
    await pool.open(wait=True, timeout=30)
    try:
        projection = ProjectionRunner(pool, SCHEMA, BackupsView())
        async with pool.connection() as conn:
            await migrate(conn, projection)

        note(f"building {count} RequestBackup envelopes ...")
        commands = command_records(count)
        size = sum(len(r.value) for r in commands) / count
        note(f"filling the outbox with {count} rows ({size:.0f} bytes per envelope) ...")
        await fill_outbox(pool, relayed, commands)
        note("baseline: plain aiokafka producer (acks=all, idempotent) ...")
        send_s = await produce(bootstrap, baseline, commands)
        note(f"baseline sent {count} in {send_s:.2f}s; relaying the outbox ...")
        relay_s = await run_relay(pool, database_url, bootstrap, count)
        note(f"relay moved {count} in {relay_s:.2f}s")
        if (left := await outbox_size(pool)) != 0:
            raise BenchError(f"{left} outbox rows left after the relay")
        if (on_topic := await topic_size(bootstrap, relayed)) != count:
            raise BenchError(f"{on_topic} records on {relayed}, expected {count}")
        relay = Figure(
            "relay_vs_aiokafka_producer",
            count / relay_s,
            count / send_s,
            RELAY_TARGET,
            f"relay {count / relay_s:,.0f} msg/s in {relay_s:.2f}s, producer "
            f"{count / send_s:,.0f} msg/s in {send_s:.2f}s, n={count}",
        )
        print(relay.line(), flush=True)
        if args.relay_only:
            return [relay]

        note(f"building and producing {count} backup events (not measured) ...")
        await produce(bootstrap, events, event_records(count))
        note("baseline: plain aiokafka consumer reading them ...")
        read_s = await consume(bootstrap, events, count, None)
        note(f"read {count} in {read_s:.2f}s; projecting them ...")

        async def apply(topic: str, partition: int, offset: int, value: bytes) -> None:
            # As the tracked consumer hands it over: envelope, then ("topic:partition", offset+1).
            await projection.apply_at(
                Envelope.from_bytes(value), Tracking(f"{topic}:{partition}", offset + 1)
            )

        apply_s = await consume(bootstrap, events, count, apply)
        note(f"projected {count} in {apply_s:.2f}s")
        async with pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT status, count(*) AS n FROM {SCHEMA}.backups GROUP BY status"
            )
            statuses = {row["status"]: row["n"] for row in await cursor.fetchall()}
        expected_backups = -(-count // 3)
        if sum(statuses.values()) != expected_backups:
            raise BenchError(f"read model holds {statuses}, expected {expected_backups} backups")
        projected = Figure(
            "projection_vs_aiokafka_consumer",
            count / apply_s,
            count / read_s,
            args.projection_target,
            f"projection {count / apply_s:,.0f} events/s in {apply_s:.2f}s, consumer "
            f"{count / read_s:,.0f} msg/s in {read_s:.2f}s, n={count}",
        )
        print(projected.line(), flush=True)
        print(f"{PREFIX}   read model after the run: {statuses}", flush=True)
        return [relay, projected]
    finally:
        await pool.close()
        with contextlib.suppress(Exception):
            await delete_topics(bootstrap, topics)


@contextlib.contextmanager
def infrastructure(root_name: str = "bench") -> Iterator[tuple[str, str]]:
    """(database URL, Kafka bootstrap): given in the environment, else local servers
    under ``.state/bench`` (as bench/backup_overhead.py starts them), a fresh database."""
    cleanup = contextlib.ExitStack()
    with cleanup:
        root = state_dir() / root_name
        root.mkdir(parents=True, exist_ok=True)
        admin_url = os.environ.get("DATABASE_URL")
        if admin_url:
            note("PostgreSQL: DATABASE_URL from the environment")
        else:
            local_pg = LocalPostgres(root / "postgres")
            note(f"PostgreSQL: starting a local cluster in {local_pg.base_dir}")
            admin_url = local_pg.start()
            cleanup.callback(local_pg.stop)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            note(f"Kafka: {bootstrap} from the environment")
        else:
            local_kafka = LocalKafka(root / "kafka")
            note(f"Kafka: starting a local broker in {local_kafka.base_dir}")
            bootstrap = local_kafka.start()
            cleanup.callback(local_kafka.stop)
        name = f"tidemark_bench_relay_{uuid.uuid4().hex[:8]}"
        url = create_database_at(admin_url, name)
        cleanup.callback(lambda: drop_database_at(admin_url, name))
        yield url, bootstrap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=DEFAULT_COUNT, help=f"messages (default {DEFAULT_COUNT})"
    )
    parser.add_argument(
        "--projection-target",
        type=float,
        default=RELAY_TARGET,
        help=f"ratio the projection line is judged against (default {RELAY_TARGET})",
    )
    parser.add_argument(
        "--relay-only", action="store_true", help="measure the relay and skip the projection"
    )
    args = parser.parse_args(argv)
    if args.count < 3:
        parser.error("--count >= 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    try:
        with infrastructure() as (database_url, bootstrap):
            asyncio.run(measure(args, database_url, bootstrap))
            print(
                f"{PREFIX}   load average (1 min) after: {os.getloadavg()[0]:.2f} on "
                f"{os.cpu_count()} CPUs; whole run {time.monotonic() - started:.0f}s",
                flush=True,
            )
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except Exception as exc:
        if not isinstance(exc, BenchError):
            traceback.print_exc()
        print(f"{PREFIX} ERROR {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
