"""Kafka in: ConfigureSchedule commands become schedule revisions, timed at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from uuid import UUID

from faststream.kafka import KafkaBroker
from tidemark_contracts import SCHEDULE_COMMANDS, Message
from tidemark_contracts.schedule import ConfigureSchedule
from tidemark_platform.consumer import Delivery, MessageHandler, subscribe_tracked
from tidemark_platform.logging import get_logger
from tidemark_schedules import ids

from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.ownership import Ownership, partition_of, partition_of_tracking

log = get_logger(__name__)

CONSUMER_GROUP = "scheduler"

AfterConfigure = Callable[[UUID, datetime], Awaitable[None]]
"""Called after each ConfigureSchedule (also a redelivered one): retention enforcement
(``RetentionEnforcer.enforce(environment_id, now)``), which is idempotent."""


def make_handlers(
    app: SchedulerApplication,
    ownership: Ownership,
    on_saved: Callable[[], None],
    *,
    now: Callable[[], datetime],
    after_configure: AfterConfigure | None = None,
) -> Mapping[type[Message], MessageHandler]:
    async def on_configure_schedule(command: ConfigureSchedule, delivery: Delivery) -> None:
        applied = await asyncio.to_thread(app.configure, command, delivery.tracking, now())
        if applied:
            on_saved()
        # Also when nothing new was recorded: a crash may have come between the events and
        # the index row, or the heap update (both idempotent).
        # Owned by the partition the command arrived on (the producer's, whatever the
        # topic's partition count), kept so a load after a rebalance finds it there.
        partition = partition_of_tracking(delivery.tracking)
        if partition is None:
            partition = partition_of(command.environment_id, ownership.partitions)
        await asyncio.to_thread(app.remember_environment, command.environment_id, partition)
        await ownership.track(ids.schedule_id(command.environment_id), partition)
        log.info(
            "schedule_configured" if applied else "schedule_revision_ignored",
            environment_id=str(command.environment_id),
            revision=command.revision,
        )
        if after_configure is not None:
            await after_configure(command.environment_id, now())

    return {ConfigureSchedule: on_configure_schedule}


def register_handlers(
    broker: KafkaBroker,
    app: SchedulerApplication,
    ownership: Ownership,
    on_saved: Callable[[], None],
    *,
    service: str,
    now: Callable[[], datetime],
    after_configure: AfterConfigure | None = None,
) -> None:
    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    subscribe_tracked(
        broker,
        SCHEDULE_COMMANDS,
        CONSUMER_GROUP,
        make_handlers(app, ownership, on_saved, now=now, after_configure=after_configure),
        service=service,
        positions=positions,
        on_assigned=ownership.assigned,
        on_revoked=ownership.revoked,
    )
