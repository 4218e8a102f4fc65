"""Storage destinations: where artifacts are written, each behind one small interface."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from tidemark_contracts.backup import DestinationTarget, LocalDestinationConfig

from tidemark_backup_runner.storage.local import DestinationRefused, LocalArtifactWriter
from tidemark_backup_runner.storage.proof import SealedCopy

__all__ = [
    "ArtifactWriter",
    "DestinationRefused",
    "LocalArtifactWriter",
    "SealedCopy",
    "UnsupportedDestination",
    "writer_for",
]


class ArtifactWriter(Protocol):
    """Receives an artifact as a stream; nothing is visible until ``commit``."""

    def open(self) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def seal(self, manifest: Mapping[str, Any]) -> None:
        """The artifact is complete: make it durable where it is (not yet visible) and keep
        ``manifest`` (its size and checksum) beside it, as the proof a later attempt
        verifies instead of dumping again. A sealed copy outlives ``abort``."""
        ...

    def commit(self) -> str:
        """Make the (sealed) artifact durable and visible; returns its location, relative
        to the destination (never a path of the runner's machine)."""
        ...

    def sealed(self) -> SealedCopy | None:
        """A complete copy of this artifact that some attempt sealed (committed or not)
        whose bytes still match its manifest; None when there is none."""
        ...

    def adopt(self, copy: SealedCopy) -> str:
        """Make ``copy`` (from ``sealed``) the visible artifact; returns its location."""
        ...

    def forget_proofs(self) -> None:
        """Remove the manifests once the artifact is recorded (they proved what they had to)."""
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
