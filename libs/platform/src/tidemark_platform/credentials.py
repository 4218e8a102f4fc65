"""Credential references, resolved only where used (by the runners, for databases and
storage, and by the alerts service, for webhook signing secrets).

References come from tenants (an environment's ``passwordRef``), and the resolved value
is sent to a database host the tenant chose. ``secret:NAME`` is a secret the organization
stored (the vault opens only the owning organization's). ``env:NAME`` and ``file:/path``
are the operator's, off unless ``TIDEMARK_ALLOW_OPERATOR_SECRET_REFS`` is set (every
organization on a runner could name them), and even then limited to what the operator set
aside: environment variables with a configured prefix, and files under
``<file root>/<organization id>/`` — never the runner's own configuration
(``DATABASE_URL``) or another organization's files.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidemark_platform.vault import SecretVault, VaultError, secret_name


class SecretError(Exception):
    """A credential reference that cannot be resolved; the message never holds the secret."""


@dataclass(frozen=True)
class CredentialPolicy:
    env_prefix: str = "TIDEMARK_SECRET_"
    file_root: Path | None = None
    allow_operator_refs: bool = False


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_secret(
    ref: str | None,
    organization_id: uuid.UUID,
    policy: CredentialPolicy,
    vault: SecretVault | None = None,
) -> str | None:
    """The value ``ref`` names for ``organization_id``. Blocking (the vault is a database
    read): call it in a thread. Errors never repeat the reference, which may be hostile."""
    if ref is None or ref == "":
        return None
    kind, _, name = ref.partition(":")
    if kind == "secret":
        stored = secret_name(ref)
        if stored is None:
            raise SecretError("the credential reference is not a valid secret:NAME")
        if vault is None:
            raise SecretError("stored secrets are not available on this runner")
        try:
            return vault.reveal(organization_id, stored)
        except VaultError as exc:
            raise SecretError(f"the credential secret:{stored} cannot be used: {exc}") from None
    if kind in ("env", "file") and not policy.allow_operator_refs:
        raise SecretError(
            "env: and file: credential references are disabled "
            "(the operator enables them with TIDEMARK_ALLOW_OPERATOR_SECRET_REFS)"
        )
    if kind == "env" and _ENV_NAME.fullmatch(name):
        if not name.startswith(policy.env_prefix):
            raise SecretError(
                "the env: credential reference names a variable outside the prefix the "
                "operator set aside for credentials"
            )
        value = os.environ.get(name)
        if value is None:
            raise SecretError("the env: credential reference names a variable that is not set")
        return value
    if kind == "file" and name.startswith("/"):
        if policy.file_root is None:
            raise SecretError(
                "file: credential references are disabled on this runner "
                "(the operator sets the service's CREDENTIAL_FILE_ROOT)"
            )
        allowed = (policy.file_root / str(organization_id)).resolve()
        path = Path(name).resolve()
        if not path.is_relative_to(allowed):
            raise SecretError(
                "the file: credential reference lies outside the organization's "
                "credential directory"
            )
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"the file: credential cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            # Never the bytes themselves: they may be most of the secret.
            raise SecretError("the file: credential is not UTF-8 text") from None
    raise SecretError("the credential reference is neither secret:NAME, env:NAME nor file:/path")


def resolver_for(
    organization_id: uuid.UUID, policy: CredentialPolicy, vault: SecretVault | None
) -> Callable[[str | None], str | None]:
    """``resolve_secret`` bound to one organization: what a storage writer gets to open an
    ``s3`` destination's key references (blocking; called on the writer's thread)."""
    return functools.partial(
        resolve_secret, organization_id=organization_id, policy=policy, vault=vault
    )
