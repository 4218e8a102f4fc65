"""Wiring of the restore-runner, which will own the Restore aggregate (later issues).

Until its issues land it runs the shared service runtime only: it connects to Kafka and
PostgreSQL, reports in with heartbeats (the gateway's readiness waits for it) and serves
/health, /ready and /metrics.
"""

from __future__ import annotations

from tidemark_contracts.services import RESTORE_RUNNER
from tidemark_platform.runtime import bare_service_app, run_service

from tidemark_restore_runner.settings import Settings

SERVICE = RESTORE_RUNNER.name


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: bare_service_app(SERVICE, settings))


if __name__ == "__main__":
    main()
