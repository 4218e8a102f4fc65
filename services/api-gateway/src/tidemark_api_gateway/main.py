"""Wiring of the gateway: database, catalog store, relays, projections, auth, API, OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from litestar import Litestar, Request, Router
from litestar.di import Provide
from litestar.plugins.pydantic import PydanticPlugin
from tidemark_contracts.topics import RESTORE_PROGRESS
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service
from tidemark_platform.vault import SecretVault
from tidemark_platform.webhook_policy import WebhookPolicySettings

from tidemark_api_gateway.alerts import Alerts
from tidemark_api_gateway.alerts_view import AlertsView
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication, Gateway
from tidemark_api_gateway.auth import Principal, auth_middleware, scope_guard
from tidemark_api_gateway.controllers import CONTROLLERS
from tidemark_api_gateway.heartbeats import ServiceRegistry, subscribe_heartbeats
from tidemark_api_gateway.openapi import openapi_config
from tidemark_api_gateway.outbox import OutboxSource
from tidemark_api_gateway.problems import EXCEPTION_HANDLERS
from tidemark_api_gateway.progress import ProgressHub, RestoreProgressHub, progress_tail
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_api_gateway.requests import (
    allow_every_method,
    answer_and_log,
    request_context_middleware,
)
from tidemark_api_gateway.restores import Restores
from tidemark_api_gateway.restores_view import RestoresView
from tidemark_api_gateway.schedules import SchedulesView
from tidemark_api_gateway.settings import GatewaySettings
from tidemark_api_gateway.webhooks_view import WebhooksView

SERVICE = "api-gateway"
PROJECTION_GROUP = "gateway-projection"
CATALOG_GROUP = "gateway-catalog"
SCHEDULES_GROUP = "gateway-schedules"
RESTORES_GROUP = "gateway-restores"
ALERTS_GROUP = "gateway-alerts"
WEBHOOKS_GROUP = "gateway-webhooks"
CATALOG_RELAY = "gateway-catalog"


def provide_principal(request: Request[Principal, Any, Any]) -> Principal:
    return request.user


def api_router(dependencies: Mapping[str, Provide]) -> Router:
    """``/api/v1``: every controller, behind the scope guard, with what they depend on."""
    return Router(
        path="/api/v1",
        route_handlers=CONTROLLERS,
        guards=[scope_guard],
        dependencies={
            **dependencies,
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        security=[{"bearer": []}],
    )


def api_options() -> dict[str, Any]:
    """The app options the API's behaviour and its OpenAPI document depend on."""
    return {
        "exception_handlers": EXCEPTION_HANDLERS,
        "before_send": [answer_and_log, allow_every_method],
        "plugins": [PydanticPlugin(prefer_alias=True)],
        "openapi_config": openapi_config(),
    }


def documentation_app() -> Litestar:
    """The API without its runtime (no database, no Kafka): to read its OpenAPI document."""

    def unavailable(name: str) -> Provide:
        def provide() -> None:
            raise RuntimeError(f"the documentation app has no {name}")

        return Provide(provide, sync_to_thread=False)

    api = api_router(
        {
            "pool": unavailable("pool"),
            "gateway": unavailable("gateway"),
            "progress": unavailable("progress"),
            "restores": unavailable("restores"),
            "restore_progress": unavailable("restore_progress"),
            "alerts": unavailable("alerts"),
        }
    )
    return Litestar(route_handlers=[api], **api_options())


