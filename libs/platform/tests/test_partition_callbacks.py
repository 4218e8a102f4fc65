"""subscribe_tracked tells a service which partitions it gained and lost at each rebalance
(the scheduler owns schedules by partition), and a failing callback stops nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs
from tidemark_contracts import Topic
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.consumer import Delivery, subscribe_tracked
from tidemark_platform.kafka import ensure_topics, make_broker

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Member:
    """One consumer of the group, with the partitions it was last told it holds."""

    def __init__(self, bootstrap: str, topic: Topic, group: str, *, failing: bool = False) -> None:
        self.owned: set[int] = set()
        self.changes: list[tuple[str, list[int]]] = []
        self.handled: list[str] = []
        self.failing = failing
        self.broker = make_broker(bootstrap, f"partition-test-{uuid.uuid4().hex[:6]}")
        subscribe_tracked(
            self.broker,
            topic,
            group,
            {ServiceHeartbeat: self.handle},
            service="partition-test",
            on_assigned=self.assigned,
            on_revoked=self.revoked,
        )

    async def handle(self, beat: ServiceHeartbeat, delivery: Delivery) -> None:
        self.handled.append(beat.service)

    async def assigned(self, partitions: list[int]) -> None:
        self.changes.append(("assigned", partitions))
        if self.failing:
            raise RuntimeError("the service could not load its work")
        self.owned |= set(partitions)

    async def revoked(self, partitions: list[int]) -> None:
        self.changes.append(("revoked", partitions))
        self.owned -= set(partitions)


async def until(condition: Any, seconds: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.2)


async def fresh_topic(bootstrap: str) -> tuple[Topic, str]:
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(
        f"test.partitions.{suffix}",
        "partition callbacks",
        (ServiceHeartbeat,),
        partitions=PARTITIONS,
    )
    await ensure_topics(bootstrap, [topic])
    return topic, f"partitions-{suffix}"


async def test_members_are_told_the_partitions_they_gain_and_lose(kafka_bootstrap: str) -> None:
    topic, group = await fresh_topic(kafka_bootstrap)
    one = Member(kafka_bootstrap, topic, group)
    await one.broker.start()
    two = Member(kafka_bootstrap, topic, group)
    try:
        await until(lambda: one.owned == set(range(PARTITIONS)))
        await two.broker.start()
        await until(lambda: two.owned and one.owned and len(one.owned | two.owned) == PARTITIONS)
        assert one.owned.isdisjoint(two.owned)
        assert ("revoked", sorted(range(PARTITIONS))) in one.changes
        # The other one leaves: this one is told it holds every partition again.
        await two.broker.stop()
        await until(lambda: one.owned == set(range(PARTITIONS)))
    finally:
        await one.broker.stop()
        await two.broker.stop()


async def test_a_failing_callback_is_logged_and_does_not_stop_consumption(
    kafka_bootstrap: str, kafka_tools: Any
) -> None:
    topic, group = await fresh_topic(kafka_bootstrap)
    member = Member(kafka_bootstrap, topic, group, failing=True)
    with capture_logs() as logs:
        await member.broker.start()
        try:
            await until(lambda: any(change == "assigned" for change, _ in member.changes))
            beat = kafka_tools.heartbeat("after-a-failed-callback")
            await kafka_tools.send_raw(topic.name, [(beat.key, beat.to_bytes())])
            await until(lambda: member.handled == ["after-a-failed-callback"])
        finally:
            await member.broker.stop()
    failures = [e for e in logs if e["event"] == "partitions_callback_failed"]
    assert [(e["topic"], e["change"]) for e in failures] == [(topic.name, "assigned")]
