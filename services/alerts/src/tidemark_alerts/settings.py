"""The alerts's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

from tidemark_contracts.services import ALERTS
from tidemark_platform.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config(ALERTS)

    http_port: int = ALERTS.default_port
