"""A backup subscriber: an internal service that follows Tidemark's ``backup.events``.

It is the smallest honest shape of a subscriber (see docs/subscriber.md):

- its **own consumer group** (``--group``), so it reads every event whatever other
  services do, and starts from the oldest record Kafka still holds;
- the **published contracts** (``tidemark_contracts``): ``Envelope`` around every record,
  and the topic's message classes (``BACKUP_EVENTS.message_class``) for the payload;
- **each event once in effect**: Kafka delivers at least once, and Tidemark may
  re-publish history (``tidemark events republish``). Every envelope carries a
  ``messageId`` that is the same on every delivery and re-publication, so the subscriber
  records the ids it handled in its own table, **in the same transaction as its effect**.
  A message whose id is there already is skipped.

Its effect here is a small ledger in its own PostgreSQL schema ``backup_subscriber``: per
backup, the last status and how many events it took (a counter, which would visibly
double if an event were handled twice).

Run it (Python with the ``tidemark-contracts`` package, aiokafka and psycopg)::

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 DATABASE_URL=postgresql://... \\
        python docs/examples/backup_subscriber.py --group billing-backups

It prints one JSON line per step on stdout: ``assigned`` (with the partitions it got),
then ``handled`` or ``skipped`` per event. Ctrl-C (SIGINT) or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from tidemark_contracts import BACKUP_EVENTS, Envelope, Message
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
)

SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS backup_subscriber;
-- Every message handled, by its messageId: the proof that it was handled (once).
CREATE TABLE IF NOT EXISTS backup_subscriber.handled_messages (
    message_id uuid PRIMARY KEY,
    message_type text NOT NULL,
    aggregate_id uuid,
    aggregate_version integer,
    handled_at timestamptz NOT NULL DEFAULT now()
);
-- The effect: one row per backup.
CREATE TABLE IF NOT EXISTS backup_subscriber.backups (
    backup_id uuid PRIMARY KEY,
    environment_id uuid NOT NULL,
    status text NOT NULL,
    events integer NOT NULL
);
"""

# What each event says about the backup's status; other events only count.
STATUS: dict[type[Message], str] = {
    BackupRequested: "pending",
    BackupStarted: "running",
    BackupCompleted: "completed",
    BackupFailed: "failed",
    BackupDeletionRequested: "deleting",
    BackupDeleted: "deleted",
}


def say(step: str, **fields: Any) -> None:  # one JSON line per step, on stdout
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def decode(raw: bytes | None) -> tuple[Envelope, Message] | None:
    """The envelope and its message, or None for a record this subscriber cannot read
    (not an envelope, or a message type newer than its contracts: skipped, not fatal)."""
    if raw is None:
        return None
    try:
        envelope = Envelope.from_bytes(raw)
    except ValidationError:
        return None
    message_class = BACKUP_EVENTS.message_class(envelope.message_type)
    if message_class is None:
        return None
    try:
        return envelope, message_class.model_validate(envelope.payload)
    except ValidationError:
        return None


def handle(conn: psycopg.Connection[Any], envelope: Envelope, message: Message) -> bool:
    """Apply one event exactly once: True when handled now, False when handled before."""
    with conn.transaction():
        first_time = conn.execute(
            "INSERT INTO backup_subscriber.handled_messages "
            "(message_id, message_type, aggregate_id, aggregate_version) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING RETURNING 1",
            (
                envelope.message_id,
                envelope.message_type,
                envelope.aggregate_id,
                envelope.aggregate_version,
            ),
        ).fetchone()
        if first_time is None:
            return False  # a redelivery or a re-publication: the effect is there already
        backup_id = getattr(message, "backup_id", None)
        if backup_id is not None and envelope.environment_id is not None:
            status = STATUS.get(type(message))
            conn.execute(
                "INSERT INTO backup_subscriber.backups AS b "
                "(backup_id, environment_id, status, events) VALUES (%s, %s, %s, 1) "
                "ON CONFLICT (backup_id) DO UPDATE SET events = b.events + 1, "
                "status = COALESCE(%s, b.status)",
                (backup_id, envelope.environment_id, status or "pending", status),
            )
    return True


def handle_all(conn: psycopg.Connection[Any], records: list[Any]) -> list[dict[str, Any]]:
    """Handle a batch of records in order; what happened to each, to be said."""
    steps: list[dict[str, Any]] = []
    for record in records:
        decoded = decode(record.value)
        if decoded is None:
            steps.append(
                {"step": "unreadable", "partition": record.partition, "offset": record.offset}
            )
            continue
        envelope, message = decoded
        steps.append(
            {
                "step": "handled" if handle(conn, envelope, message) else "skipped",
                "messageId": envelope.message_id,
                "type": envelope.message_type,
                "backupId": getattr(message, "backup_id", None),
            }
        )
    return steps


class SayAssigned(ConsumerRebalanceListener):
    """Says which partitions the group gave this instance (a test waits for it)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        say("assigned", partitions=sorted(tp.partition for tp in assigned))


async def follow(bootstrap: str, database_url: str, group: str, stop: asyncio.Event) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA_DDL)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            # Offsets are committed after the database commit: a crash in between
            # delivers again, which handled_messages turns into a skip.
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.subscribe([BACKUP_EVENTS.name], listener=SayAssigned())
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=200)
                records = [r for batch in batches.values() for r in batch]
                if not records:
                    continue
                # The database work runs in a thread: the consumer's heartbeats go on
                # meanwhile, so a slow database does not cost the group membership.
                for step in await asyncio.to_thread(handle_all, conn, records):
                    say(**step)
                try:
                    await consumer.commit()
                except CommitFailedError:
                    # The group moved these partitions on (a rebalance) before the commit:
                    # their new owner gets the records again and skips what was handled.
                    say("commit_failed")
        finally:
            await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", required=True, help="this subscriber's Kafka consumer group")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("DATABASE_URL")
    if not bootstrap or not database_url:
        sys.exit("backup_subscriber: set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await follow(bootstrap, database_url, args.group, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
