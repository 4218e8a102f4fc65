"""Wiring of the alerts service, which will own the Alert aggregate (later issues).

Until its issues land it runs the shared service runtime only: it connects to Kafka and
PostgreSQL, reports in with heartbeats (the gateway's readiness waits for it) and serves
/health, /ready and /metrics.
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from tidemark_platform.runtime import bare_service_app, run_service
from tidemark_platform.settings import ServiceSettings

SERVICE = "alerts"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TIDEMARK_ALERTS_", extra="ignore")

    http_port: int = 8104


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: bare_service_app(SERVICE, settings))


if __name__ == "__main__":
    main()
