"""A destination on a local (or mounted) filesystem: write to a temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO


class LocalArtifactWriter:
    """Writes ``.<name>.<tag>.partial`` beside the artifact, renamed to ``<name>`` on commit.

    The tag says whose copy it is (the runner instance and attempt); any later writer of
    the same artifact finds every partial copy by the name alone and can discard them.
    """

    def __init__(self, root: str, key: str, tag: str | None = None) -> None:
        self.final = Path(root) / key
        self.partial = self.final.with_name(f".{self.final.name}.{tag or uuid.uuid4().hex}.partial")
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
