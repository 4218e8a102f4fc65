"""Storage destinations: where artifacts are written, each behind one small interface."""

from __future__ import annotations

from typing import Protocol

from tidemark_contracts.backup import DestinationTarget, LocalDestinationConfig

from tidemark_backup_runner.storage.local import LocalArtifactWriter


class ArtifactWriter(Protocol):
    """Receives an artifact as a stream; nothing is visible until ``commit``."""

    def open(self) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> str:
        """Make the artifact durable and visible; returns its location."""
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
