"""The restore-runner's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from tidemark_contracts.services import RESTORE_RUNNER
from tidemark_platform.settings import SecretSettings, ServiceSettings, settings_config


class Settings(ServiceSettings, SecretSettings):
    model_config = settings_config(RESTORE_RUNNER)

    http_port: int = RESTORE_RUNNER.default_port
    max_concurrent_restores: int = Field(default=2, ge=1)
    safety_backup_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="how long a restore waits for the safety backup of its target",
    )
    wal_view_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="how long a point-in-time restore waits for the runner's view of the "
        "WAL archive to hold the planned segments before it touches the target",
    )
    lease_seconds: float = Field(default=30.0, gt=0)
    lease_renew_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    max_attempts: int = Field(default=3, ge=1)
    work_poll_seconds: float = Field(default=2.0, gt=0)
    progress_interval_seconds: float = Field(default=0.5, ge=0.1)
    # Downloaded artifacts (and a full restore's work) live here while a restore runs.
    scratch_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "tidemark-restores"
    )
    pg_bin_dir: str | None = None
    replay_segment_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="a pause before each archived WAL segment is handed to a replaying "
        "server: throttles a point-in-time restore's I/O on a busy host (the end-to-end "
        "tests use it to catch a replay in the act)",
    )
    credential_env_prefix: str = Field(default="TIDEMARK_SECRET_", min_length=1)
    credential_file_root: Path | None = None
    # Local destinations under <root>/<organization id>/<path> (as the backup-runner's).
    destination_root: Path | None = None
    # Environments' files directories under <root>/<organization id>/<filesPath>.
    files_root: Path | None = None
