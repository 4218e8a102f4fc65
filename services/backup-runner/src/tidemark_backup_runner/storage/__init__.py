"""Storage destinations: where artifacts are written, each behind one small interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tidemark_contracts.backup import DestinationTarget, LocalDestinationConfig

from tidemark_backup_runner.storage.local import LocalArtifactWriter
from tidemark_backup_runner.storage.proof import SealedCopy

__all__ = ["ArtifactWriter", "SealedCopy", "UnsupportedDestination", "writer_for"]


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
        """Make the (sealed) artifact durable and visible; returns its location."""
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


def writer_for(destination: DestinationTarget, key: str, tag: str | None = None) -> ArtifactWriter:
    """A writer of the artifact ``key``; ``tag`` names its temporary copy (who writes it)."""
    config = destination.config
    if isinstance(config, LocalDestinationConfig):
        return LocalArtifactWriter(config.path, key, tag)
    raise UnsupportedDestination(
        f"destination {destination.name!r}: type {destination.type!r} is not supported yet"
    )
