"""A destination on a local (or mounted) filesystem, confined to the organization's directory.

A ``local`` destination's path is relative to ``<root>/<organization id>/``, the root being
the operator's (``DESTINATION_ROOT``). Every directory below the root is opened one name at
a time, relative to its parent's descriptor, with ``O_NOFOLLOW``: a symbolic link anywhere
below the root (the organization's directory, the destination's, one between) is refused,
whether it leads out or not, since a link that stays inside today can be pointed out
tomorrow. The artifact is written to a temporary file in the directory so opened, fsynced,
sealed (its manifest written beside it: the proof a later attempt adopts instead of
dumping again) and renamed within that same directory; just before the rename the chain
is opened again from the root and must still lead to that directory, so one swapped for a
link meanwhile (or moved away) is noticed and the artifact is not committed. (A swap in the instant
between that check and the rename is not: only someone with a shell on the runner's
filesystem can make one, never a tenant through the API.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

from tidemark_contracts.backup import local_path_problem

from tidemark_backup_runner.storage.proof import SealedCopy, verify

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PARTIAL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DRAFT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class DestinationRefused(OSError):
    """The destination cannot be written without leaving the organization's directory (or
    is not configured to be written at all). Retrying cannot help.

    An ``OSError``, so that callers treating storage errors alike treat this one so too;
    ``strerror`` is the reason, which never holds a path of the runner's machine."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EPERM, reason)

    def __str__(self) -> str:
        return str(self.strerror)


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _opened(parent: int, name: str, *, create: bool, shown: str, label: str) -> int:
    """Open directory ``name`` of the directory ``parent`` without following a link;
    ``shown`` is how errors name it (relative to the organization's directory), ``label``
    the destination it belongs to."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent, name):
            raise DestinationRefused(
                f"{label}: {shown} is a symbolic link; a local destination must be a directory "
                "inside the organization's directory"
            ) from None
        # Named relative to the organization's directory, never by the runner's path.
        raise OSError(exc.errno, exc.strerror, shown) from None


class LocalArtifactWriter:
    """Writes ``.<name>.<tag>.partial`` beside the artifact, renamed to ``<name>`` on commit.

    The tag says whose copy it is (the runner instance and attempt); any later writer of
    the same artifact finds every partial copy by the name alone and can discard them.
    A sealed copy has its manifest beside it, ``.<name>.<tag>.manifest``, which stays
    (after the rename too) until the artifact is recorded.
    ``key`` is the artifact's place in the destination (``<environment>/<file>``); it is
    what ``commit`` returns, the location recorded for everyone to see.
    """

    def __init__(
        self,
        root: Path | None,
        organization_id: UUID,
        path: str,
        key: str,
        tag: str | None = None,
        *,
        label: str = "local destination",
    ) -> None:
        self.root = root
        self.key = key
        self._label = label
        problem = local_path_problem(path)
        self._problem = f"{label}: config.path {problem}" if problem else None
        if root is None:
            self._problem = f"{label}: this runner has no destination root for local destinations"
        # The chain below the root, and how errors name each step (never the root itself).
        *key_dirs, self.name = key.split("/")
        names = [str(organization_id), *path.split("/"), *key_dirs]
        self._chain = [
            (name, "/".join(["<organization>", *names[1 : i + 1]])) for i, name in enumerate(names)
        ]
        self.tag = tag or uuid.uuid4().hex
        self.partial = self._partial_of(self.tag)
        self.manifest = f".{self.name}.{self.tag}.manifest"
        self._directory: int | None = None
        self._file: BinaryIO | None = None
        self._sealed = False

    def _partial_of(self, tag: str) -> str:
        return f".{self.name}.{tag}.partial"

    def _refuse_if_invalid(self) -> Path:
        if self._problem is not None:
            raise DestinationRefused(self._problem)
        assert self.root is not None
        return self.root

    def _open_chain(self, *, create: bool) -> int:
        root = self._refuse_if_invalid()
        try:
            current = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{self._label}: the runner's destination root is unavailable"
            ) from None
        try:
            for name, shown in self._chain:
                following = _opened(current, name, create=create, shown=shown, label=self._label)
                os.close(current)
                current = following
        except BaseException:
            os.close(current)
            raise
        return current

    def open(self) -> None:
        directory = self._open_chain(create=True)
        try:
            partial = os.open(self.partial, _PARTIAL_FLAGS, 0o600, dir_fd=directory)
        except OSError as exc:
            os.close(directory)
            raise OSError(exc.errno, exc.strerror, self.key) from None
        self._directory = directory
        self._file = os.fdopen(partial, "wb")
        self._sealed = False

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def _still_in_place(self) -> bool:
        """Whether the chain, opened again from the root, still ends at our directory."""
        assert self._directory is not None
        try:
            again = self._open_chain(create=False)
        except OSError:
            return False
        try:
            now, ours = os.fstat(again), os.fstat(self._directory)
            return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
        finally:
            os.close(again)

    def _close_durably(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def seal(self, manifest: Mapping[str, Any]) -> None:
        assert self._directory is not None
        self._close_durably()
        # Written whole, then renamed: a manifest that exists is complete.
        draft = f"{self.manifest}.tmp"
        descriptor = os.open(draft, _DRAFT_FLAGS, 0o600, dir_fd=self._directory)
        with os.fdopen(descriptor, "w") as file:
            json.dump(dict(manifest), file)
            file.flush()
            os.fsync(file.fileno())
        os.rename(draft, self.manifest, src_dir_fd=self._directory, dst_dir_fd=self._directory)
        os.fsync(self._directory)
        self._sealed = True

    def commit(self) -> str:
        assert self._directory is not None
        if not self._sealed:
            self._close_durably()
        return self._publish(self.partial)

    def _publish(self, source: str) -> str:
        assert self._directory is not None
        if not self._still_in_place():
            # Replaced by a link, or moved, since it was opened: whatever it leads to now,
            # nothing is committed there, and our partial file goes.
            with contextlib.suppress(OSError):
                os.unlink(self.partial, dir_fd=self._directory)
            self._close_directory()
            raise DestinationRefused(
                f"{self._label}: its directory was replaced or moved while the backup was "
                "written; nothing was stored"
            )
        # The rename is atomic: a reader sees either no artifact or all of it.
        os.rename(source, self.name, src_dir_fd=self._directory, dst_dir_fd=self._directory)
        os.fsync(self._directory)
        self._close_directory()
        return self.key

    def sealed(self) -> SealedCopy | None:
        try:
            directory = self._open_chain(create=False)
        except OSError:
            return None
        try:
            for manifest in self._manifests(directory):
                content = self._read_json(directory, manifest)
                if content is None:
                    continue
                tag = manifest[len(self.name) + 2 : -len(".manifest")]
                # Still where its attempt sealed it, or already renamed into place.
                for candidate in (self._partial_of(tag), self.name):
                    copy = self._verify(directory, candidate, content)
                    if copy is not None:
                        return copy
            return None
        finally:
            os.close(directory)

    @staticmethod
    def _read_json(directory: int, name: str) -> dict[str, Any] | None:
        try:
            descriptor = os.open(name, _READ_FLAGS, dir_fd=directory)
            with os.fdopen(descriptor, "rb") as file:
                content = json.loads(file.read(1 << 16))
        except (OSError, ValueError):
            return None
        return content if isinstance(content, dict) else None

    @staticmethod
    def _verify(directory: int, name: str, manifest: dict[str, Any]) -> SealedCopy | None:
        try:
            descriptor = os.open(name, _READ_FLAGS, dir_fd=directory)
        except OSError:
            return None
        with os.fdopen(descriptor, "rb") as file:
            return verify(file, name, manifest)

    def adopt(self, copy: SealedCopy) -> str:
        self._directory = self._open_chain(create=False)
        return self._publish(copy.name) if copy.name != self.name else self._done()

    def _done(self) -> str:
        self._close_directory()
        return self.key

    def forget_proofs(self) -> None:
        try:
            directory = self._open_chain(create=False)
        except OSError:
            return
        try:
            for manifest in self._manifests(directory):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(manifest, dir_fd=directory)
        finally:
            os.close(directory)

    def _manifests(self, directory: int) -> list[str]:
        prefix = f".{self.name}."
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(".manifest"))

    def _close_directory(self) -> None:
        if self._directory is not None:
            with contextlib.suppress(OSError):
                os.close(self._directory)
            self._directory = None

    def abort(self) -> None:
        if self._file is None:
            # Never opened, already committed, or sealed: a sealed copy is the proof a later
            # attempt (here or on another runner) records instead of dumping again.
            self._close_directory()
            return
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        assert self._directory is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial, dir_fd=self._directory)
        self._close_directory()

    def discard(self) -> None:
        """Remove every trace of this artifact: ours, a committed one, the partial files of
        earlier attempts (a runner that died mid-backup left them) and their manifests.

        A chain that is missing, refused or unreadable holds nothing of ours to remove."""
        self.abort()
        try:
            directory = self._open_chain(create=False)
        except OSError:
            return
        try:
            for name in self._leftovers(directory):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(name, dir_fd=directory)
        finally:
            os.close(directory)

    def _leftovers(self, directory: int) -> Iterator[str]:
        yield self.name
        prefix = f".{self.name}."
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name.startswith(prefix) and name.endswith(
                    (".partial", ".manifest", ".manifest.tmp")
                ):
                    yield name
