"""Which services have reported in: the gateway's readiness depends on all of them."""

from __future__ import annotations

import time

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from tidemark_contracts import SERVICE_HEARTBEATS
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_platform.consumer import decode_message


class ServiceRegistry:
    def __init__(self, expected: list[str], timeout_seconds: float) -> None:
        self.expected = expected
        self.timeout = timeout_seconds
        self._seen: dict[str, tuple[float, bool]] = {}

    def record(self, beat: ServiceHeartbeat) -> None:
        self._seen[beat.service] = (time.monotonic(), beat.ready)

    def missing(self) -> list[str]:
        now = time.monotonic()
        return [
            name
            for name in self.expected
            if not (
                (seen := self._seen.get(name)) is not None
                and seen[1]
                and now - seen[0] <= self.timeout
            )
        ]

    async def all_reported(self) -> bool:
        return not self.missing()


def subscribe_heartbeats(broker: KafkaBroker, registry: ServiceRegistry) -> None:
    # No consumer group: every gateway instance must see every heartbeat, and a missed
    # one is simply superseded by the next, so nothing needs committing.
    @broker.subscriber(
        SERVICE_HEARTBEATS.name,
        auto_offset_reset="latest",
        ack_policy=AckPolicy.ACK_FIRST,
        title="gateway:service.heartbeats",
    )
    async def on_heartbeat(message: KafkaMessage) -> None:
        beat = decode_message(SERVICE_HEARTBEATS, message.body)
        if isinstance(beat, ServiceHeartbeat):
            registry.record(beat)
