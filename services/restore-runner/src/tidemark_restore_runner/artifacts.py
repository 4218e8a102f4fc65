"""Fetching what a restore lays down: the source artifact (any copy whose bytes match its
checksum) and, for a point-in-time restore, archived WAL segments. Blocking."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

import zstandard
from tidemark_backup_runner.secrets import SecretError
from tidemark_backup_runner.storage import StorageFailed, UnsupportedDestination, reader_for
from tidemark_contracts.backup import DestinationTarget
from tidemark_contracts.restore import ArtifactCopy, RestoreSource

Resolve = Callable[[str | None], str | None]


class VerificationFailed(Exception):
    """No copy could be downloaded with the expected checksum; says why for each."""


def download_verified(
    copies: list[ArtifactCopy],
    organization_id: UUID,
    checksum: str,
    into: Path,
    on_progress: Callable[[int], None],
    *,
    local_root: Path | None,
    credentials: Resolve | None,
) -> str:
    """Download a copy into ``into`` and check its SHA-256 against ``checksum``; the next
    copy is tried when one fails. Returns the name of the destination it came from."""
    reasons: list[str] = []
    for copy in copies:
        name = f"destination {copy.destination.name!r}"
        digest = hashlib.sha256()
        done = 0
        try:
            reader = reader_for(
                copy.destination, organization_id, local_root=local_root, credentials=credentials
            )
            with into.open("wb") as file:
                for chunk in reader.read(copy.location):
                    file.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    on_progress(done)
        except (StorageFailed, UnsupportedDestination) as exc:
            reasons.append(str(exc))
            continue
        except SecretError as exc:  # an s3 destination's keys (the message names no value)
            reasons.append(f"{name}: {exc}")
            continue
        except OSError as exc:
            reasons.append(f"{name}: the runner's scratch space failed ({exc.strerror})")
            continue
        got = f"sha256:{digest.hexdigest()}"
        if got != checksum:
            reasons.append(f"{name}: checksum mismatch (the stored artifact is not the backup's)")
            continue
        return name
    into.unlink(missing_ok=True)
    raise VerificationFailed(
        "the artifact could not be verified, the target was not touched: " + "; ".join(reasons)
    )


def segment_fetcher(
    segments: Mapping[str, Mapping[str, Any]],
    destinations: Mapping[str, DestinationTarget],
    organization_id: UUID,
    *,
    local_root: Path | None,
    credentials: Resolve | None,
) -> Callable[[str, Path], bool]:
    """``fetch_segment(name, into)`` for the physical restore: the archived segment from
    any destination that holds a copy, checked against its recorded SHA-256 and
    zstd-decompressed into ``into``; False when the archive has no such segment."""

    def fetch(name: str, into: Path) -> bool:
        segment = segments.get(name)
        if segment is None:
            return False
        for copy in segment["copies"]:
            destination = destinations.get(str(copy["destinationId"]))
            if destination is None:
                continue
            try:
                reader = reader_for(
                    destination, organization_id, local_root=local_root, credentials=credentials
                )
                data = b"".join(reader.read(copy["location"]))
            except (StorageFailed, UnsupportedDestination):
                continue
            if f"sha256:{hashlib.sha256(data).hexdigest()}" != segment["checksum"]:
                continue
            partial = into.with_name(into.name + ".tidemark-partial")
            with partial.open("wb") as file:
                file.write(zstandard.ZstdDecompressor().decompressobj().decompress(data))
            partial.replace(into)
            return True
        return False

    return fetch


def wal_sources(source: RestoreSource) -> dict[str, DestinationTarget]:
    """Where a point-in-time restore may fetch WAL from, by destination id: the base's
    destinations and those the gateway found holding the planned segments (a segment is
    stored wherever the schedule's destinations were when it was archived)."""
    found = {str(c.destination.destination_id): c.destination for c in source.copies}
    for destination in source.wal_destinations:
        found.setdefault(str(destination.destination_id), destination)
    return found


async def wait_for_segment(
    holds: Callable[[], Awaitable[bool]], *, seconds: float, poll: float = 1.0
) -> bool:
    """Wait until ``holds()`` (the runner's view has the plan's last segment), at most
    ``seconds``; False when it never did."""
    deadline = time.monotonic() + seconds
    while True:
        if await holds():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(poll, left))
