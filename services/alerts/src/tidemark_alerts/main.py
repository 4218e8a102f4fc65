"""Wiring of the alerts service: settings, event store, catalog view, Kafka, relay, HTTP."""

from __future__ import annotations

from litestar import Litestar
from tidemark_contracts.services import ALERTS
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service

from tidemark_alerts.application import AlertsApplication
from tidemark_alerts.handlers import register_handlers
from tidemark_alerts.places import Places
from tidemark_alerts.settings import Settings
from tidemark_alerts.webhooks import install_webhooks

SERVICE = ALERTS.name
SCHEMA = "alerts"
RELAY_NAME = "kafka"


def create_app(settings: Settings) -> Litestar:
    app = AlertsApplication.on_postgres(settings.database_url, SCHEMA)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)

    leadership = Leadership(settings.database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))
    runtime.on_shutdown(leadership.close)

    catalog = runtime.follow_catalog(SCHEMA)
    places = Places(catalog.pool, catalog.schema, wait_seconds=settings.catalog_wait_seconds)
    register_handlers(broker, app, places, relay.wake, service=SERVICE)

    # --- webhooks (tidemark_alerts.webhooks, the webhook part of issue 10) ---------------
    install_webhooks(runtime, settings, broker)
    # --------------------------------------------------------------------------------------

    runtime.on_shutdown(app.close)
    return build_service_app(runtime)


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
