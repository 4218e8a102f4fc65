"""A ``full`` backup's artifact read back: its ``manifest.json`` first, then every member
checked against it while it is extracted into a staging directory (nothing is trusted
before its digest matched; nothing lands outside the staging directory).

The artifact is the backup-runner's (``basebackup.py``): one zstd-compressed tar of
``pgdata/`` (a data directory), ``files/`` (the environment's files directory, when it
had one) and ``manifest.json`` last, with the size and SHA-256 of every regular file and
the target of every symbolic link. The manifest comes last, so learning the sizes before
writing anything (to refuse a restore the disk cannot hold) costs one pass of
decompression without writing (``read_manifest``); ``extract_verified`` is the second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard

PGDATA = "pgdata"
FILES = "files"
MANIFEST = "manifest.json"
CHUNK = 1 << 20
# A data directory postgres starts from is its owner's only, as initdb makes it.
PGDATA_DIRECTORY_MODE = 0o700
PGDATA_FILE_MODE = 0o600
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Names of the archive's tenant files are not secrets, but keep a reason short.
_NAME_IN_REASON = 120


class ArchiveError(Exception):
    """The artifact cannot be restored as it is; the reason never holds a runner path."""


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    timeline: int | None
    wal_start_lsn: str | None
    wal_end_lsn: str | None
    files: dict[str, dict[str, Any]]

    def bytes_under(self, prefix: str) -> int:
        return sum(
            int(entry.get("size") or 0)
            for path, entry in self.files.items()
            if path.startswith(prefix + "/")
        )

    @property
    def has_files(self) -> bool:
        return any(path.startswith(FILES + "/") for path in self.files)


@dataclass(frozen=True)
class Owner:
    """Who the extracted entries belong to (applied only when the runner is root)."""

    uid: int
    gid: int

    @classmethod
    def of(cls, path: Path) -> Owner:
        st = path.stat()
        return cls(st.st_uid, st.st_gid)


def _shown(name: str) -> str:
    return name if len(name) <= _NAME_IN_REASON else name[:_NAME_IN_REASON] + "…"


@contextlib.contextmanager
def _members(artifact: Path) -> Iterator[tarfile.TarFile]:
    try:
        raw = open(artifact, "rb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise ArchiveError(f"the artifact cannot be read: {exc.strerror or exc}") from None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True
        )
        with reader, tarfile.open(fileobj=reader, mode="r|") as archive:
            yield archive
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise ArchiveError(
            f"the artifact is not a readable zstd-compressed tar ({type(exc).__name__})"
        ) from None
    finally:
        raw.close()


def _checked_name(name: str) -> str:
    """The member's name when it is a relative path inside ``pgdata/`` or ``files/`` (or
    the manifest); anything that could land elsewhere on extraction is refused."""
    path = PurePosixPath(name)
    parts = path.parts
    if (
        not parts
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in parts)
        or "\\" in name
        or "\0" in name
    ):
        raise ArchiveError(f"the artifact holds a member with an unsafe name ({_shown(name)!r})")
    if parts[0] not in (PGDATA, FILES) and name != MANIFEST:
        raise ArchiveError(f"the artifact holds an unexpected member ({_shown(name)!r})")
    return str(path)


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        body = json.loads(raw)
        files: dict[str, dict[str, Any]] = {}
        for entry in body["files"]:
            path = str(entry["path"])
            if path in files:
                raise ValueError("duplicate")
            files[path] = dict(entry)
        timeline = body.get("timeline")
        return Manifest(
            raw=raw,
            timeline=int(timeline) if timeline is not None else None,
            wal_start_lsn=body.get("walStartLsn"),
            wal_end_lsn=body.get("walEndLsn"),
            files=files,
        )
    except (ValueError, KeyError, TypeError):
        raise ArchiveError("the artifact's manifest.json is not a readable manifest") from None


def read_manifest(artifact: Path) -> Manifest:
    """The artifact's manifest, read without writing anything (one decompression pass);
    member names are checked on the way."""
    raw: bytes | None = None
    with _members(artifact) as archive:
        for member in archive:
            name = _checked_name(member.name)
            if raw is not None:
                raise ArchiveError("the artifact has members after its manifest.json")
            if name == MANIFEST:
                handle = archive.extractfile(member)
                if handle is None:
                    raise ArchiveError("the artifact's manifest.json is not a file")
                raw = handle.read()
    if raw is None:
        raise ArchiveError("the artifact has no manifest.json")
    return _parse_manifest(raw)


def _link_stays_inside(name: str, target: str) -> bool:
    """A symbolic link at ``name`` (under ``files/``) whose target, read lexically from
    the link's directory, stays inside ``files/``."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved == FILES or resolved.startswith(FILES + "/")


