"""`tidemark restore`: (being built in issue 11)."""

from __future__ import annotations

from tidemark_cli.errors import CliError


def restore() -> None:
    """Restore a backup."""
    raise CliError("not built yet")
