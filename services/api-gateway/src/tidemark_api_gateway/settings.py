"""Gateway settings (prefix ``TIDEMARK_API_GATEWAY_``), documented in the README."""

from __future__ import annotations

from pathlib import Path

from jwt.algorithms import get_default_algorithms
from pydantic import Field, model_validator
from tidemark_contracts.services import API_GATEWAY, SERVICES
from tidemark_platform.settings import SecretSettings, ServiceSettings, settings_config

PREFIX = API_GATEWAY.settings_prefix


class GatewaySettings(ServiceSettings, SecretSettings):
    model_config = settings_config(API_GATEWAY)

    http_port: int = API_GATEWAY.default_port
    jwt_secret: str | None = Field(default=None, description="HS256 secret")
    jwt_public_key_file: str | None = Field(default=None, description="PEM for RS256/ES256")
    jwt_jwks_url: str | None = None
    jwt_jwks_timeout_seconds: float = Field(default=2.0, gt=0)
    # Keys are refetched when older than this, or when a token names an unknown kid,
    # but never more often than the minimum interval (a flood of random kids is one fetch).
    jwt_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    jwt_jwks_min_refresh_interval_seconds: float = Field(default=10.0, ge=0)
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Space separated; what a token without a ``scope`` claim may do (nothing by default).
    jwt_default_scopes: str = ""
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
    # Live progress streams (progress.py): a heartbeat comment whenever nothing else was
    # sent for this long; ticks a slow client may have waiting before its stream ends (it
    # resumes by Last-Event-ID); how often a followed backup's read-model row is read (a
    # terminal status without a terminal tick); how long a terminal tick waits for it.
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=15.0)
    sse_client_queue: int = Field(default=256, ge=1)
    sse_state_poll_seconds: float = Field(default=2.0, gt=0)
    sse_terminal_wait_seconds: float = Field(default=10.0, gt=0)
    # How far behind the tail (in offsets of its partition) a resuming client may be and
    # still get every tick it missed from a catch-up read; further behind, its stream
    # starts afresh with the current state (ids still increase).
    sse_max_catchup_offsets: int = Field(default=10_000, ge=0)

    @property
    def default_scopes(self) -> frozenset[str]:
        return frozenset(self.jwt_default_scopes.split())

    @model_validator(mode="after")
    def _one_key_source(self) -> GatewaySettings:
        if not (self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_url):
            raise ValueError(
                f"set {PREFIX}JWT_SECRET (HS256), "
                f"{PREFIX}JWT_PUBLIC_KEY_FILE or {PREFIX}JWT_JWKS_URL"
            )
        return self

    @model_validator(mode="after")
    def _algorithms_fit_the_key(self) -> GatewaySettings:
        algorithms = f"{PREFIX}JWT_ALGORITHMS"
        if not self.jwt_algorithms:
            raise ValueError(f"{algorithms} is empty: no token could be verified")
        if any(a.lower() == "none" for a in self.jwt_algorithms):
            raise ValueError(f"{algorithms} must not contain 'none' (unsigned tokens)")
        known = get_default_algorithms()
        unknown = sorted(a for a in self.jwt_algorithms if a not in known)
        if unknown:
            raise ValueError(f"{algorithms} names unknown algorithms: {', '.join(unknown)}")
        symmetric = sorted(a for a in self.jwt_algorithms if a.startswith("HS"))
        if self.jwt_secret and len(symmetric) != len(self.jwt_algorithms):
            raise ValueError(
                f"{PREFIX}JWT_SECRET is an HMAC secret: it can only verify HS* algorithms, "
                f"but {algorithms} lists others"
            )
        # A public key used as an HMAC secret lets anyone who has it (everyone) sign tokens.
        for name, value in (
            ("JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
            ("JWT_JWKS_URL", self.jwt_jwks_url),
        ):
            if value and symmetric:
                raise ValueError(
                    f"{PREFIX}{name} is set, so {algorithms} must list only asymmetric "
                    f"algorithms (RS*, ES*, PS*, EdDSA), not {', '.join(symmetric)}"
                )
        return self
