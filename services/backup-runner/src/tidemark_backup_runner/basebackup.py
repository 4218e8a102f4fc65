"""Full backups: pg_basebackup of the environment's cluster plus its files directory,
re-packed on the fly into one zstd-compressed tar that ends with a manifest.

The archive holds ``pgdata/`` (pg_basebackup's tar, ``-X fetch``: a data directory that
starts as it is, its ``backup_manifest`` included), ``files/`` (the environment's files
directory, when it has one) and ``manifest.json`` last: the path, size and SHA-256 of
every file in the archive, the backup's id and its WAL range. Nothing of it is kept on
local disk: pg_basebackup's stdout is read as a tar stream and written as a new one
straight into the compressor and the writers (``pgtools.CompressedArtifact``).

The re-packing is as cheap as ``pg_basebackup | zstd`` allows (``bench/backup_overhead``'s
full figure): a thread reads the tool's output ahead, headers are rewritten in place (only
the name changes), member data reaches the compressor as views of what was read, and the
files' SHA-256 are computed on a thread of their own, beside the compressor's worker.

The files directory is a tenant's path on the runner's host, so it is confined like a
local destination: relative to ``<files root>/<organization id>/``, no absolute path, no
``..``, every component opened with ``O_NOFOLLOW``. Inside it nothing is followed either:
a symbolic link is stored as a symbolic link (its target as text, never read), and what
is neither a file, a directory nor a link (sockets, FIFOs, devices) is left out and named
in the manifest's ``skipped``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

import psycopg
from tidemark_contracts.backup import DatabaseTarget, local_path_problem
from tidemark_platform.logging import get_logger

from tidemark_backup_runner.pgtools import (
    APPLICATION_NAME,
    CHUNK,
    CompressedArtifact,
    DumpError,
    DumpResult,
    TargetError,
    WatchedOutput,
    connect,
    libpq_env,
    require_password,
    run_streaming,
    target_conninfo,
)
from tidemark_backup_runner.storage import ArtifactSink

log = get_logger(__name__)

PGDATA = "pgdata"
FILES = "files"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# A directory postgres starts from must be its owner's only (it refuses anything wider).
PGDATA_MODE = 0o700
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the type check must not block the backup.
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class FilesError(TargetError):
    """The environment's files directory cannot be backed up as registered; permanent.
    The message never repeats the registered path (errors become events, kept forever)."""


def check_files_directory(root: Path | None, organization_id: UUID, files_path: str) -> None:
    """Refuse a files directory that is not confined to the organization's directory
    under the operator's files root, before anything else of the backup runs."""
    with files_directory(root, organization_id, files_path):
        pass


