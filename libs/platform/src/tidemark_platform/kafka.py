"""Kafka wiring written once: the broker every service uses, and its topics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry
from tidemark_contracts import ALL_TOPICS, Topic

from tidemark_platform.logging import get_logger

log = get_logger(__name__)


def make_broker(
    bootstrap_servers: str,
    client_id: str,
    registry: CollectorRegistry = REGISTRY,
) -> KafkaBroker:
    """A broker whose producer is idempotent and waits for every in-sync replica.

    aiokafka defaults to ``acks=1`` without idempotence, which can lose or duplicate a
    message on a leader change; the relays rely on neither happening.
    """
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=15_000,
        retry_backoff_ms=200,
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=client_id)],
        # Per-message logs at DEBUG; handler failures are still logged at ERROR.
        logger=logging.getLogger("tidemark.faststream"),
        log_level=logging.DEBUG,
    )


async def ensure_topics(
    bootstrap_servers: str, topics: Iterable[Topic] = ALL_TOPICS, replication_factor: int = 1
) -> None:
    """Create the registry's topics with their partition counts where they are missing.

    On a real cluster set ``replication_factor`` to 3: with one replica, ``acks=all``
    protects nothing, and the gateway deletes an outbox row once Kafka acknowledged it.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=t.name, num_partitions=t.partitions, replication_factor=replication_factor
            )
            for t in topics
            if t.name not in existing
        ]
        if missing:
            # Another service may create them in between.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def start_when_reachable(
    broker: KafkaBroker,
    bootstrap_servers: str,
    *,
    replication_factor: int = 1,
    retry_seconds: float = 2.0,
) -> None:
    """Start the broker, waiting for Kafka however long it takes (it may be down)."""
    attempt = 0
    while True:
        try:
            await ensure_topics(bootstrap_servers, replication_factor=replication_factor)
            await broker.start()
            log.info("kafka_connected", bootstrap_servers=bootstrap_servers)
            return
        except (TimeoutError, KafkaError, OSError) as exc:
            attempt += 1
            if attempt == 1 or attempt % 15 == 0:
                log.warning("kafka_unreachable", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(retry_seconds)
