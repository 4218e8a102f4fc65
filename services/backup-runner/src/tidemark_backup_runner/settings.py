"""The backup-runner's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from tidemark_contracts.services import BACKUP_RUNNER
from tidemark_platform.settings import SecretSettings, ServiceSettings, settings_config

from tidemark_backup_runner.executor import DEFAULT_POLL_SECONDS
from tidemark_backup_runner.registry import DEFAULT_WAIT_SECONDS


class Settings(ServiceSettings, SecretSettings):
    model_config = settings_config(BACKUP_RUNNER)

    http_port: int = BACKUP_RUNNER.default_port
    max_concurrent_backups: int = 2
    zstd_level: int = Field(default=3, ge=1, le=22)
    zstd_threads: int = Field(default=1, ge=0)
    progress_interval_seconds: float = 1.0
    pg_bin_dir: str | None = None
    lock_wait_timeout_seconds: int = Field(default=300, ge=1)
    stall_timeout_seconds: float = Field(default=900.0, gt=0)
    credential_env_prefix: str = Field(default="TIDEMARK_SECRET_", min_length=1)
    credential_file_root: Path | None = None
    # Local destinations live under <root>/<organization id>/<path>; without a root they
    # are refused (a backup to one fails, saying so).
    destination_root: Path | None = None
    # Environments' files directories (full backups) live under
    # <root>/<organization id>/<filesPath>; without a root, a full backup of an environment
    # that has one fails, saying so.
    files_root: Path | None = None
    basebackup_max_rate_kb: int | None = Field(
        default=None,
        ge=32,
        le=1024 * 1024,
        description="pg_basebackup's --max-rate in kB/s (none: unlimited), to spare the "
        "environment's disks during full backups",
    )
    # First parts of multipart uploads to s3 destinations (S3's minimum is 5 MiB); the size
    # doubles every 1,000 parts, so 8 MiB carries artifacts up to ~7.8 TiB.
    s3_part_size_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    lease_seconds: float = Field(default=30.0, gt=0)
    lease_renew_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    max_attempts: int = Field(default=3, ge=1)
    catalog_wait_seconds: float = Field(
        default=DEFAULT_WAIT_SECONDS,
        gt=0,
        description="how long a backup waits for its environment's registration to reach "
        "this runner's catalog view before it fails",
    )
    work_poll_seconds: float = Field(default=DEFAULT_POLL_SECONDS, gt=0)
    # Deleting backups (deletion.py): how often removing an artifact is tried, and how far
    # apart (doubling from the first delay up to the max); then the backup stays
    # ``deleting`` with the error until its deletion is requested again.
    cleanup_max_attempts: int = Field(default=5, ge=1)
    cleanup_first_delay_seconds: float = Field(default=5.0, ge=0)
    cleanup_max_delay_seconds: float = Field(default=300.0, ge=0)
    # WAL archiving (walsupervisor.py): spools of the receivers this instance runs live
    # under <state_dir>/wal/<environment id>.
    state_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "tidemark-backup-runner"
    )
    wal_stall_seconds: float = Field(
        default=300.0,
        gt=0,
        description="no segment archived for this long while the database writes WAL: stalled",
    )
    wal_switch_seconds: float = Field(
        default=60.0,
        gt=0,
        description="force a segment switch when the open segment holds WAL this old",
    )
    wal_lease_seconds: float = Field(default=30.0, gt=0)
    wal_poll_seconds: float = Field(default=2.0, gt=0)
    wal_check_seconds: float = Field(default=5.0, gt=0)
