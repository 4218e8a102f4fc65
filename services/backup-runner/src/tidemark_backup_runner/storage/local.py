"""A destination on a local (or mounted) filesystem: write to a temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from tidemark_backup_runner.storage.proof import SealedCopy, verify


class LocalArtifactWriter:
    """Writes ``.<name>.<tag>.partial`` beside the artifact, renamed to ``<name>`` on commit.

    The tag says whose copy it is (the runner instance and attempt); any later writer of
    the same artifact finds every partial copy by the name alone and can discard them.
    A sealed copy has its manifest beside it, ``.<name>.<tag>.manifest``, which stays
    (after the rename too) until the artifact is recorded.
    """

    def __init__(self, root: str, key: str, tag: str | None = None) -> None:
        self.final = Path(root) / key
        self.tag = tag or uuid.uuid4().hex
        self.partial = self._partial_of(self.tag)
        self.manifest = self.final.with_name(f".{self.final.name}.{self.tag}.manifest")
        self._file: BinaryIO | None = None
        self._sealed = False

    def _partial_of(self, tag: str) -> Path:
        return self.final.with_name(f".{self.final.name}.{tag}.partial")

    def open(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("wb")
        self._sealed = False

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def _close_durably(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def seal(self, manifest: Mapping[str, Any]) -> None:
        self._close_durably()
        # Written whole, then renamed: a manifest that exists is complete.
        draft = self.manifest.with_name(self.manifest.name + ".tmp")
        with draft.open("w") as file:
            json.dump(dict(manifest), file)
            file.flush()
            os.fsync(file.fileno())
        draft.replace(self.manifest)
        self._sync_directory()
        self._sealed = True

    def commit(self) -> str:
        if not self._sealed:
            self._close_durably()
        return self._publish(self.partial)

    def _publish(self, source: Path) -> str:
        # The rename is atomic: a reader sees either no artifact or all of it.
        source.replace(self.final)
        self._sync_directory()
        return str(self.final)

    def _sync_directory(self) -> None:
        directory = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def sealed(self) -> SealedCopy | None:
        for manifest in self._manifests():
            try:
                content = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(content, dict):
                continue
            tag = manifest.name[len(self.final.name) + 2 : -len(".manifest")]
            # Still where its attempt sealed it, or already renamed into place.
            for candidate in (self._partial_of(tag), self.final):
                copy = verify(candidate, content)
                if copy is not None:
                    return copy
        return None

    def adopt(self, copy: SealedCopy) -> str:
        if copy.path == self.final:
            return str(self.final)
        return self._publish(copy.path)

    def forget_proofs(self) -> None:
        for manifest in self._manifests():
            with contextlib.suppress(FileNotFoundError):
                manifest.unlink()

    def _manifests(self) -> list[Path]:
        try:
            return sorted(self.final.parent.glob(f".{self.final.name}.*.manifest"))
        except OSError:
            return []

    def abort(self) -> None:
        if self._file is None:
            # Never opened, already committed, or sealed: a sealed copy is the proof a later
            # attempt (here or on another runner) records instead of dumping again.
            return
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def discard(self) -> None:
        """Remove every trace of this artifact: ours, a committed one, the partial files of
        earlier attempts (a runner that died mid-backup left them) and their manifests."""
        self.abort()
        leftovers = [self.final, *self._manifests()]
        with contextlib.suppress(OSError):
            for pattern in (".*.partial", ".*.manifest.tmp"):
                leftovers += self.final.parent.glob(f".{self.final.name}{pattern}")
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()
