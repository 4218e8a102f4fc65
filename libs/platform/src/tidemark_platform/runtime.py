"""The runtime every service shares: start-up, heartbeats, health, readiness and metrics.

Each service is a Litestar app (the gateway adds its API to the same app) whose start-up
connects to Kafka in the background, so a service starts, answers ``/health`` and keeps
its durable work while Kafka is away, and reports not-ready until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import uvicorn
from faststream.kafka import KafkaBroker
from litestar import Litestar, Response, get
from litestar.types import ControllerRouterHandler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tidemark_contracts import SERVICE_HEARTBEATS, Envelope, utc_now
from tidemark_contracts.service import ServiceHeartbeat

from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import can_reach, connection_pool
from tidemark_platform.kafka import (
    UnsafeTopicsError,
    make_broker,
    renew_producer,
    send_pipelined,
    start_when_reachable,
)
from tidemark_platform.logging import configure_logging, get_logger
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.relay import Outbound, Relay, RelaySource
from tidemark_platform.settings import ServiceSettings

log = get_logger(__name__)

Check = Callable[[], Awaitable[bool]]
# Exit status of a service that refused to run on unsafe topics (EX_CONFIG).
EXIT_UNSAFE_TOPICS = 78
_exit_status: list[int] = []
_servers: list[uvicorn.Server] = []


def _stop_serving(status: int) -> None:
    """Shut the server down and make the process exit with ``status`` (see run_service).

    Not by SIGTERM: uvicorn re-raises a signal it caught once it has shut down, so the
    process would die of the signal instead of exiting with ``status``.
    """
    _exit_status.append(status)
    for server in _servers:
        server.should_exit = True
    if not _servers:
        os.kill(os.getpid(), signal.SIGTERM)


SYSTEM_ORGANIZATION = uuid.UUID(int=0)


class ServiceRuntime:
    """Owns a service's broker connection, background tasks and readiness checks."""

    def __init__(self, name: str, settings: ServiceSettings, broker: KafkaBroker) -> None:
        self.name = name
        self.settings = settings
        self.broker = broker
        self.instance_id = uuid.uuid4()
        self.started_at = utc_now()
        self.kafka_connected = asyncio.Event()
        self.checks: dict[str, Check] = {
            "postgres": lambda: can_reach(settings.database_url),
            "kafka": self._kafka_ready,
        }
        self._background: list[tuple[Callable[[], Coroutine[Any, Any, None]], bool]] = []
        self._on_shutdown: list[Callable[[], Any]] = []
        self._prepare: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def add_background(
        self, run: Callable[[], Coroutine[Any, Any, None]], *, needs_kafka: bool = False
    ) -> None:
        """A coroutine that runs for the life of the service (relay, executor, ...).

        With ``needs_kafka`` it starts once the broker is connected (a relay has nothing
        to do before), otherwise at once (durable work goes on while Kafka is away).
        """
        self._background.append((run, needs_kafka))

    def add_relay(self, source: RelaySource) -> Relay:
        """Relay ``source`` to Kafka through this service's broker, once it is connected;
        the service is not ready while the relay cannot publish."""

        async def publish(entry: Outbound) -> object:
            assert entry.topic is not None
            # Handed to the producer without waiting for Kafka's answer: the relay awaits
            # the answers of a whole batch after sending it (see relay.py).
            headers = [(name, value.encode()) for name, value in entry.headers.items()]
            return await send_pipelined(self.broker, entry.topic, entry.key, entry.value, headers)

        async def renew() -> None:
            await renew_producer(self.broker)

        relay = Relay(source, publish, service=self.name, on_refused=renew)
        self.add_background(relay.run, needs_kafka=True)
        self.add_check(f"relay:{source.name}", relay.is_healthy)
        return relay

    def on_shutdown(self, close: Callable[[], Any]) -> None:
        self._on_shutdown.append(close)

    async def readiness(self) -> dict[str, bool]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._safe(self.checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    def follow_catalog(self, schema: str) -> ProjectionRunner:
        """Keep this service's own view of the catalog (projects, environments,
        destinations) in ``schema``, from ``catalog.events``; no service reads another's
        tables. The view's tables exist before the consumer starts."""
        pool = connection_pool(self.settings.database_url, min_size=1, max_size=4)
        view = ProjectionRunner(pool, schema, CatalogView())
        view.subscribe(self.broker, f"{self.name}-catalog", service=self.name)

        async def open_view() -> None:
            await pool.open(wait=True, timeout=30)
            async with pool.connection() as conn:
                await view.migrate(conn)

        self._prepare.append(open_view)
        self.on_shutdown(pool.close)
        return view

    async def startup(self) -> None:
        # What must exist before messages arrive (tables of views) comes first.
        for prepare in self._prepare:
            await prepare()
        self._tasks.append(asyncio.create_task(self._connect(), name="kafka-connect"))
        for run, needs_kafka in self._background:
            task = asyncio.create_task(self._supervise(run, needs_kafka), name=run.__name__)
            self._tasks.append(task)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        log.info("service_started", instance_id=str(self.instance_id))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.broker.stop()
        for close in self._on_shutdown:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        log.info("service_stopped")

    async def _connect(self) -> None:
        try:
            await start_when_reachable(
                self.broker,
                self.settings.kafka_bootstrap_servers,
                replication_factor=self.settings.kafka_replication_factor,
            )
        except UnsafeTopicsError as exc:
            # Running on would risk losing acknowledged messages: refuse, say why, and
            # exit non-zero (see run_service).
            log.error("kafka_topics_unsafe", problems=[str(p) for p in exc.problems])
            _stop_serving(EXIT_UNSAFE_TOPICS)
            raise
        except Exception:
            # Not an outage (those are retried) but a defect in the wiring: stop loudly
            # rather than run on, never ready.
            log.exception("kafka_start_failed")
            os.kill(os.getpid(), signal.SIGTERM)
            raise
        self.kafka_connected.set()

    async def _kafka_ready(self) -> bool:
        return self.kafka_connected.is_set() and await self.broker.ping(timeout=2.0)

    @staticmethod
    async def _safe(check: Check) -> bool:
        try:
            return await asyncio.wait_for(check(), timeout=5.0)
        except Exception:
            return False

    async def _supervise(
        self, run: Callable[[], Coroutine[Any, Any, None]], needs_kafka: bool
    ) -> None:
        if needs_kafka:
            await self.kafka_connected.wait()
        # A background loop that dies takes the service's readiness with it; restart it.
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background_task_crashed", task=run.__name__)
                await asyncio.sleep(1.0)

    async def _heartbeat(self) -> None:
        await self.kafka_connected.wait()
        while True:
            ready = all((await self.readiness()).values())
            beat = ServiceHeartbeat(
                service=self.name,
                instance_id=self.instance_id,
                started_at=self.started_at,
                at=utc_now(),
                ready=ready,
            )
            envelope = Envelope.wrap(
                beat,
                producer=self.name,
                organization_id=SYSTEM_ORGANIZATION,
                environment_id=None,
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.broker.publish(
                        envelope.to_bytes(), SERVICE_HEARTBEATS.name, key=self.name.encode()
                    ),
                    timeout=10.0,
                )
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)


