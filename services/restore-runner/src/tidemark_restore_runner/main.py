"""Wiring of the restore-runner: settings, event store, views, Kafka, executor, HTTP."""

from __future__ import annotations

from uuid import UUID

from litestar import Litestar
from tidemark_backup_runner.domain import WorkPolicy
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_contracts import Envelope
from tidemark_contracts.restore import RestoreProgress
from tidemark_contracts.services import RESTORE_RUNNER
from tidemark_contracts.topics import RESTORE_PROGRESS
from tidemark_platform.database import connection_pool
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service
from tidemark_platform.vault import SecretVault

from tidemark_restore_runner.application import RestoreRunnerApplication
from tidemark_restore_runner.executor import RestoreExecutor
from tidemark_restore_runner.handlers import register_handlers
from tidemark_restore_runner.settings import Settings
from tidemark_restore_runner.view import BackupEventsView, BackupsReader
from tidemark_restore_runner.work import WorkTable

SERVICE = RESTORE_RUNNER.name
SCHEMA = "restore_runner"
RELAY_NAME = "kafka"
VIEW_GROUP = "restore-runner-backups"


def create_app(settings: Settings) -> Litestar:
    app = RestoreRunnerApplication.on_postgres(settings.database_url, SCHEMA)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)

    leadership = Leadership(settings.database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))
    runtime.on_shutdown(leadership.close)

    pool = connection_pool(settings.database_url, min_size=1, max_size=4)
    view = ProjectionRunner(pool, SCHEMA, BackupEventsView())
    view.subscribe(broker, VIEW_GROUP, service=SERVICE)

    async def publish_progress(
        tick: RestoreProgress, organization_id: UUID, correlation_id: UUID | None
    ) -> None:
        envelope = Envelope.wrap(
            tick,
            producer=SERVICE,
            organization_id=organization_id,
            environment_id=tick.environment_id,
            correlation_id=correlation_id,
        )
        await broker.publish(envelope.to_bytes(), RESTORE_PROGRESS.name, key=envelope.key)

    work = WorkTable(settings.database_url, SCHEMA)
    vault = SecretVault(settings.database_url, settings.keyring())
    executor = RestoreExecutor(
        app,
        work,
        BackupsReader(pool, SCHEMA),
        publish_progress,
        relay.wake,
        owner=runtime.instance_id,
        scratch_dir=settings.scratch_dir,
        pg_restore=find_tool("pg_restore", settings.pg_bin_dir),
        policy=WorkPolicy(
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            renew_fraction=settings.lease_renew_fraction,
        ),
        poll_seconds=settings.work_poll_seconds,
        max_concurrent=settings.max_concurrent_restores,
        safety_backup_timeout=settings.safety_backup_timeout_seconds,
        wal_view_timeout=settings.wal_view_timeout_seconds,
        progress_interval=settings.progress_interval_seconds,
        credential_policy=CredentialPolicy(
            settings.credential_env_prefix,
            settings.credential_file_root,
            settings.allow_operator_secret_refs,
        ),
        vault=vault,
        destination_root=settings.destination_root,
        files_root=settings.files_root,
        replay_segment_delay=settings.replay_segment_delay_seconds,
    )
    register_handlers(broker, app, executor, relay.wake, service=SERVICE)
    runtime.add_background(executor.run)

    async def open_view() -> None:
        await pool.open(wait=True, timeout=30)
        async with pool.connection() as conn:
            await view.migrate(conn)

    runtime.on_shutdown(app.close)
    runtime.on_shutdown(work.close)
    runtime.on_shutdown(vault.close)
    runtime.on_shutdown(pool.close)
    return build_service_app(runtime, on_startup=[open_view, work.open, vault.open])


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
