"""On real Kafka: topics are created safe, unsafe ones are refused, and tracking positions
name the Kafka cluster they belong to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Tracking
from prometheus_client import REGISTRY
from tidemark_contracts import Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_contracts.services import SCHEDULER
from tidemark_devstack.paths import free_port
from tidemark_platform.consumer import Delivery, subscribe_tracked
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.kafka import (
    UnsafeTopicsError,
    check_topics,
    ensure_topics,
    make_broker,
    start_when_reachable,
)
from tidemark_platform.runtime import EXIT_UNSAFE_TOPICS

pytestmark = pytest.mark.integration


def fresh_topic(partitions: int = 3) -> Topic:
    return Topic(
        f"test.settings.{uuid.uuid4().hex[:8]}", "settings test", (), partitions=partitions
    )


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    return {
        resource["resource_name"]: {
            e["config_names"]: e["config_value"] for e in resource["config_entries"]
        }
        for resource in response.to_object()["resources"]
    }


async def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs)], validate_only=False
        )
    finally:
        await admin.close()


async def cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


async def test_topics_and_their_dead_letter_topics_are_created_safe(kafka_bootstrap: str) -> None:
    topic = fresh_topic(partitions=3)
    await ensure_topics(kafka_bootstrap, [topic], replication_factor=1)
    configs = await topic_configs(kafka_bootstrap, [topic.name, topic.dlq_name])
    for name in (topic.name, topic.dlq_name):
        assert configs[name]["min.insync.replicas"] == "1"  # max(1, 1 - 1)
        assert configs[name]["unclean.leader.election.enable"] == "false"
    assert await check_topics(kafka_bootstrap, [topic], replication_factor=1) == []


async def test_a_topic_with_unclean_leader_election_is_refused_before_the_broker_starts(
    kafka_bootstrap: str,
) -> None:
    topic = fresh_topic(partitions=1)
    await create_topic(kafka_bootstrap, topic.name, 1, **{"unclean.leader.election.enable": "true"})
    broker = make_broker(kafka_bootstrap, "settings-test")
    with pytest.raises(UnsafeTopicsError) as refused:
        await asyncio.wait_for(
            start_when_reachable(broker, kafka_bootstrap, topics=[topic]), timeout=60
        )
    assert str(refused.value) == (
        f"topic {topic.name}: unclean.leader.election.enable is true, must be false"
    )
    assert not await broker.ping(timeout=0.5), "the broker was never started"


async def test_fewer_partitions_replicas_or_in_sync_replicas_than_configured_are_named(
    kafka_bootstrap: str,
) -> None:
    topic = fresh_topic(partitions=3)
    await create_topic(kafka_bootstrap, topic.name, 1)  # the registry says 3
    await ensure_topics(kafka_bootstrap, [topic])  # creates only the dead-letter topic
    # Configured for three replicas, the topics have one each (a single-broker cluster).
    problems = await check_topics(kafka_bootstrap, [topic], replication_factor=3)
    assert sorted(str(p) for p in problems) == sorted(
        [
            f"topic {topic.name}: partitions is 1, must be >= 3",
            f"topic {topic.name}: replication factor is 1, must be >= 3",
            f"topic {topic.name}: min.insync.replicas is 1, must be >= 2",
            f"topic {topic.dlq_name}: replication factor is 1, must be >= 3",
            f"topic {topic.dlq_name}: min.insync.replicas is 1, must be >= 2",
        ]
    )


def test_a_service_on_topics_that_could_lose_messages_exits_and_says_why(
    kafka_bootstrap: str, database_url: str
) -> None:
    # Three replicas required of a one-broker cluster's topics: the registry's topics
    # either exist with one replica or cannot be created; either way the service refuses.
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_REPLICATION_FACTOR": "3",
        f"{SCHEDULER.settings_prefix}HTTP_PORT": str(free_port()),
        f"{SCHEDULER.settings_prefix}LOG_FORMAT": "json",
    }
    finished = subprocess.run(
        [sys.executable, "-m", SCHEDULER.module],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == EXIT_UNSAFE_TOPICS, finished.stdout + finished.stderr
    [refusal] = [line for line in finished.stdout.splitlines() if "kafka_topics_unsafe" in line]
    # Created by an earlier test with one replica, or not creatable with three here.
    assert (
        "topic backup.commands: replication factor is 1, must be >= 3" in refusal
        or "topic backup.commands: existence is missing, must be created" in refusal
    ), refusal


class Effect(Aggregate):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id


class ClusterTestApplication(EventStoreApplication):
    name = "cluster_test"


async def test_positions_name_the_cluster_and_one_from_another_cluster_is_reported(
    kafka_bootstrap: str, database_url: str, kafka_tools: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(f"test.cluster.{suffix}", "cluster test", (ServiceHeartbeat,), partitions=1)
    group = f"cluster-{suffix}"
    await ensure_topics(kafka_bootstrap, [topic])
    app = ClusterTestApplication.on_postgres(database_url, f"cluster_{suffix}")
    # What a store would hold after consuming 41 records of a cluster since recreated.
    app.process_recorder.insert_tracking(Tracking(f"old-cluster/{topic.name}:0", 42))
    recorded: list[tuple[Delivery, bool]] = []

    async def on_heartbeat(beat: ServiceHeartbeat, delivery: Delivery) -> None:
        effect = Effect(str(delivery.envelope.message_id))
        saved = await asyncio.to_thread(app.save_tracked, delivery.tracking, effect)
        recorded.append((delivery, saved))

    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    async def consume_one_more() -> list[Any]:
        """Send a message and run a consumer (one process's life) until it is handled."""
        broker = make_broker(kafka_bootstrap, f"cluster-test-{suffix}")
        subscribe_tracked(
            broker,
            topic,
            group,
            {ServiceHeartbeat: on_heartbeat},
            service="cluster-test",
            positions=positions,
        )
        expected = len(recorded) + 1
        await kafka_tools.send_raw(topic.name, [(b"k", kafka_tools.heartbeat("s").to_bytes())])
        with structlog.testing.capture_logs() as logs:
            await broker.start()
            try:
                await kafka_tools.wait_for(lambda: len(recorded) >= expected, "the message")
            finally:
                await broker.stop()
        return logs

    logs = await consume_one_more()
    current = await cluster_id(kafka_bootstrap)
    [(delivery, saved)] = recorded
    assert delivery.tracking == Tracking(f"{current}/{topic.name}:0", 1)
    assert saved, "offset 0 of the new cluster is not mistaken for one below 42"
    # Reported on assignment: once, or again after a rebalance before the first message.
    reports = [e for e in logs if e["event"] == "kafka_cluster_changed"]
    assert reports
    changed = reports[0]
    assert changed["log_level"] == "error"
    assert (changed["topic"], changed["partition"]) == (topic.name, 0)
    assert (changed["previous_cluster_id"], changed["cluster_id"]) == ("old-cluster", current)
    assert changed["previous_position"] == 42
    assert REGISTRY.get_sample_value(
        "tidemark_kafka_cluster_changes_total", {"topic": topic.name, "group": group}
    ) == len(reports)

    # Consumed on this cluster since: the old positions are history, not reported again.
    logs = await consume_one_more()
    app.close()
    assert recorded[1][0].tracking == Tracking(f"{current}/{topic.name}:0", 2)
    assert not [e for e in logs if e["event"] == "kafka_cluster_changed"]
    assert REGISTRY.get_sample_value(
        "tidemark_kafka_cluster_changes_total", {"topic": topic.name, "group": group}
    ) == len(reports)
