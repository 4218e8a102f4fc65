"""Wiring of the scheduler: its event store (the Schedule aggregates, relayed to Kafka),
its catalog view (schema ``scheduler``: environments and destinations, never the
gateway's tables), the ConfigureSchedule consumer, the timer and partition ownership."""

from __future__ import annotations

from datetime import timedelta

from litestar import Litestar
from tidemark_contracts.services import SCHEDULER
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service

from tidemark_scheduler.application import open_store
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
        firing, clock, workers=settings.fire_workers, retry_seconds=settings.retry_seconds
    )
    ownership = Ownership(app, timer)
    register_handlers(broker, app, ownership, relay.wake, service=SERVICE, now=clock.now)
    runtime.add_background(timer.run)
    runtime.add_check("schedules", ownership.is_ready)
    runtime.on_shutdown(ownership.close)
    runtime.on_shutdown(app.close)
    return build_service_app(runtime)


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