class _Extraction:
    def __init__(
        self,
        manifest: Manifest,
        roots: dict[str, Path],
        owners: dict[str, Owner],
    ) -> None:
        self._manifest = manifest
        self._roots = roots  # top-level name → the staging directory it is written under
        self._owners = owners
        self._directories: set[str] = set()
        self._seen: set[str] = set()
        self._chown = os.geteuid() == 0

    def _destination(self, name: str) -> Path | None:
        top = name.split("/", 1)[0]
        root = self._roots.get(top)
        return None if root is None else root / name

    def _own(self, path: Path, top: str, *, link: bool = False) -> None:
        owner = self._owners.get(top)
        if self._chown and owner is not None:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=not link)

    def _parent_is_ours(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent and parent not in self._directories:
            # Every parent was a directory member before: nothing is written through a
            # link or into a directory this extraction did not make.
            raise ArchiveError(
                f"the artifact holds a member outside its directories ({_shown(name)!r})"
            )

    def member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _checked_name(member.name)
        if name in self._seen:
            raise ArchiveError(f"the artifact holds a member twice ({_shown(name)!r})")
        self._seen.add(name)
        top = name.split("/", 1)[0]
        if name != top:
            self._parent_is_ours(name)
        destination = self._destination(name)
        pgdata = top == PGDATA
        if member.isdir():
            self._directories.add(name)
            if destination is not None:
                mode = PGDATA_DIRECTORY_MODE if pgdata else member.mode & 0o777
                destination.mkdir(mode=0o700)
                os.chmod(destination, mode)
                self._own(destination, top)
        elif member.isreg():
            self._regular(archive, member, name, destination, pgdata, top)
        elif member.issym() and top == FILES:
            entry = self._manifest.files.get(name)
            if not _link_stays_inside(name, member.linkname):
                raise ArchiveError(
                    f"the artifact holds a symbolic link that leads outside the files "
                    f"directory ({_shown(name)!r})"
                )
            if entry is None or entry.get("type") != "symlink":
                raise ArchiveError(f"the manifest does not list the link {_shown(name)!r}")
            if entry.get("target") != member.linkname:
                raise ArchiveError(f"the link {_shown(name)!r} does not match the manifest")
            if destination is not None:
                os.symlink(member.linkname, destination)
                self._own(destination, top, link=True)
        else:
            raise ArchiveError(
                f"the artifact holds a member that is neither a file, a directory nor a "
                f"link inside the files directory ({_shown(name)!r})"
            )

    def _regular(
        self,
        archive: tarfile.TarFile,
        member: tarfile.TarInfo,
        name: str,
        destination: Path | None,
        pgdata: bool,
        top: str,
    ) -> None:
        entry = self._manifest.files.get(name)
        if entry is None or entry.get("type", "file") != "file" or not entry.get("sha256"):
            raise ArchiveError(f"the manifest does not list the file {_shown(name)!r}")
        if int(entry.get("size", -1)) != member.size:
            raise ArchiveError(f"the size of {_shown(name)!r} does not match the manifest")
        source = archive.extractfile(member)
        if source is None:
            raise ArchiveError(f"{_shown(name)!r} cannot be read from the artifact")
        digest = hashlib.sha256()
        handle: IO[bytes] | None = None
        if destination is not None:
            mode = PGDATA_FILE_MODE if pgdata else member.mode & 0o777
            handle = os.fdopen(os.open(destination, _CREATE, 0o600), "wb", buffering=0)
        try:
            done = 0
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if handle is not None:
                    handle.write(chunk)
        finally:
            if handle is not None:
                handle.close()
        if done != member.size or digest.hexdigest() != entry["sha256"]:
            raise ArchiveError(
                f"{_shown(name)!r} does not match its SHA-256 in the manifest (the artifact "
                f"is corrupt)"
            )
        if destination is not None:
            os.chmod(destination, mode)
            os.utime(destination, (member.mtime, member.mtime))
            self._own(destination, top)

    def finish(self, raw_manifest: bytes | None) -> None:
        if raw_manifest is None:
            raise ArchiveError("the artifact has no manifest.json")
        if raw_manifest != self._manifest.raw:
            raise ArchiveError("the artifact's manifest.json changed between two reads")
        missing = [path for path in self._manifest.files if path not in self._seen]
        if missing:
            raise ArchiveError(
                f"the artifact lacks {len(missing)} member(s) its manifest lists "
                f"(first: {_shown(missing[0])!r})"
            )


def extract_verified(
    artifact: Path,
    manifest: Manifest,
    roots: dict[str, Path],
    owners: dict[str, Owner],
) -> None:
    """Extract ``pgdata/`` and ``files/`` under their directories in ``roots`` (each must
    exist and be empty; a top-level name without a root is checked but not written),
    every regular file checked against ``manifest`` (size and SHA-256), every link
    against its recorded target and confined to ``files/``. Raises ``ArchiveError`` at
    the first mismatch; the caller removes the staging directories then."""
    extraction = _Extraction(manifest, roots, owners)
    raw: bytes | None = None
    try:
        with _members(artifact) as archive:
            for member in archive:
                if raw is not None:
                    raise ArchiveError("the artifact has members after its manifest.json")
                if member.name == MANIFEST:
                    handle = archive.extractfile(member)
                    raw = handle.read() if handle is not None else None
                    continue
                extraction.member(archive, member)
    except OSError as exc:
        raise ArchiveError(
            f"extracting the artifact failed: {exc.strerror or type(exc).__name__}"
        ) from None
    extraction.finish(raw)


def remove_tree(path: Path) -> None:
    """Remove ``path`` (a directory, a file or a link), not following links; absent is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