@contextlib.contextmanager
def files_directory(root: Path | None, organization_id: UUID, files_path: str) -> Iterator[int]:
    """A descriptor of ``<root>/<organization id>/<files_path>``, reached without
    following a symbolic link in any component below the root (the root is the
    operator's and trusted as it is)."""
    if root is None:
        raise FilesError(
            "the environment has a files directory (filesPath), but this runner has no files "
            "root configured (TIDEMARK_BACKUP_RUNNER_FILES_ROOT): full backups of it are "
            "refused"
        )
    problem = local_path_problem(files_path)
    if problem is not None:
        raise FilesError(f"filesPath {problem}")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise FilesError(
            f"the runner's files root cannot be opened: {exc.strerror or exc}"
        ) from None
    try:
        for index, name in enumerate([str(organization_id), *files_path.split("/")]):
            try:
                child = os.open(name, _OPEN_DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise _component_error(fd, name, index, exc) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _component_error(parent: int, name: str, index: int, exc: OSError) -> FilesError:
    what = "the organization's files directory" if index == 0 else "the files directory (filesPath)"
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return FilesError(
            f"{what} is or passes through a symbolic link, which the runner does not follow"
        )
    if exc.errno == errno.ENOENT:
        return FilesError(f"{what} does not exist under the runner's files root")
    if exc.errno == errno.ENOTDIR:
        return FilesError(f"{what} is not a directory")
    return FilesError(f"{what} cannot be opened: {exc.strerror or exc}")


def estimate_cluster_size(target: DatabaseTarget, password: str) -> int | None:
    """Every database's size: about what pg_basebackup sends (WAL aside); None if unknown."""
    try:
        with connect(target, password, statement_timeout_ms=10_000) as conn:
            row = conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()
    except (psycopg.Error, TargetError):
        return None  # pg_basebackup will report the real reason
    return int(row[0]) if row and row[0] is not None else None


class _Hashing:
    """Reads ``size`` bytes of ``source``, hashing them; a source that ends early (a file
    truncated while read) is padded with zeros, one that grew is cut at ``size``: the
    archive and its manifest always agree with each other."""

    def __init__(self, read: Callable[[int], bytes], size: int, on_read: Callable[[int], None]):
        self._read = read
        self._left = size
        self._on_read = on_read
        self.digest = hashlib.sha256()
        self.short = False

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        data = self._read(wanted) if wanted else b""
        if len(data) < wanted:
            self.short = True
            data += b"\0" * (wanted - len(data))
        self._left -= len(data)
        self.digest.update(data)
        self._on_read(len(data))
        return data


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """An error reading the files directory is the backup's reason (not a storage error)."""
    try:
        yield
    except OSError as exc:
        raise FilesError(f"{path} cannot be read: {exc.strerror or exc}") from None


def _safe_member_name(name: str) -> str:
    """A pg_basebackup member's name, refused when it could land outside ``pgdata/`` on
    extraction (the server is the tenant's, and may send anything)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DumpError("pg_basebackup sent an archive member with an unsafe name")
    return str(path)


def _lsn_of_label(label: bytes) -> tuple[str | None, int | None]:
    start = timeline = None
    for line in label.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key == "START WAL LOCATION":
            start = value.split()[0] if value.split() else None
        elif key == "START TIMELINE" and value.strip().isdigit():
            timeline = int(value.strip())
    return start, timeline


BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(tarfile.RECORDSIZE)
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
# Pieces at least this large go to the compressor as they are (a view of what was read);
# smaller ones (headers, the many 8 kB files of a cluster) are gathered first.
_DIRECT = 1 << 16
_CHECKSUM = slice(148, 156)
_NAME = slice(0, 100)
_PREFIX = slice(345, 500)
_USTAR = slice(257, 265)


def _padding(size: int) -> int:
    return -size % BLOCK


def _renamed_header(header: bytes, name: str) -> bytes | None:
    """pg_basebackup's own ustar header with only the name changed (and its checksum
    recomputed): every other field stays byte for byte what the server sent. None when
    the name does not fit ustar's 100 bytes as plain ASCII (a PAX header is needed then)."""
    if header[_USTAR] != tarfile.POSIX_MAGIC or not name.isascii() or len(name) > 100:
        return None
    block = bytearray(header)
    block[_NAME] = name.encode("ascii").ljust(100, b"\0")
    block[_PREFIX] = bytes(155)
    block[_CHECKSUM] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


