"""Reading a stored artifact back (restores): the same confinement and error rules as writing.

A reader streams one object of one destination; it never names a path of the runner's
machine nor a credential in its errors (``StorageFailed``), and a missing object is a
``StorageFailed`` saying "not found".
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any, Protocol
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError
from tidemark_contracts.backup import LocalDestinationConfig, S3DestinationConfig

from tidemark_backup_runner.storage.local import (
    _READ_FLAGS,
    DestinationRefused,
    LocalArtifactWriter,
)
from tidemark_backup_runner.storage.s3 import (
    Resolve,
    S3ArtifactWriter,
    StorageFailed,
    describe,
    not_found,
)

DEFAULT_CHUNK = 1 << 20


class ArtifactReader(Protocol):
    def read(self, location: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """The bytes of the artifact at ``location`` (relative to the destination)."""
        ...


def _checked_location(location: str, label: str) -> list[str]:
    parts = location.split("/")
    if not location or location.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageFailed(f"{label}: the artifact's location is not a relative path")
    return parts


class LocalArtifactReader:
    """Reads ``<root>/<organization>/<path>/<location>``, every directory opened without
    following a link (as the writer does)."""

    def __init__(
        self, root: Any, organization_id: UUID, config: LocalDestinationConfig, label: str
    ) -> None:
        self._root = root
        self._organization_id = organization_id
        self._config = config
        self._label = label

    def read(self, location: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        _checked_location(location, self._label)
        # The writer's chain walk (links refused, errors named relative to the
        # organization's directory) opens the artifact's directory.
        walker = LocalArtifactWriter(
            self._root, self._organization_id, self._config.path, location, label=self._label
        )
        try:
            directory = walker._open_chain(create=False)
        except DestinationRefused as exc:
            raise StorageFailed(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise StorageFailed(f"{self._label}: the artifact was not found") from None
            raise StorageFailed(f"{self._label}: {_reason(exc)}") from None
        try:
            try:
                descriptor = os.open(walker.name, _READ_FLAGS, dir_fd=directory)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise StorageFailed(f"{self._label}: the artifact was not found") from None
                raise StorageFailed(
                    f"{self._label}: the artifact cannot be read ({_reason(exc)})"
                ) from None
        finally:
            os.close(directory)
        with os.fdopen(descriptor, "rb") as file:
            while True:
                try:
                    chunk = file.read(chunk_size)
                except OSError as exc:
                    raise StorageFailed(
                        f"{self._label}: reading the artifact failed ({_reason(exc)})"
                    ) from None
                if not chunk:
                    return
                yield chunk


def _reason(exc: OSError) -> str:
    """An OS error in words without a path of the runner's machine."""
    if exc.strerror and exc.filename is None:
        return str(exc.strerror)
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


class S3ArtifactReader:
    """Reads ``<prefix>/<location>`` from the destination's bucket with the organization's
    keys (never the runner's own)."""

    def __init__(self, config: S3DestinationConfig, resolve: Resolve, label: str) -> None:
        self._config = config
        self._resolve = resolve
        self._label = label

    def read(self, location: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        _checked_location(location, self._label)
        # The writer holds the client configuration (old S3-compatibles, no checksum
        # headers) and the object key rule; only its reading side is used.
        store = S3ArtifactWriter(self._config, location, "read", self._resolve, label=self._label)
        try:
            body = store._client().get_object(Bucket=store.bucket, Key=store.object)["Body"]
        except ClientError as exc:
            if not_found(exc):
                raise StorageFailed(f"{self._label}: the artifact was not found") from None
            raise StorageFailed(f"{self._label}: get_object failed: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StorageFailed(f"{self._label}: get_object failed: {describe(exc)}") from None
        try:
            while True:
                try:
                    chunk = body.read(chunk_size)
                except (BotoCoreError, ClientError, OSError) as exc:
                    raise StorageFailed(
                        f"{self._label}: reading the artifact failed: {describe(exc)}"
                    ) from None
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()
