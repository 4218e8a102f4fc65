"""The proof that an artifact was completely written: its manifest (size and checksum)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, BinaryIO

CHUNK = 1 << 20


@dataclass(frozen=True)
class SealedCopy:
    """A complete copy of an artifact whose bytes match the manifest sealed with it."""

    name: str  # the copy's file name in the destination's directory
    size_bytes: int
    checksum: str  # sha256:<hex>, as the backup records it
    manifest: dict[str, Any]


def verify(file: BinaryIO, name: str, manifest: dict[str, Any]) -> SealedCopy | None:
    """The copy read from ``file`` (named ``name``) as a sealed copy when its size and
    SHA-256 are those of ``manifest``."""
    size, checksum = manifest.get("sizeBytes"), manifest.get("checksum")
    if not isinstance(size, int) or not isinstance(checksum, str):
        return None
    digest = hashlib.sha256()
    read = 0
    try:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            read += len(chunk)
    except OSError:
        return None
    if read != size or f"sha256:{digest.hexdigest()}" != checksum:
        return None
    return SealedCopy(name, size, checksum, manifest)
