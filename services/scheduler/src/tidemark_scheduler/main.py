"""Wiring of the scheduler, which will own the Schedule aggregate (later issues).

Until its issues land it runs the shared service runtime (heartbeats, /health, /ready,
/metrics) and keeps its own view of the catalog (schema ``scheduler``), which firing
backups will read: environments and destinations, never the gateway's tables.
"""

from __future__ import annotations

from litestar import Litestar
from tidemark_contracts.services import SCHEDULER
from tidemark_platform.kafka import make_broker
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service

from tidemark_scheduler.settings import Settings

SERVICE = SCHEDULER.name
SCHEMA = "scheduler"


def create_app(settings: Settings) -> Litestar:
    runtime = ServiceRuntime(
        SERVICE, settings, make_broker(settings.kafka_bootstrap_servers, SERVICE)
    )
    runtime.follow_catalog(SCHEMA)
    return build_service_app(runtime)


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
