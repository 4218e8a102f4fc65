"""Storage destinations: where artifacts are written, each behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from tidemark_contracts.backup import (
    DestinationTarget,
    LocalDestinationConfig,
    S3DestinationConfig,
)

from tidemark_backup_runner.storage.local import DestinationRefused, LocalArtifactWriter
from tidemark_backup_runner.storage.proof import SealedCopy
from tidemark_backup_runner.storage.reader import (
    ArtifactReader,
    LocalArtifactReader,
    S3ArtifactReader,
)
from tidemark_backup_runner.storage.s3 import DEFAULT_PART_SIZE, S3ArtifactWriter, StorageFailed

__all__ = [
    "ArtifactReader",
    "ArtifactSink",
    "ArtifactWriter",
    "DestinationRefused",
    "LocalArtifactWriter",
    "S3ArtifactWriter",
    "SealedCopy",
    "StorageFailed",
    "UnsupportedDestination",
    "reader_for",
    "writer_for",
]


class ArtifactSink(Protocol):
    """What a producer of an artifact writes to: a writer, or a ``FanOut`` of writers."""

    def open(self) -> None: ...
    def write(self, chunk: bytes) -> None: ...


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
    credentials: Callable[[str | None], str | None] | None = None,
    s3_part_size: int = DEFAULT_PART_SIZE,
) -> ArtifactWriter:
    """A writer of the artifact ``key`` (relative to the destination) for the organization
    that owns the destination; ``tag`` names its temporary copy (who writes it).
    ``local_root`` is the operator's root of local destinations (none: they are refused).
    ``credentials`` resolves an ``s3`` destination's key references for that organization
    (``secrets.resolve_secret`` bound to it; blocking, called on the writer's thread when
    it first reaches the store); without it an ``s3`` destination is refused."""
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
    if isinstance(config, S3DestinationConfig):
        return S3ArtifactWriter(
            config,
            key,
            tag,
            credentials or _no_credentials,
            label=f"destination {destination.name!r}",
            part_size=s3_part_size,
        )
    raise UnsupportedDestination(
        f"destination {destination.name!r}: type {destination.type!r} is not supported yet"
    )


def reader_for(
    destination: DestinationTarget,
    organization_id: UUID,
    *,
    local_root: Path | None,
    credentials: Callable[[str | None], str | None] | None,
) -> ArtifactReader:
    """A reader of artifacts stored in ``destination`` (of ``organization_id``), under the
    same rules as ``writer_for``: a local destination only below ``local_root``, an s3 one
    only with the organization's credentials."""
    config = destination.config
    label = f"destination {destination.name!r}"
    if isinstance(config, LocalDestinationConfig):
        if local_root is None:
            raise StorageFailed(
                f"{label}: this runner has no destination root for local destinations"
            )
        return LocalArtifactReader(local_root, organization_id, config, label)
    if isinstance(config, S3DestinationConfig):
        return S3ArtifactReader(config, credentials or _no_credentials, label)
    raise UnsupportedDestination(
        f"destination {destination.name!r}: type {destination.type!r} is not supported yet"
    )


def _no_credentials(ref: str | None) -> str | None:
    raise StorageFailed("this runner resolves no credentials for s3 destinations")
