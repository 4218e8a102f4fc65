"""`tidemark events republish`: (being built in issue 11)."""

from __future__ import annotations

from tidemark_cli.errors import CliError


def republish() -> None:
    """Re-publish stored events to Kafka."""
    raise CliError("not built yet")
