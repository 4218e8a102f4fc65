"""Storage destinations: where artifacts are written, each behind one small interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from uuid import UUID

from tidemark_contracts.backup import DestinationTarget, LocalDestinationConfig

from tidemark_backup_runner.storage.local import DestinationRefused, LocalArtifactWriter

__all__ = [
    "ArtifactWriter",
    "DestinationRefused",
    "LocalArtifactWriter",
    "UnsupportedDestination",
    "writer_for",
]


class ArtifactWriter(Protocol):
    """Receives an artifact as a stream; nothing is visible until ``commit``."""

    def open(self) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> str:
        """Make the artifact durable and visible; returns its location, relative to the
        destination (never a path of the runner's machine)."""
        ...

    def abort(self) -> None:
        """Discard what this writer wrote but did not commit; safe at any point, often."""
        ...

    def discard(self) -> None:
        """Remove the artifact entirely, committed or not, including earlier attempts'."""
        ...


class UnsupportedDestination(Exception):
    pass


def writer_for(
    destination: DestinationTarget,
    organization_id: UUID,
    key: str,
    tag: str | None = None,
    *,
    local_root: Path | None = None,
) -> ArtifactWriter:
    """A writer of the artifact ``key`` (relative to the destination) for the organization
    that owns the destination; ``tag`` names its temporary copy (who writes it).
    ``local_root`` is the operator's root of local destinations (none: they are refused)."""
    config = destination.config
    if isinstance(config, LocalDestinationConfig):
        return LocalArtifactWriter(
            local_root,
            organization_id,
            config.path,
            key,
            tag,
            label=f"destination {destination.name!r}",
        )
    raise UnsupportedDestination(
        f"destination {destination.name!r}: type {destination.type!r} is not supported yet"
    )
