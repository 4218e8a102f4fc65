"""Wiring of the gateway: database, outbox relay, projection, auth, API and OpenAPI."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.pydantic import PydanticPlugin
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from tidemark_contracts import BACKUP_EVENTS
from tidemark_platform.consumer import subscribe_tracked
from tidemark_platform.kafka import make_broker
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service

from tidemark_api_gateway.api import (
    BackupController,
    DestinationController,
    EnvironmentController,
    ProjectController,
)
from tidemark_api_gateway.auth import auth_middleware, scope_guard
from tidemark_api_gateway.heartbeats import ServiceRegistry, subscribe_heartbeats
from tidemark_api_gateway.outbox import OutboxSource
from tidemark_api_gateway.problems import EXCEPTION_HANDLERS
from tidemark_api_gateway.projection import BackupProjection
from tidemark_api_gateway.readmodel import Pool, migrate
from tidemark_api_gateway.settings import GatewaySettings

SERVICE = "api-gateway"
PROJECTION_GROUP = "gateway-projection"


def create_app(settings: GatewaySettings) -> Litestar:
    pool: Pool = AsyncConnectionPool(
        settings.database_url,
        open=False,
        min_size=2,
        max_size=20,
        kwargs={"row_factory": dict_row, "autocommit": True},
        connection_class=AsyncConnection,
    )
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)
    outbox = OutboxSource(pool, settings.database_url)

    relay = runtime.add_relay(outbox)
    registry = ServiceRegistry(settings.expected_services, settings.heartbeat_timeout_seconds)
    projection = BackupProjection(pool)
    subscribe_tracked(
        broker,
        BACKUP_EVENTS,
        PROJECTION_GROUP,
        dict.fromkeys(BACKUP_EVENTS.messages, projection.handle),
        service=SERVICE,
    )
    subscribe_heartbeats(broker, registry)
    runtime.add_check("services", registry.all_reported)
    runtime.on_shutdown(outbox.close)
    runtime.on_shutdown(pool.close)

    async def open_pool() -> None:
        await pool.open(wait=True, timeout=30)
        async with pool.connection() as conn:
            await migrate(conn)

    async def provide_pool() -> Pool:
        return pool

    api = Router(
        path="/api/v1",
        route_handlers=[
            ProjectController,
            EnvironmentController,
            DestinationController,
            BackupController,
        ],
        guards=[scope_guard],
        dependencies={"pool": Provide(provide_pool)},
        security=[{"bearer": []}],
    )
    return build_service_app(
        runtime,
        [api],
        on_startup=[open_pool],
        middleware=[auth_middleware(settings)],
        exception_handlers=EXCEPTION_HANDLERS,
        plugins=[PydanticPlugin(prefer_alias=True)],
        state=State({"relay": relay, "registry": registry}),
        openapi_config=OpenAPIConfig(
            title="Tidemark API",
            version="1.0.0",
            description="The backup control plane's HTTP API (see API.md).",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
                }
            ),
        ),
    )


def main() -> None:
    settings = GatewaySettings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
