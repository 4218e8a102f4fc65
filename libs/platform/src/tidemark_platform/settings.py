"""Settings shared by every service, read from the environment (pydantic-settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from tidemark_contracts.services import ServiceDescription

from tidemark_platform.vault import KeyRing


class ServiceSettings(BaseSettings):
    """What every service needs. A service's subclass is built from its description::

        class Settings(ServiceSettings):
            model_config = settings_config(SCHEDULER)
            http_port: int = SCHEDULER.default_port

    ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` are shared by all services and read
    without a prefix; everything else is read with the service's prefix (for example
    ``TIDEMARK_BACKUP_RUNNER_HTTP_PORT``) so services on one host never collide.
    """

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "TIDEMARK_DATABASE_URL"),
        description="PostgreSQL URL; each service keeps its tables in its own schema.",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "TIDEMARK_KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    kafka_replication_factor: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices(
            "KAFKA_REPLICATION_FACTOR", "TIDEMARK_KAFKA_REPLICATION_FACTOR"
        ),
        description="Replicas of the topics this service creates (3 on a real cluster).",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0)


def settings_config(service: ServiceDescription) -> SettingsConfigDict:
    """A service's settings configuration: its variables carry its prefix. A refused value
    is not repeated in the error (it may be a secret: a JWT secret, the sealing keys)."""
    return SettingsConfigDict(
        env_prefix=service.settings_prefix, extra="ignore", hide_input_in_errors=True
    )


class SecretSettings(BaseSettings):
    """Settings of a service that stores or resolves credentials (read without a prefix:
    the gateway and the runners must agree on them)."""

    secrets_keys: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TIDEMARK_SECRETS_KEYS"),
        description=(
            "Keys that seal stored secrets: id:base64key[,id:base64key...] (32-byte keys; "
            "the first seals, all open). Without it, stored secrets are refused."
        ),
    )
    allow_operator_secret_refs: bool = Field(
        default=False,
        validation_alias=AliasChoices("TIDEMARK_ALLOW_OPERATOR_SECRET_REFS"),
        description="Accept env:NAME and file:/path credential references (off: any "
        "organization could name them).",
    )

    def keyring(self) -> KeyRing:
        """The keys that seal stored secrets. A service that stores or opens them does not
        start without: a runner lacking them would fail backups another runner could take."""
        if self.secrets_keys is None or not self.secrets_keys.get_secret_value().strip():
            raise SystemExit(
                "TIDEMARK_SECRETS_KEYS is not set: stored credentials are sealed and opened "
                "with it, the same keys on every gateway and runner "
                "(python -m tidemark_platform.vault generate-key k1 makes one)"
            )
        return KeyRing.parse(self.secrets_keys.get_secret_value())
