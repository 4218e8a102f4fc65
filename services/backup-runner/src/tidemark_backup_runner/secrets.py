"""Credential references (``env:NAME`` / ``file:/path``), resolved only where used."""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(Exception):
    """A credential reference that cannot be resolved; the message never holds the secret."""


def resolve_secret(ref: str | None) -> str | None:
    if ref is None or ref == "":
        return None
    kind, _, name = ref.partition(":")
    if kind == "env" and name:
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"credential reference {ref!r}: environment variable is not set")
        return value
    if kind == "file" and name:
        try:
            return Path(name).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"credential reference {ref!r}: {exc.strerror}") from None
    raise SecretError(f"credential reference {ref!r} is neither env:NAME nor file:/path")
