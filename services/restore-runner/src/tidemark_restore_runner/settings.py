"""The restore-runner's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

from tidemark_contracts.services import RESTORE_RUNNER
from tidemark_platform.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config(RESTORE_RUNNER)

    http_port: int = RESTORE_RUNNER.default_port
