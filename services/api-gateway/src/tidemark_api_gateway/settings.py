"""Gateway settings (prefix ``TIDEMARK_API_GATEWAY_``), documented in the README."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from tidemark_contracts.services import API_GATEWAY, SERVICES
from tidemark_platform.settings import SecretSettings, ServiceSettings, settings_config


class GatewaySettings(ServiceSettings, SecretSettings):
    model_config = settings_config(API_GATEWAY)

    http_port: int = API_GATEWAY.default_port
    jwt_secret: str | None = Field(default=None, description="HS256 secret")
    jwt_public_key_file: str | None = Field(default=None, description="PEM for RS256/ES256")
    jwt_jwks_url: str | None = None
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Readiness waits for a heartbeat from every other service.
    expected_services: list[str] = Field(
        default_factory=lambda: [s.name for s in SERVICES if s is not API_GATEWAY]
    )
    heartbeat_timeout_seconds: float = 20.0
    destination_root: Path | None = Field(
        default=None,
        description=(
            "the backup-runners' root of local destinations, when the gateway sees the same "
            "filesystem: registration then refuses a path through a symbolic link"
        ),
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> GatewaySettings:
        if not (self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_url):
            raise ValueError(
                "set TIDEMARK_API_GATEWAY_JWT_SECRET (HS256), "
                "TIDEMARK_API_GATEWAY_JWT_PUBLIC_KEY_FILE or TIDEMARK_API_GATEWAY_JWT_JWKS_URL"
            )
        if self.jwt_secret and any(not a.startswith("HS") for a in self.jwt_algorithms):
            raise ValueError("an HMAC secret can only verify HS* algorithms")
        return self