class _TarInput:
    """pg_basebackup's tar stream, read in large chunks and handed on as views of them
    (member data is never copied on its way to the compressor and the hash)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._view = memoryview(b"")
        self._pos = 0

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size:
            if self._pos == len(self._view):
                chunk = self._read(CHUNK)
                if not chunk:
                    raise DumpError("pg_basebackup's output ended in the middle of its archive")
                self._view = memoryview(chunk)
                self._pos = 0
            piece = self._view[self._pos : self._pos + size]
            self._pos += len(piece)
            size -= len(piece)
            yield piece

    def exact(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass

    def drain(self) -> None:
        """Read to the end, so pg_basebackup finishes writing (and exits) on its own."""
        while self._read(CHUNK):
            pass


class _ReadAhead:
    """Reads pg_basebackup's output on a thread of its own, up to ``depth`` chunks ahead
    of the re-packing: the tool never waits for the compressor (a plain pipe holds 64 kB),
    as it never waits for ``zstd``'s own reading thread in ``pg_basebackup | zstd``.
    Reading a pipe releases the GIL, so the two overlap."""

    def __init__(self, read: Callable[[int], bytes], depth: int = 16) -> None:
        self._read = read
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg_basebackup-read")
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException
        while not self._stopped.is_set():
            try:
                item = self._read(CHUNK)
            except BaseException as exc:  # handed to the reading side, which raises it
                item = exc
            while not self._stopped.is_set():
                try:
                    self._chunks.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def read(self, _size: int = -1) -> bytes:
        if self._ended:
            return b""
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if not item:
            self._ended = True
        return item

    def stop(self) -> None:
        """No more reading: the thread ends once its current read returns (at the
        latest when the tool's output is closed)."""
        self._stopped.set()


class _Digests:
    """The members' SHA-256, computed on a thread of its own: hashing releases the GIL
    (for pieces over 2 kB), so it runs beside the reading and the feeding of the
    compressor instead of in turn with them (hashing in line made the full backup take
    about twice as long as ``pg_basebackup | zstd``). A digest is only ever updated on
    this thread, in the order of the calls; ``record`` writes it into its manifest entry."""

    def __init__(self, depth: int = 32) -> None:
        self._work: queue.Queue[tuple[Any, bytes | memoryview | dict[str, Any]] | None] = (
            queue.Queue(maxsize=depth)
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="member-sha256")
        self._thread.start()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            if self._error is not None:
                continue  # keep taking work, so no caller ever waits on a full queue
            digest, what = item
            try:
                if isinstance(what, dict):
                    what["sha256"] = digest.hexdigest()
                else:
                    digest.update(what)
            except BaseException as exc:  # raised by ``close``
                self._error = exc

    def update(self, digest: Any, data: bytes | memoryview) -> None:
        self._work.put((digest, data))

    def record(self, digest: Any, entry: dict[str, Any]) -> None:
        self._work.put((digest, entry))

    def close(self) -> None:
        """Every digest asked for is done when this returns; idempotent."""
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        if self._error is not None:
            raise DumpError("hashing the archive's files failed") from self._error


class _TarOutput:
    """The new archive's bytes into the compressor: small pieces gathered into chunks,
    large ones passed as they are."""

    def __init__(self, artifact: CompressedArtifact) -> None:
        self._artifact = artifact
        self._pending = bytearray()
        self.offset = 0

    def add(self, data: bytes | memoryview) -> None:
        size = len(data)
        if size >= _DIRECT:
            self.flush()
            self._artifact.write(data)
        else:
            self._pending += data
            if len(self._pending) >= CHUNK:
                self.flush()
        self.offset += size

    def pad(self) -> None:
        """Zeros up to the next 512-byte block."""
        self.add(_ZEROS[: _padding(self.offset)])

    def flush(self) -> None:
        if self._pending:
            self._artifact.write(self._pending)
            self._pending = bytearray()

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks), padded to a whole record as tar
        writes it, and everything still gathered."""
        self.add(_ZEROS[: 2 * BLOCK])
        self.add(_ZEROS[: -self.offset % tarfile.RECORDSIZE])
        self.flush()


def _pax_records(body: bytes) -> dict[str, str]:
    """A PAX extended header's ``length key=value\\n`` records."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        length_text, space, _ = body[pos : pos + 20].partition(b" ")
        if not space or not length_text.isdigit() or int(length_text) <= 0:
            raise DumpError("pg_basebackup sent an archive with an unreadable extended header")
        length = int(length_text)
        record = body[pos + len(length_text) + 1 : pos + length]
        key, equals, value = record.rstrip(b"\n").partition(b"=")
        if not equals:
            raise DumpError("pg_basebackup sent an archive with an unreadable extended header")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


