"""Credential references, resolved only where used: the rule lives in the platform
(``tidemark_platform.credentials``) since the alerts service resolves webhook signing
secrets by it too; re-exported here for the runners' modules."""

from __future__ import annotations

from tidemark_platform.credentials import (
    CredentialPolicy,
    SecretError,
    resolve_secret,
    resolver_for,
)

__all__ = ["CredentialPolicy", "SecretError", "resolve_secret", "resolver_for"]
