"""Credential references (``env:NAME`` / ``file:/path``), resolved only where used.

References come from tenants (an environment's ``passwordRef``), and the resolved value
is sent to a database host the tenant chose. So a reference may only name what the
operator set aside for credentials: environment variables with a configured prefix, and
files under ``<file root>/<organization id>/`` — never the runner's own configuration
(``DATABASE_URL``) or another organization's files.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path


class SecretError(Exception):
    """A credential reference that cannot be resolved; the message never holds the secret."""


@dataclass(frozen=True)
class CredentialPolicy:
    env_prefix: str = "TIDEMARK_SECRET_"
    file_root: Path | None = None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_secret(
    ref: str | None, organization_id: uuid.UUID, policy: CredentialPolicy
) -> str | None:
    if ref is None or ref == "":
        return None
    kind, _, name = ref.partition(":")
    if kind == "env" and _ENV_NAME.match(name):
        if not name.startswith(policy.env_prefix):
            raise SecretError(
                f"credential reference {ref!r}: only environment variables named "
                f"{policy.env_prefix}* may hold credentials"
            )
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"credential reference {ref!r}: environment variable is not set")
        return value
    if kind == "file" and name.startswith("/"):
        if policy.file_root is None:
            raise SecretError(
                f"credential reference {ref!r}: file references are disabled on this runner "
                "(set TIDEMARK_BACKUP_RUNNER_CREDENTIAL_FILE_ROOT)"
            )
        allowed = (policy.file_root / str(organization_id)).resolve()
        path = Path(name).resolve()
        if not path.is_relative_to(allowed):
            raise SecretError(
                f"credential reference {ref!r}: files must lie under the organization's "
                f"credential directory {allowed}"
            )
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"credential reference {ref!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            # Never the bytes themselves: they may be most of the secret.
            raise SecretError(f"credential reference {ref!r}: the file is not UTF-8 text") from None
    raise SecretError(f"credential reference {ref!r} is neither env:NAME nor file:/path")
