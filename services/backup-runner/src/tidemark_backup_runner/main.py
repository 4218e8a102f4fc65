"""Wiring of the backup-runner: settings, event store, Kafka, executor, HTTP."""

from __future__ import annotations

from uuid import UUID

from litestar import Litestar
from tidemark_contracts import BACKUP_PROGRESS, Envelope
from tidemark_contracts.backup import BackupProgress
from tidemark_contracts.services import BACKUP_RUNNER
from tidemark_platform.database import connection_pool
from tidemark_platform.kafka import make_broker
from tidemark_platform.leadership import Leadership
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime, build_service_app, run_service
from tidemark_platform.vault import SecretVault

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.deletion import Deleter, DeletionPolicy, DeletionTable
from tidemark_backup_runner.domain import WorkPolicy
from tidemark_backup_runner.executor import BackupExecutor
from tidemark_backup_runner.handlers import register_handlers
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.registry import Registrations
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.settings import Settings
from tidemark_backup_runner.walsupervisor import WalArchiver, WalPolicy
from tidemark_backup_runner.walview import WalSchedulesView, WalTables
from tidemark_backup_runner.work import WorkTable

SERVICE = BACKUP_RUNNER.name
SCHEMA = "backup_runner"
RELAY_NAME = "kafka"
# The runner's own view of what organizations registered (see registry.py).
CATALOG_SCHEMA = "backup_runner_catalog"


def create_app(settings: Settings) -> Litestar:
    app = BackupRunnerApplication.on_postgres(settings.database_url, SCHEMA)
    broker = make_broker(settings.kafka_bootstrap_servers, SERVICE)
    runtime = ServiceRuntime(SERVICE, settings, broker)

    leadership = Leadership(settings.database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))
    runtime.on_shutdown(leadership.close)

    async def publish_progress(
        tick: BackupProgress, organization_id: UUID, correlation_id: UUID | None
    ) -> None:
        envelope = Envelope.wrap(
            tick,
            producer=SERVICE,
            organization_id=organization_id,
            environment_id=tick.environment_id,
            correlation_id=correlation_id,
        )
        await broker.publish(envelope.to_bytes(), BACKUP_PROGRESS.name, key=envelope.key)

    work = WorkTable(settings.database_url, SCHEMA)
    catalog = runtime.follow_catalog(CATALOG_SCHEMA)
    vault = SecretVault(settings.database_url, settings.keyring())
    registrations = Registrations(
        catalog.pool, catalog.schema, wait_seconds=settings.catalog_wait_seconds
    )
    credential_policy = CredentialPolicy(
        settings.credential_env_prefix,
        settings.credential_file_root,
        settings.allow_operator_secret_refs,
    )
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
        credential_policy=credential_policy,
        vault=vault,
        registrations=registrations,
        destination_root=settings.destination_root,
        # The runner's own pg_basebackup, never the environment's cluster.binDirectory (a
        # tenant's setting must not choose a binary the runner executes).
        pg_basebackup=find_tool("pg_basebackup", settings.pg_bin_dir),
        files_root=settings.files_root,
        basebackup_max_rate_kb=settings.basebackup_max_rate_kb,
        s3_part_size=settings.s3_part_size_bytes,
    )
    deletions = DeletionTable(settings.database_url, SCHEMA)
    deleter = Deleter(
        app,
        deletions,
        relay.wake,
        owner=runtime.instance_id,
        policy=DeletionPolicy(
            max_attempts=settings.cleanup_max_attempts,
            first_delay_seconds=settings.cleanup_first_delay_seconds,
            max_delay_seconds=max(
                settings.cleanup_max_delay_seconds, settings.cleanup_first_delay_seconds
            ),
            poll_seconds=settings.work_poll_seconds,
        ),
        destination_root=settings.destination_root,
        credential_policy=credential_policy,
        vault=vault,
        registrations=registrations,
    )
    register_handlers(broker, app, executor, relay.wake, service=SERVICE, deleter=deleter)
    # WAL archiving: the schedules' WAL settings kept beside the catalog view (joined with
    # it), receivers supervised by walsupervisor.py.
    wal_pool = connection_pool(settings.database_url, min_size=1, max_size=2)
    wal_schedules = ProjectionRunner(wal_pool, catalog.schema, WalSchedulesView())
    wal_schedules.subscribe(broker, f"{SERVICE}-wal-schedules", service=SERVICE)
    wal_tables = WalTables(settings.database_url, SCHEMA, catalog.schema)
    archiver = WalArchiver(
        app,
        wal_tables,
        relay.wake,
        owner=runtime.instance_id,
        policy=WalPolicy(
            lease_seconds=settings.wal_lease_seconds,
            stall_seconds=settings.wal_stall_seconds,
            switch_seconds=settings.wal_switch_seconds,
            poll_seconds=settings.wal_poll_seconds,
            check_seconds=settings.wal_check_seconds,
        ),
        spool_root=settings.state_dir / "wal",
        # The runner's own tools, never the environment's cluster.binDirectory (a tenant's
        # setting must not choose a binary the runner executes).
        pg_receivewal=find_tool("pg_receivewal", settings.pg_bin_dir),
        pg_waldump=find_tool("pg_waldump", settings.pg_bin_dir),
        credential_policy=credential_policy,
        vault=vault,
        destination_root=settings.destination_root,
        zstd_level=settings.zstd_level,
    )

    async def open_wal_view() -> None:
        await wal_pool.open(wait=True, timeout=30)
        async with wal_pool.connection() as conn:
            await wal_schedules.migrate(conn)

    runtime.on_shutdown(wal_pool.close)

    runtime.add_background(archiver.run)
    runtime.add_background(executor.run)
    runtime.add_background(deleter.run)
    runtime.on_shutdown(deletions.close)
    runtime.on_shutdown(app.close)
    runtime.on_shutdown(work.close)
    runtime.on_shutdown(vault.close)
    runtime.on_shutdown(wal_tables.close)
    return build_service_app(
        runtime,
        on_startup=[work.open, vault.open, deletions.open, wal_tables.open, open_wal_view],
    )


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # read from the environment
    run_service(SERVICE, settings, lambda: create_app(settings))


if __name__ == "__main__":
    main()
