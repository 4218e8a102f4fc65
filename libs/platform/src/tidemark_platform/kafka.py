"""Kafka wiring written once: the broker every service uses, and its topics.

Topics are created with the registry's partition counts, the configured replication
factor, ``min.insync.replicas`` = max(1, replication - 1) and unclean leader election off;
each has a dead-letter topic ``<topic>.dlq`` (one partition, same replication). Before a
service starts consuming or producing, it checks the topics that already exist against
the same rules and refuses to run on one that would lose acknowledged messages: fewer
partitions or replicas than required, ``min.insync.replicas`` below the required value, or
unclean leader election enabled. Fixing a topic is an operator's decision (more
partitions re-key environments; more replicas means a reassignment), so nothing here
alters an existing topic.

Consumers name their tracking positions with the cluster id (``cluster_id_of``): see
``tidemark_platform.consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry
from tidemark_contracts import ALL_TOPICS, Topic, dlq_topic

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


def min_insync_replicas(replication_factor: int) -> int:
    """Acknowledged writes survive the loss of one replica, and one replica down still
    accepts writes."""
    return max(1, replication_factor - 1)


def topic_configs(replication_factor: int) -> dict[str, str]:
    return {
        "min.insync.replicas": str(min_insync_replicas(replication_factor)),
        # An out-of-sync replica elected leader drops what the old leader acknowledged.
        "unclean.leader.election.enable": "false",
    }


def with_dead_letters(topics: Iterable[Topic]) -> list[Topic]:
    """The topics and, after each, its dead-letter topic."""
    return [t for topic in topics for t in (topic, dlq_topic(topic))]


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[Topic] = ALL_TOPICS,
    replication_factor: int = 1,
    *,
    dead_letters: bool = True,
) -> None:
    """Create the registry's topics (and their dead-letter topics) where they are missing,
    with their partition counts, ``replication_factor`` and ``min.insync.replicas``.

    On a real cluster set ``replication_factor`` to 3: with one replica, ``acks=all``
    protects nothing, and the gateway deletes an outbox row once Kafka acknowledged it.
    """
    wanted = with_dead_letters(topics) if dead_letters else list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=t.name,
                num_partitions=t.partitions,
                replication_factor=replication_factor,
                topic_configs=topic_configs(replication_factor),
            )
            for t in wanted
            if t.name not in existing
        ]
        if missing:
            # Another service may create them in between.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(missing)
                for error in response.to_object()["topic_errors"]:
                    if error["error_code"] not in (0, TopicAlreadyExistsError.errno):
                        # check_topics reports it missing; say why here.
                        log.error(
                            "kafka_topic_not_created",
                            topic=error["topic"],
                            error=error.get("error_message") or str(error["error_code"]),
                        )
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicProblem:
    """A topic setting under which Kafka may lose a message it acknowledged."""

    topic: str
    setting: str
    found: str
    required: str

    def __str__(self) -> str:
        return f"topic {self.topic}: {self.setting} is {self.found}, must be {self.required}"


class UnsafeTopicsError(RuntimeError):
    """Existing topics whose settings would lose acknowledged messages; the service must
    not run on them (an operator fixes the topics, then starts it again)."""

    def __init__(self, problems: Sequence[TopicProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


async def check_topics(
    bootstrap_servers: str,
    topics: Iterable[Topic] = ALL_TOPICS,
    replication_factor: int = 1,
    *,
    dead_letters: bool = True,
) -> list[TopicProblem]:
    """What is wrong with the existing topics, measured against the registry and settings:
    missing, fewer partitions or replicas, ``min.insync.replicas`` too low, or unclean
    leader election enabled."""
    wanted = with_dead_letters(topics) if dead_letters else list(topics)
    required_isr = min_insync_replicas(replication_factor)
    problems: list[TopicProblem] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        # Every topic, not the wanted ones by name: a metadata request naming a missing
        # topic makes Kafka auto-create it (auto.create.topics.enable) with its defaults.
        described = {t["topic"]: t for t in await admin.describe_topics()}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in wanted]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str | None]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            configs[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
            }
    for topic in wanted:
        info = described.get(topic.name)
        if info is None or info["error_code"] != 0 or not info["partitions"]:
            problems.append(TopicProblem(topic.name, "existence", "missing", "created"))
            continue
        partitions = info["partitions"]
        if len(partitions) < topic.partitions:
            problems.append(
                TopicProblem(
                    topic.name, "partitions", str(len(partitions)), f">= {topic.partitions}"
                )
            )
        replicas = min(len(p["replicas"]) for p in partitions)
        if replicas < replication_factor:
            problems.append(
                TopicProblem(
                    topic.name, "replication factor", str(replicas), f">= {replication_factor}"
                )
            )
        settings = configs.get(topic.name, {})
        isr = settings.get("min.insync.replicas")
        if isr is None or int(isr) < required_isr:
            problems.append(
                TopicProblem(topic.name, "min.insync.replicas", str(isr), f">= {required_isr}")
            )
        if (settings.get("unclean.leader.election.enable") or "false").lower() != "false":
            problems.append(
                TopicProblem(
                    topic.name,
                    "unclean.leader.election.enable",
                    str(settings.get("unclean.leader.election.enable")),
                    "false",
                )
            )
    return problems


async def cluster_id_of(broker: KafkaBroker) -> str:
    """The id of the Kafka cluster ``broker`` is connected to (from its metadata)."""
    admin: Any = cast(Any, broker.config).admin_client
    described = await admin.describe_cluster()
    cluster_id = described.get("cluster_id")
    if not cluster_id:
        raise RuntimeError("Kafka did not report a cluster id (metadata v2+ is required)")
    return str(cluster_id)


def _aiokafka_producer(broker: KafkaBroker) -> AIOKafkaProducer | None:
    # FastStream's publish adds headers of its own (content-type, correlation_id); a dead
    # letter must carry the original headers only, so it goes through the broker's own
    # aiokafka producer. FastStream's in-memory test broker has none.
    state = getattr(cast(Any, broker.config).producer, "_producer", None)
    producer = getattr(state, "producer", None)
    return producer if isinstance(producer, AIOKafkaProducer) else None


# Kafka's answers that blame the record itself: sending it again cannot succeed.
RECORD_REFUSED: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTopicError,
)
RECORD_TOO_LARGE: tuple[type[Exception], ...] = RECORD_REFUSED[:3]


_RENEWAL = asyncio.Lock()


async def renew_producer(broker: KafkaBroker) -> None:
    """Replace the broker's producer with a new one (a new idempotent producer id).

    aiokafka counts a record Kafka refused as sent: the partition's sequence number moves
    on, the next record to that partition fails with OutOfOrderSequenceNumber, and that
    error stops the producer for good (every later send fails). A new producer starts
    its sequences afresh. Called after Kafka refused a record.
    """
    fast: Any = cast(Any, broker.config).producer
    connection_kwargs: dict[str, Any] = cast(Any, broker)._connection_kwargs
    failed = fast._producer
    # Relays and consumers share the producer and may renew it at once: one renewal per
    # failed producer, or the first replacement would be dropped without being stopped.
    async with _RENEWAL:
        if fast._producer is not failed:
            return  # renewed by someone else meanwhile
        await fast.connect(
            AIOKafkaProducer(**connection_kwargs), serializer=fast.serializer, codec=fast.codec
        )
        with contextlib.suppress(Exception):
            await failed.stop()
    log.warning("kafka_producer_renewed", reason="a record was refused")


async def send_record(
    broker: KafkaBroker,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> None:
    """Publish one record exactly as given (idempotent, ``acks=all``) and wait for it."""
    producer = _aiokafka_producer(broker)
    if producer is None:
        await broker.publish(
            value,
            topic,
            key=key,
            headers={k: v.decode(errors="replace") for k, v in headers},
        )
        return
    try:
        await producer.send_and_wait(topic, value, key=key, headers=list(headers))
    except RECORD_REFUSED:
        await renew_producer(broker)
        raise


async def send_pipelined(
    broker: KafkaBroker,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> Awaitable[object]:
    """Hand one record, exactly as given, to the producer and return its pending answer
    (a future) without waiting for Kafka: for relays, which await a batch's answers in
    order after sending it. Straight to aiokafka, past FastStream's per-message middleware,
    which costs as much as the send itself."""
    producer = _aiokafka_producer(broker)
    if producer is None:
        answer: Awaitable[object] = await broker.publish(
            value,
            topic,
            key=key,
            headers={k: v.decode(errors="replace") for k, v in headers},
            no_confirm=True,
        )
        return answer
    pending: Awaitable[object] = await producer.send(topic, value, key=key, headers=list(headers))
    return pending


async def start_when_reachable(
    broker: KafkaBroker,
    bootstrap_servers: str,
    *,
    replication_factor: int = 1,
    retry_seconds: float = 2.0,
    topics: Sequence[Topic] = ALL_TOPICS,
) -> None:
    """Start the broker, waiting for Kafka however long it takes (it may be down).

    Raises ``UnsafeTopicsError``, not retried, when an existing topic would lose
    acknowledged messages.
    """
    attempt = 0
    while True:
        try:
            await ensure_topics(bootstrap_servers, topics, replication_factor)
            problems = await check_topics(bootstrap_servers, topics, replication_factor)
            if problems:
                raise UnsafeTopicsError(problems)
            await broker.start()
            log.info("kafka_connected", bootstrap_servers=bootstrap_servers)
            return
        except (TimeoutError, KafkaError, OSError) as exc:
            attempt += 1
            if attempt == 1 or attempt % 15 == 0:
                log.warning("kafka_unreachable", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(retry_seconds)