def create_app(settings: GatewaySettings) -> Litestar:
    pool = connection_pool(settings.database_url)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)
    catalog = CatalogApplication.on_postgres(settings.database_url, CATALOG_SCHEMA)
    catalog_view = ProjectionRunner(pool, SCHEMA, CatalogView())
    backups_view = ProjectionRunner(pool, SCHEMA, BackupsView())
    schedules_view = ProjectionRunner(pool, SCHEMA, SchedulesView())
    restores_view = ProjectionRunner(pool, SCHEMA, RestoresView())
    alerts_view = ProjectionRunner(pool, SCHEMA, AlertsView())
    webhooks_view = ProjectionRunner(pool, SCHEMA, WebhooksView())

    outbox = OutboxSource(pool, settings.database_url)
    catalog_leadership = Leadership(
        settings.database_url, NotificationLogSource.log_name(catalog, CATALOG_RELAY)
    )
    relays = [
        runtime.add_relay(outbox),
        runtime.add_relay(
            NotificationLogSource(catalog, catalog.to_envelope, CATALOG_RELAY, catalog_leadership)
        ),
    ]

    def wake_relays() -> None:
        for relay in relays:
            relay.wake()

    vault = SecretVault(settings.database_url, settings.keyring())
    runtime.on_shutdown(vault.close)
    gateway = Gateway(
        catalog,
        catalog_view,
        backups_view,
        wake_relays,
        vault,
        schedules_view=schedules_view,
        allow_operator_refs=settings.allow_operator_secret_refs,
        destination_root=settings.destination_root,
        webhooks_view=webhooks_view,
        webhook_policy=WebhookPolicySettings().policy(),
    )
    alerts = Alerts(alerts_view, wake_relays)

    registry = ServiceRegistry(settings.expected_services, settings.heartbeat_timeout_seconds)
    backups_view.subscribe(broker, PROJECTION_GROUP, service=SERVICE)
    catalog_view.subscribe(broker, CATALOG_GROUP, service=SERVICE)
    schedules_view.subscribe(broker, SCHEDULES_GROUP, service=SERVICE)
    restores_view.subscribe(broker, RESTORES_GROUP, service=SERVICE)
    alerts_view.subscribe(broker, ALERTS_GROUP, service=SERVICE)
    webhooks_view.subscribe(broker, WEBHOOKS_GROUP, service=SERVICE)
    restores = Restores(gateway, restores_view, pool)
    subscribe_heartbeats(broker, registry)
    runtime.add_check("services", registry.all_reported)
    # One groupless tail of backup.progress per instance, fanned out to its SSE streams.
    progress = ProgressHub(
        progress_tail(settings.kafka_bootstrap_servers, f"{SERVICE}-{runtime.instance_id}"),
        queue_size=settings.sse_client_queue,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        state_poll_seconds=settings.sse_state_poll_seconds,
        terminal_wait_seconds=settings.sse_terminal_wait_seconds,
        max_catchup_offsets=settings.sse_max_catchup_offsets,
    )
    runtime.add_background(progress.run, needs_kafka=True)
    runtime.add_check("progress", progress.is_ready)
    # The same for restore.progress (restores' streams).
    restore_progress = RestoreProgressHub(
        progress_tail(
            settings.kafka_bootstrap_servers,
            f"{SERVICE}-restores-{runtime.instance_id}",
            RESTORE_PROGRESS.name,
        ),
        queue_size=settings.sse_client_queue,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        state_poll_seconds=settings.sse_state_poll_seconds,
        terminal_wait_seconds=settings.sse_terminal_wait_seconds,
        max_catchup_offsets=settings.sse_max_catchup_offsets,
    )
    runtime.add_background(restore_progress.run, needs_kafka=True)
    runtime.add_check("restore-progress", restore_progress.is_ready)
    runtime.on_shutdown(outbox.close)
    runtime.on_shutdown(pool.close)
    runtime.on_shutdown(catalog_leadership.close)
    runtime.on_shutdown(catalog.close)

    async def open_pool() -> None:
        await asyncio.to_thread(vault.open)
        await pool.open(wait=True, timeout=30)
        async with pool.connection() as conn:
            await migrate(
                conn,
                catalog_view,
                backups_view,
                schedules_view,
                restores_view,
                alerts_view,
                webhooks_view,
            )

    api = api_router(
        {
            "pool": Provide(lambda: pool, sync_to_thread=False),
            "gateway": Provide(lambda: gateway, sync_to_thread=False),
            "progress": Provide(lambda: progress, sync_to_thread=False),
            "restores": Provide(lambda: restores, sync_to_thread=False),
            "restore_progress": Provide(lambda: restore_progress, sync_to_thread=False),
            "alerts": Provide(lambda: alerts, sync_to_thread=False),
        }
    )
    return build_service_app(
        runtime,
        [api],
        on_startup=[open_pool],
        middleware=[request_context_middleware, auth_middleware(settings)],
        **api_options(),
    )


def main() -> None:
    settings = GatewaySettings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
