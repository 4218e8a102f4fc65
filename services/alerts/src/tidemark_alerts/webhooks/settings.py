"""The webhook deliverer's settings: a mixin the alerts service's ``Settings`` inherits, so
its ``TIDEMARK_ALERTS_`` prefix applies to the fields below (see the README, Webhooks).

The operator's SSRF exceptions (``TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS``,
``TIDEMARK_WEBHOOK_ALLOWED_NETWORKS``) and the credential settings
(``TIDEMARK_SECRETS_KEYS``, ``TIDEMARK_ALLOW_OPERATOR_SECRET_REFS``) are read without a
prefix: the gateway, the runners and the alerts service must agree on them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from tidemark_platform.credentials import CredentialPolicy
from tidemark_platform.settings import SecretSettings
from tidemark_platform.webhook_policy import WebhookPolicySettings


class WebhookSettings(WebhookPolicySettings, SecretSettings):
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Total time one POST may take, connect to last byte."
    )
    webhook_retry_base_seconds: float = Field(
        default=2.0, gt=0, description="Delay before the second attempt; doubles after each."
    )
    webhook_retry_max_delay_seconds: float = Field(
        default=300.0, gt=0, description="Longest delay between two attempts."
    )
    webhook_retry_for_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A delivery is given up (failed) when its next attempt would come "
        "later than this after the alert change.",
    )
    webhook_max_in_flight: int = Field(
        default=32, ge=1, description="POSTs one instance has open at once."
    )
    webhook_max_in_flight_per_webhook: int = Field(
        default=2,
        ge=1,
        description="POSTs one instance has open to one webhook at once (a receiver that "
        "hangs holds at most these slots).",
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often an idle deliverer looks for due deliveries."
    )
    webhook_claim_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long a claimed delivery stays with its deliverer before another "
        "instance may take it (unset: the timeout plus 30 s; keep it above the timeout).",
    )

    @model_validator(mode="after")
    def _claim_outlasts_the_timeout(self) -> WebhookSettings:
        # A claim that ends while its POST may still be running lets another instance
        # send the same change again, at the same time.
        claim = self.webhook_claim_seconds
        if claim is not None and claim <= self.webhook_timeout_seconds:
            raise ValueError("webhook_claim_seconds must be longer than webhook_timeout_seconds")
        return self

    credential_env_prefix: str = Field(
        default="TIDEMARK_SECRET_",
        min_length=1,
        description="env: signing-secret references must name a variable with this prefix.",
    )
    credential_file_root: Path | None = Field(
        default=None,
        description="file: signing-secret references must lie under <root>/<organization>/.",
    )

    def credential_policy(self) -> CredentialPolicy:
        return CredentialPolicy(
            self.credential_env_prefix, self.credential_file_root, self.allow_operator_secret_refs
        )

    def claim_seconds(self) -> float:
        """How long a claimed delivery stays with its deliverer: longer than any attempt,
        so only a dead deliverer's claims expire."""
        if self.webhook_claim_seconds is not None:
            return self.webhook_claim_seconds
        return self.webhook_timeout_seconds + 30.0
