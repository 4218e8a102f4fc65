"""Wiring of the alerts service, which will own the Alert aggregate (later issues).

Until its issues land it runs the shared service runtime only: it connects to Kafka and
PostgreSQL, reports in with heartbeats (the gateway's readiness waits for it) and serves
/health, /ready and /metrics.
"""

from __future__ import annotations

from tidemark_contracts.services import ALERTS
from tidemark_platform.runtime import bare_service_app, run_service

from tidemark_alerts.settings import Settings

SERVICE = ALERTS.name


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: bare_service_app(SERVICE, settings))


if __name__ == "__main__":
    main()