def operational_routes(runtime: ServiceRuntime) -> list[ControllerRouterHandler]:
    """``/health``, ``/ready`` and ``/metrics``, unauthenticated by design."""

    @get("/health", include_in_schema=False, sync_to_thread=False)
    def health() -> dict[str, str]:
        # The instance id is how this process appears elsewhere (heartbeats, work owners).
        return {"status": "ok", "service": runtime.name, "instance": str(runtime.instance_id)}

    @get("/ready", include_in_schema=False)
    async def ready() -> Response[dict[str, Any]]:
        checks = await runtime.readiness()
        missing = sorted(name for name, ok in checks.items() if not ok)
        if not missing:
            return Response({"status": "ready", "service": runtime.name, "checks": checks})
        return Response(
            {
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"not ready: {', '.join(missing)}",
                "missing": missing,
                "checks": checks,
            },
            status_code=503,
            media_type="application/problem+json",
        )

    @get("/metrics", include_in_schema=False, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [health, ready, metrics]


def build_service_app(
    runtime: ServiceRuntime,
    route_handlers: Sequence[ControllerRouterHandler] = (),
    **litestar_options: Any,
) -> Litestar:
    return Litestar(
        route_handlers=[*operational_routes(runtime), *route_handlers],
        # The service's own start-up (pools, migrations) first; then the background work.
        on_startup=[*litestar_options.pop("on_startup", []), runtime.startup],
        on_shutdown=[*litestar_options.pop("on_shutdown", []), runtime.shutdown],
        logging_config=None,  # configure_logging owns logging; Litestar must not replace it
        **litestar_options,
    )


def serve(app: Litestar, settings: ServiceSettings) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )
    _servers.append(server)
    try:
        server.run()
    finally:
        _servers.remove(server)


def run_service(name: str, settings: ServiceSettings, app: Callable[[], Litestar]) -> None:
    """A service's ``main``: structured logs first, then the app under uvicorn."""
    configure_logging(name, settings.log_level, settings.log_format)
    serve(app(), settings)
    if _exit_status:
        sys.exit(_exit_status[0])


def bare_service_app(name: str, settings: ServiceSettings) -> Litestar:
    """A service that so far only reports in: health, readiness, metrics and heartbeats."""
    runtime = ServiceRuntime(name, settings, make_broker(settings.kafka_bootstrap_servers, name))
    return build_service_app(runtime)
