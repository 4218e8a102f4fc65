"""Wiring of the scheduler: its event store (the Schedule aggregates, relayed to Kafka),
its catalog view (schema ``scheduler``: environments and destinations, never the
gateway's tables), the ConfigureSchedule consumer, the timer and partition ownership."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from litestar import Litestar
from tidemark_contracts.services import SCHEDULER
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service

from tidemark_scheduler.application import open_store
from tidemark_scheduler.backups_view import BackupsFollower
from tidemark_scheduler.enforcement import RetentionEnforcer
from tidemark_scheduler.firing import CatalogTargets, Firing
from tidemark_scheduler.handlers import register_handlers
from tidemark_scheduler.ownership import Ownership
from tidemark_scheduler.settings import Settings
from tidemark_scheduler.timer import SystemClock, Timer

SERVICE = SCHEDULER.name
SCHEMA = "scheduler"
# The event store lives in a schema of its own: its tables (scheduler_events, ...) cannot
# collide with the catalog view's in ``scheduler``.
EVENTSTORE_SCHEMA = "scheduler_store"
RELAY_NAME = "kafka"
# The consumer group that keeps the scheduler's view of backups (retention reads it).
BACKUPS_GROUP = f"{SERVICE}-backups"


def create_app(settings: Settings) -> Litestar:
    app = open_store(settings.database_url, EVENTSTORE_SCHEMA)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)

    leadership = Leadership(settings.database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))
    runtime.on_shutdown(leadership.close)

    catalog = runtime.follow_catalog(SCHEMA)
    clock = SystemClock(settings.timer_max_sleep_seconds)
    firing = Firing(
        app,
        CatalogTargets(catalog.pool, catalog.schema),
        clock,
        grace=timedelta(seconds=settings.grace_seconds),
        retry=timedelta(seconds=settings.retry_seconds),
        on_saved=relay.wake,
    )
    timer = Timer(
        firing.fire_many,
        clock,
        workers=settings.fire_workers,
        retry_seconds=settings.retry_seconds,
        batch=settings.fire_batch,
        give_up=firing.give_up,
    )
    ownership = Ownership(app, timer)

    # Retention: enforced after a scheduled backup's completion reaches the view, and after
    # each ConfigureSchedule.
    backups = BackupsFollower(settings.database_url, SCHEMA)
    enforcer = RetentionEnforcer(app, backups.query, on_saved=relay.wake)

    async def after_completion(environment_id: UUID) -> None:
        await enforcer.enforce(environment_id, clock.now())

    async def after_configure(environment_id: UUID, now: datetime) -> None:
        await enforcer.enforce(environment_id, now)

    backups.on_scheduled_completed = after_completion
    backups.subscribe(broker, BACKUPS_GROUP, service=SERVICE)
    runtime.on_shutdown(backups.close)

    register_handlers(
        broker,
        app,
        ownership,
        relay.wake,
        service=SERVICE,
        now=clock.now,
        after_configure=after_configure,
    )
    runtime.add_background(timer.run)
    runtime.add_check("schedules", ownership.is_ready)
    runtime.on_shutdown(ownership.close)
    runtime.on_shutdown(app.close)
    # The view's tables exist before its consumer starts (the runtime's start-up follows).
    return build_service_app(runtime, on_startup=[backups.open])


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
