"""The scheduler's settings, read from the environment with its prefix (see the README)."""

from __future__ import annotations

from pydantic import Field
from tidemark_contracts.services import SCHEDULER
from tidemark_platform.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config(SCHEDULER)

    http_port: int = SCHEDULER.default_port
    grace_seconds: float = Field(
        default=900.0,
        ge=0,
        description="how late a fire time may still fire (after downtime, or while the "
        "catalog view lags); older ones are recorded missed",
    )
    fire_workers: int = Field(default=4, ge=1, description="fires carried out at once")
    fire_batch: int = Field(
        default=100,
        ge=1,
        description="fires due together that one worker saves in one transaction",
    )
    retry_seconds: float = Field(
        default=15.0,
        gt=0,
        description="how soon a fire put off (catalog lag, store away) is tried again",
    )
    timer_max_sleep_seconds: float = Field(
        default=30.0,
        gt=0,
        description="longest the timer sleeps without looking at the clock (notices a "
        "wall-clock step within this time)",
    )
