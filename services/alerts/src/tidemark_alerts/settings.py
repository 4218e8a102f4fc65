"""The alerts's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

from pydantic import Field
from tidemark_contracts.services import ALERTS
from tidemark_platform.settings import ServiceSettings, settings_config

from tidemark_alerts.webhooks.settings import WebhookSettings


class Settings(ServiceSettings, WebhookSettings):
    model_config = settings_config(ALERTS)

    http_port: int = ALERTS.default_port
    catalog_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description="how long an alert waits for its environment's registration to reach "
        "the service's catalog view (to name it) before it names the environment by id",
    )
