"""Wiring of the backup-runner: settings, event store, Kafka, executor, HTTP."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from litestar import Litestar
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from tidemark_contracts import BACKUP_PROGRESS, Envelope
from tidemark_contracts.backup import BackupProgress
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service
from tidemark_platform.settings import ServiceSettings

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import WorkPolicy
from tidemark_backup_runner.executor import DEFAULT_POLL_SECONDS, BackupExecutor
from tidemark_backup_runner.handlers import register_handlers
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.work import WorkTable

SERVICE = "backup-runner"
SCHEMA = "backup_runner"
RELAY_NAME = "kafka"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TIDEMARK_BACKUP_RUNNER_", extra="ignore")

    http_port: int = 8102
    max_concurrent_backups: int = 2
    zstd_level: int = Field(default=3, ge=1, le=22)
    zstd_threads: int = Field(default=1, ge=0)
    progress_interval_seconds: float = 1.0
    pg_bin_dir: str | None = None
    lock_wait_timeout_seconds: int = Field(default=300, ge=1)
    stall_timeout_seconds: float = Field(default=900.0, gt=0)
    credential_env_prefix: str = Field(default="TIDEMARK_SECRET_", min_length=1)
    credential_file_root: Path | None = None
    lease_seconds: float = Field(default=30.0, gt=0)
    lease_renew_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    max_attempts: int = Field(default=3, ge=1)
    work_poll_seconds: float = Field(default=DEFAULT_POLL_SECONDS, gt=0)


def create_app(settings: Settings) -> Litestar:
    app = BackupRunnerApplication.on_postgres(settings.database_url, SCHEMA)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)

    leadership = Leadership(settings.database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))
    runtime.on_shutdown(leadership.close)

    async def publish_progress(tick: BackupProgress, organization_id: UUID) -> None:
        envelope = Envelope.wrap(
            tick,
            producer=SERVICE,
            organization_id=organization_id,
            environment_id=tick.environment_id,
        )
        await broker.publish(envelope.to_bytes(), BACKUP_PROGRESS.name, key=envelope.key)

    work = WorkTable(settings.database_url, SCHEMA)
    executor = BackupExecutor(
        app,
        work,
        publish_progress,
        relay.wake,
        owner=runtime.instance_id,
        pg_dump=find_tool("pg_dump", settings.pg_bin_dir),
        policy=WorkPolicy(
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            renew_fraction=settings.lease_renew_fraction,
        ),
        poll_seconds=settings.work_poll_seconds,
        max_concurrent=settings.max_concurrent_backups,
        zstd_level=settings.zstd_level,
        zstd_threads=settings.zstd_threads,
        progress_interval=settings.progress_interval_seconds,
        lock_wait_timeout_seconds=settings.lock_wait_timeout_seconds,
        stall_timeout_seconds=settings.stall_timeout_seconds,
        credential_policy=CredentialPolicy(
            settings.credential_env_prefix, settings.credential_file_root
        ),
    )
    register_handlers(broker, app, executor, relay.wake, service=SERVICE)
    runtime.add_background(executor.run)
    runtime.on_shutdown(app.close)
    runtime.on_shutdown(work.close)
    return build_service_app(runtime, on_startup=[work.open])


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
