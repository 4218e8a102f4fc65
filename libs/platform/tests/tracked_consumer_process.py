"""A tracked consumer in a process of its own, so a test can kill it mid-message.

Usage: python tracked_consumer_process.py BOOTSTRAP DATABASE_URL SCHEMA TOPIC GROUP CRASH
Prints "recorded" or "skipped" per delivery. With CRASH=1 it dies (exit 17) right after
its effect is committed to PostgreSQL and before Kafka's offset is committed. Exits 3
when nothing is delivered within 20 s.
"""

from __future__ import annotations

import asyncio
import os
import sys

from eventsourcing.domain import Aggregate
from tidemark_contracts import Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.consumer import Delivery, subscribe_tracked
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.kafka import make_broker


class Effect(Aggregate):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id


class EffectApplication(EventStoreApplication):
    name = "tracked_consumer_test"


async def main(
    bootstrap: str, database_url: str, schema: str, topic: str, group: str, crash: bool
) -> int:
    app = EffectApplication.on_postgres(database_url, schema)
    broker = make_broker(bootstrap, "tracked-consumer-test")
    handled = asyncio.Event()

    async def handle(beat: ServiceHeartbeat, delivery: Delivery) -> None:
        # A new aggregate id on every delivery: only the tracking record can stop a
        # redelivered message from having its effect twice.
        effect = Effect(message_id=str(delivery.envelope.message_id))
        recorded = await asyncio.to_thread(app.save_tracked, delivery.tracking, effect)
        print("recorded" if recorded else "skipped", flush=True)
        if recorded and crash:
            os._exit(17)
        handled.set()

    subscribe_tracked(
        broker,
        Topic(topic, "crash test", (ServiceHeartbeat,), partitions=1),
        group,
        {ServiceHeartbeat: handle},
        service="tracked-consumer-test",
    )
    await broker.start()
    try:
        await asyncio.wait_for(handled.wait(), 20)
    except TimeoutError:
        return 3
    finally:
        await broker.stop()  # commits the offset of what was handled
        app.close()
    return 0


if __name__ == "__main__":
    bootstrap, database_url, schema, topic, group, crash = sys.argv[1:7]
    sys.exit(asyncio.run(main(bootstrap, database_url, schema, topic, group, crash == "1")))
