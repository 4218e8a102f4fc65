"""The proof that an artifact was completely written: its manifest (size and checksum)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@dataclass(frozen=True)
class SealedCopy:
    """A complete copy of an artifact whose bytes match the manifest sealed with it."""

    path: Path
    size_bytes: int
    checksum: str  # sha256:<hex>, as the backup records it
    manifest: dict[str, Any]


def verify(path: Path, manifest: dict[str, Any]) -> SealedCopy | None:
    """``path`` as a sealed copy when its size and SHA-256 are those of ``manifest``."""
    size, checksum = manifest.get("sizeBytes"), manifest.get("checksum")
    if not isinstance(size, int) or not isinstance(checksum, str):
        return None
    try:
        if path.stat().st_size != size:
            return None
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    if f"sha256:{digest.hexdigest()}" != checksum:
        return None
    return SealedCopy(path, size, checksum, manifest)