class _Repacker:
    """Writes the new archive: members in, ``manifest.json`` out at the end.

    pg_basebackup's tar is re-packed without ``tarfile``'s stream machinery: each header
    is parsed (``TarInfo.frombuf``: checksum, numbers) and rewritten with ``pgdata/``
    before the name, and the member's data goes from the pipe to the compressor as views
    of what was read, hashed on the way. Names that do not fit a ustar header get a PAX
    header (``TarInfo.tobuf``), as every member of the files directory does."""

    def __init__(self, artifact: CompressedArtifact, on_progress: Callable[[int], None]) -> None:
        self._out = _TarOutput(artifact)
        self._on_progress = on_progress
        self._digests = _Digests()
        self.done = 0
        self.entries: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.wal_start_lsn: str | None = None
        self.wal_end_lsn: str | None = None
        self.timeline: int | None = None
        # backup_label's START TIMELINE: the timeline PITR from this base replays.
        self.start_timeline: int | None = None
        self.saw_manifest = False

    def _count(self, size: int) -> None:
        self.done += size
        self._on_progress(self.done)

    def _header(self, info: tarfile.TarInfo) -> None:
        self._out.add(info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS))

    def _add(self, info: tarfile.TarInfo, read: Callable[[int], bytes] | None = None) -> None:
        self._header(info)
        if info.isreg() and read is not None:
            hashing = _Hashing(read, info.size, self._count)
            while data := hashing.read(CHUNK):
                self._out.add(data)
            self._out.pad()
            entry: dict[str, Any] = {
                "path": info.name,
                "size": info.size,
                "sha256": hashing.digest.hexdigest(),
            }
            if hashing.short:
                # Shrunk while it was read: the archive holds it padded with zeros (the
                # manifest's digest is of those bytes), which the manifest says, since
                # `sha256sum -c` alone would call the padded copy good.
                entry["truncatedWhileRead"] = True
                log.warning("file_truncated_while_read", path=info.name)
            self.entries.append(entry)

    def directory(
        self, name: str, mode: int, mtime: float, owner: tarfile.TarInfo | None = None
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.mtime = int(mtime)
        if owner is not None:
            info.uid, info.gid, info.uname, info.gname = (
                owner.uid,
                owner.gid,
                owner.uname,
                owner.gname,
            )
        self._add(info)

    def _next_member(self, source: _TarInput) -> tuple[tarfile.TarInfo, bytes | None] | None:
        """The next member's header (None at the end of the archive), with the raw
        header block when it can be reused as it is (no long name, no extended header)."""
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            block = source.exact(BLOCK)
            if block == _ZEROS[:BLOCK]:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
            except tarfile.HeaderError:
                raise DumpError(
                    "pg_basebackup sent an archive header this runner cannot read"
                ) from None
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
                body = source.exact(info.size)
                source.skip(_padding(info.size))
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = body.rstrip(b"\0").decode(_ENCODING, _ERRORS)
                elif info.type == tarfile.XHDTYPE:
                    pax = _pax_records(body)
                continue
            if not long_name and not pax:
                return info, block
            info.name = pax.get("path", long_name or info.name)
            if info.isdir():
                info.name = info.name.rstrip("/")
            if "size" in pax:
                if not pax["size"].isdigit():
                    raise DumpError("pg_basebackup sent an archive with an unreadable size")
                info.size = int(pax["size"])
            return info, None

    def pgdata(self, output: WatchedOutput) -> None:
        """Copy pg_basebackup's tar from ``output`` under ``pgdata/``."""
        ahead = _ReadAhead(output.read)
        try:
            self._pgdata(_TarInput(ahead.read))
        finally:
            ahead.stop()

    def _pgdata(self, source: _TarInput) -> None:
        first = True
        while (found := self._next_member(source)) is not None:
            member, block = found
            if first:
                # ``pgdata/`` itself belongs to whoever owns the server's files, 0700.
                self.directory(PGDATA, PGDATA_MODE, member.mtime, owner=member)
                first = False
            name = _safe_member_name(member.name)
            member.name = f"{PGDATA}/{name}"
            if not (member.isdir() or member.isreg()):
                # Links appear only with extra tablespaces, which streaming to stdout
                # cannot take anyway: anything else is not a data directory we can restore.
                raise DumpError(
                    "pg_basebackup sent an archive member that is neither a file nor a "
                    "directory (extra tablespaces are not supported)"
                )
            header = _renamed_header(block, member.name) if block is not None else None
            if header is None:
                self._header(member)
            else:
                self._out.add(header)
            if member.isreg():
                self._member_data(source, member, name)
        if first:
            raise DumpError("pg_basebackup sent an empty archive")
        source.drain()
        if not self.saw_manifest:
            raise DumpError("pg_basebackup sent no backup_manifest (it holds the WAL range)")

    def _member_data(self, source: _TarInput, member: tarfile.TarInfo, name: str) -> None:
        digest = hashlib.sha256()
        if name in ("backup_label", "backup_manifest"):
            body = source.exact(member.size)
            self._note(name, body)
            self._digests.update(digest, body)
            self._out.add(body)
            self._count(len(body))
        else:
            for piece in source.pieces(member.size):
                self._digests.update(digest, piece)
                self._out.add(piece)
                self._count(len(piece))
        source.skip(_padding(member.size))
        self._out.pad()
        entry: dict[str, Any] = {"path": member.name, "size": member.size, "sha256": None}
        self.entries.append(entry)
        self._digests.record(digest, entry)

    def _note(self, name: str, body: bytes) -> None:
        if name == "backup_label":
            start, timeline = _lsn_of_label(body)
            self.wal_start_lsn = self.wal_start_lsn or start
            self.timeline = self.timeline or timeline
            self.start_timeline = self.start_timeline or timeline
            return
        self.saw_manifest = True
        try:
            ranges = json.loads(body)["WAL-Ranges"]
            self.wal_start_lsn = str(ranges[0]["Start-LSN"])
            self.wal_end_lsn = str(ranges[-1]["End-LSN"])
            self.timeline = int(ranges[-1]["Timeline"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise DumpError("pg_basebackup's backup_manifest has no readable WAL range") from None

    def files(self, fd: int, prefix: str) -> None:
        """Copy the directory open at ``fd`` under ``prefix``, following nothing."""
        with _reading(prefix):
            names = sorted(os.listdir(fd))
        for name in names:
            path = f"{prefix}/{name}"
            with _reading(path):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            info = tarfile.TarInfo(path)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            info.uid, info.gid = st.st_uid, st.st_gid
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                with _reading(path):
                    info.linkname = os.readlink(name, dir_fd=fd)
                self._add(info)
                self.entries.append({"path": path, "type": "symlink", "target": info.linkname})
            elif stat.S_ISDIR(st.st_mode):
                with _reading(path):
                    child = os.open(name, _OPEN_DIRECTORY, dir_fd=fd)
                try:
                    info.type = tarfile.DIRTYPE
                    self._add(info)
                    self.files(child, path)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                self._file(fd, name, info)
            else:
                self.skipped.append(path)

    def _file(self, fd: int, name: str, info: tarfile.TarInfo) -> None:
        with _reading(info.name):
            handle = os.open(name, _OPEN_FILE, dir_fd=fd)

        def read(size: int) -> bytes:
            with _reading(info.name):
                return os.read(handle, min(size, CHUNK))

        try:
            st = os.fstat(handle)
            if not stat.S_ISREG(st.st_mode):  # swapped since it was listed
                self.skipped.append(info.name)
                return
            os.set_blocking(handle, True)
            info.size = st.st_size
            self._add(info, read)
        finally:
            os.close(handle)

    def close(self) -> None:
        """Wait for the last digests (every entry has its ``sha256`` then)."""
        self._digests.close()

    def manifest(self, backup_id: UUID, created: datetime) -> None:
        self.close()
        body = json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "backupId": str(backup_id),
                "created": created.isoformat().replace("+00:00", "Z"),
                "walStartLsn": self.wal_start_lsn,
                "walEndLsn": self.wal_end_lsn,
                "timeline": self.timeline,
                "files": self.entries,
                "skipped": self.skipped,
            },
            indent=1,
        ).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(body)
        info.mode = 0o644
        info.mtime = int(created.timestamp())
        self._header(info)
        self._out.add(body)
        self._out.pad()
        self._out.close()


def take_full_backup(
    target: DatabaseTarget,
    password: str,
    writers: Sequence[ArtifactSink],
    on_progress: Callable[[int], None],
    *,
    backup_id: UUID,
    created: datetime,
    files: tuple[Path | None, UUID, str] | None = None,
    pg_basebackup: str,
    zstd_level: int = 3,
    zstd_threads: int = 1,
    max_rate_kb: int | None = None,
    stall_timeout_seconds: float = 900.0,
    on_process: Callable[[subprocess.Popen[bytes]], None] = lambda _: None,
    application_name: str = APPLICATION_NAME,
) -> DumpResult:
    """Stream a full backup of ``target``'s cluster (and of ``files``: the files root, the
    organization and the registered filesPath) into ``writers``; the result names the
    WAL range. Raises ``DumpError`` (``FilesError`` for the files directory) saying why;
    the caller aborts the writers then. The cluster is reached as pg_dump reaches its
    database (``target_conninfo``; the password only in the tool's environment)."""
    conninfo = target_conninfo(target, application_name=application_name)
    env = libpq_env(require_password(password))
    command = [
        pg_basebackup,
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        # Start at once rather than after a spread checkpoint (minutes on a quiet server).
        "--checkpoint=fast",
        "--no-password",
        f"--label=tidemark {backup_id}",
        f"--dbname={conninfo}",
    ]
    if max_rate_kb is not None:
        command.append(f"--max-rate={max_rate_kb}k")
    artifact = CompressedArtifact(writers, zstd_level=zstd_level, zstd_threads=zstd_threads)
    repacker = _Repacker(artifact, on_progress)
    try:
        run_streaming(
            command,
            env,
            repacker.pgdata,
            tool="pg_basebackup",
            stall_timeout_seconds=stall_timeout_seconds,
            on_process=on_process,
        )
        if files is not None:
            with files_directory(*files) as fd:
                st = os.fstat(fd)
                repacker.directory(FILES, stat.S_IMODE(st.st_mode), st.st_mtime)
                repacker.files(fd, FILES)
        repacker.manifest(backup_id, created)
        result = artifact.finish()
    except OSError as exc:
        artifact.abandon()
        raise DumpError(f"writing the artifact failed: {exc.strerror or exc}") from None
    except BaseException:
        artifact.abandon()
        raise
    finally:
        # The hashing thread ends with the backup (after a failure, its own error would
        # only hide the reason already being raised).
        with contextlib.suppress(DumpError):
            repacker.close()
    return DumpResult(
        size_bytes=result.size_bytes,
        checksum=result.checksum,
        raw_bytes=result.raw_bytes,
        wal_start_lsn=repacker.wal_start_lsn,
        wal_end_lsn=repacker.wal_end_lsn,
        wal_timeline=repacker.start_timeline,
    )
