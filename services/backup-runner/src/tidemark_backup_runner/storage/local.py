"""A destination on a local (or mounted) filesystem: write to a temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO


class LocalArtifactWriter:
    def __init__(self, root: str, key: str) -> None:
        self.final = Path(root) / key
        self.partial = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex}.partial")
        self._file: BinaryIO | None = None

    def open(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def commit(self) -> str:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        # The rename is atomic: a reader sees either no artifact or all of it.
        self.partial.replace(self.final)
        directory = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return str(self.final)

    def abort(self) -> None:
        if self._file is None:
            return  # never opened, or already committed: nothing of ours to remove
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def discard(self) -> None:
        """Remove every trace of this artifact: ours, a committed one, and the partial
        files of earlier attempts (a runner that died mid-backup left them)."""
        self.abort()
        leftovers = [self.final]
        with contextlib.suppress(OSError):
            leftovers += self.final.parent.glob(f".{self.final.name}.*.partial")
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()
