"""The full backup's re-packing of pg_basebackup's tar (unit: tar streams built here with
``tarfile``, re-packed through the real compressor, read back with ``tarfile``).

pg_basebackup writes plain ustar; these streams also carry what a tar may legally hold
(GNU long names, PAX headers, a ustar prefix), reads that end anywhere, and damage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard
from tidemark_backup_runner.basebackup import _Digests, _ReadAhead, _Repacker
from tidemark_backup_runner.pgtools import CHUNK, CompressedArtifact, DumpError, WatchedOutput

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MTIME = 1_790_000_000
WAL = {"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}
LABEL = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n"


class Captured:
    def __init__(self) -> None:
        self.data = io.BytesIO()

    def open(self) -> None:
        self.data = io.BytesIO()

    def write(self, chunk: bytes) -> None:
        self.data.write(chunk)


class Pipe(io.RawIOBase):
    """A tool's stdout: reads of at most ``step`` bytes (a pipe hands out what it has),
    optionally failing once ``fail_at`` bytes were read."""

    def __init__(self, data: bytes, step: int | None = None, fail_at: int | None = None):
        self._data = data
        self._step = step
        self._fail_at = fail_at
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        if self._fail_at is not None and self.pos >= self._fail_at:
            raise OSError(5, "Input/output error")
        size = len(self._data) - self.pos if size < 0 else size
        if self._step is not None:
            size = min(size, self._step)
        chunk = self._data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


def member(name: str, data: bytes | None = None, **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 26, 27, "postgres", "pg"
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o700
    else:
        info.mode, info.size = 0o600, len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data or b""


def cluster(*extra: tuple[tarfile.TarInfo, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """What pg_basebackup sends, in its order: directories, files, the manifest last."""
    return [
        member("base", None),
        member("base/1", None),
        member("PG_VERSION", b"15\n"),
        member("backup_label", LABEL),
        *extra,
        member("backup_manifest", json.dumps(WAL).encode()),
    ]


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def repack(raw: bytes, step: int | None = None) -> tuple[list[tuple[tarfile.TarInfo, bytes]], Any]:
    writer = Captured()
    artifact = CompressedArtifact([writer])
    progress: list[int] = []
    repacker = _Repacker(artifact, progress.append)
    try:
        repacker.pgdata(WatchedOutput(Pipe(raw, step)))  # type: ignore[arg-type]
        repacker.manifest(uuid.uuid4(), T0)
    finally:
        repacker.close()
    result = artifact.finish()
    stored = writer.data.getvalue()
    assert result.size_bytes == len(stored)
    assert result.checksum == f"sha256:{hashlib.sha256(stored).hexdigest()}"
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read()
    assert result.raw_bytes == len(plain)
    assert len(plain) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = [
            (m, tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        ]
    manifest = json.loads(members[-1][1])
    assert members[-1][0].name == "manifest.json"
    if progress:
        assert progress == sorted(progress)
    return members[:-1], manifest


def assert_same_members(
    source: list[tuple[tarfile.TarInfo, bytes]],
    repacked: list[tuple[tarfile.TarInfo, bytes]],
    manifest: dict[str, Any],
) -> None:
    (top, _), *rest = repacked
    assert (top.name, top.isdir(), top.mode, top.uid, top.uname) == (
        "pgdata",
        True,
        0o700,
        26,
        "postgres",
    )
    assert len(rest) == len(source)
    files = {entry["path"]: entry for entry in manifest["files"]}
    for (want, data), (got, copied) in zip(source, rest, strict=True):
        assert got.name == f"pgdata/{want.name}"
        for field in ("type", "mode", "uid", "gid", "uname", "gname", "mtime", "size"):
            assert getattr(got, field) == getattr(want, field), field
        assert copied == data
        if want.isreg():
            assert files[got.name] == {
                "path": got.name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    assert len(files) == sum(1 for info, _ in source if info.isreg())
    assert (manifest["walStartLsn"], manifest["walEndLsn"], manifest["timeline"]) == (
        "0/2000028",
        "0/2000100",
        1,
    )


SIZES = [0, 1, 511, 512, 513, 8192, CHUNK - 1, CHUNK + 700, 2 * CHUNK + 513]


@pytest.mark.parametrize(
    "step", [None, 777, 100_000], ids=["whole-chunks", "777B-reads", "100kB-reads"]
)
def test_every_member_is_copied_under_pgdata_with_its_header_and_digest(step: int | None) -> None:
    files = [member(f"base/1/{n}", os.urandom(size)) for n, size in enumerate(SIZES)]
    source = cluster(*files)

    repacked, manifest = repack(tar_of(source), step)

    assert_same_members(source, repacked, manifest)


LONG_DIR = "pg_tblspc_" + "d" * 60
LONG_NAMES = [
    # fits ustar's 100 bytes as sent, not with "pgdata/" before it
    "base/1/" + "x" * 92,
    # needs the ustar prefix field (or a GNU/PAX header) already as sent
    f"{LONG_DIR}/{LONG_DIR}/file",
    # not ASCII
    "base/1/r\u00e9sum\u00e9",
]


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_long_and_non_ascii_names_survive_the_prefix(fmt: int) -> None:
    names = LONG_NAMES if fmt != tarfile.USTAR_FORMAT else LONG_NAMES[:2]
    long_dirs = [member(LONG_DIR, None), member(f"{LONG_DIR}/{LONG_DIR}", None)]
    files = [member(name, os.urandom(600)) for name in names]
    source = cluster(*long_dirs, *files)

    repacked, manifest = repack(tar_of(source, fmt), step=333)

    assert_same_members(source, repacked, manifest)
    assert any(len(m.name) > 100 for m, _ in repacked)


def test_a_pax_size_is_the_members_size() -> None:
    # The header's own size field says 3; the PAX record (what a reader must use) says 5.
    info, _ = member("base/1/sized", b"abcde")
    info.pax_headers = {"size": "5"}
    raw = bytearray(tar_of(cluster((info, b"abcde")), tarfile.PAX_FORMAT))
    header = raw.index(b"base/1/sized\0", raw.index(b"size=5"))
    block = bytearray(raw[header : header + 512])
    block[124:136] = b"%011o\0" % 3
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    raw[header : header + 512] = block

    repacked, manifest = repack(bytes(raw))

    sized = next(data for m, data in repacked if m.name == "pgdata/base/1/sized")
    assert sized == b"abcde"
    assert {"path": "pgdata/base/1/sized", "size": 5} in [
        {k: e[k] for k in ("path", "size")} for e in manifest["files"]
    ]


def test_what_follows_the_end_of_the_archive_is_read_to_the_end() -> None:
    raw = tar_of(cluster()) + bytes(40 * CHUNK)  # more than the read-ahead holds
    pipe = Pipe(raw)
    repacker = _Repacker(CompressedArtifact([Captured()]), lambda _: None)

    repacker.pgdata(WatchedOutput(pipe))  # type: ignore[arg-type]
    repacker.close()

    # pg_basebackup is never left blocked on a pipe nobody reads
    assert pipe.pos == len(raw)


def refused(raw: bytes, step: int | None = None) -> str:
    with pytest.raises(DumpError) as caught:
        repack(raw, step)
    return str(caught.value)


def test_a_stream_cut_anywhere_is_an_error_not_an_archive() -> None:
    raw = tar_of(cluster(member("base/1/big", os.urandom(CHUNK + 4000))))
    big_data = raw.index(b"base/1/big\0") + 512
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    end_marker = last.offset_data + -(-last.size // 512) * 512  # every member, no marker
    for cut in (0, 100, 512, big_data + 10, big_data + CHUNK + 100, end_marker):
        assert "ended in the middle of its archive" in refused(raw[:cut], step=4096), cut


def test_a_damaged_header_is_refused() -> None:
    raw = bytearray(tar_of(cluster()))
    second = raw.index(b"base/1/\0")
    raw[second + 120] ^= 0x11  # inside the uid field: the checksum no longer matches
    assert refused(bytes(raw)) == "pg_basebackup sent an archive header this runner cannot read"


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "base/../../up", "."])
def test_a_member_that_could_land_outside_pgdata_is_refused(name: str) -> None:
    message = refused(tar_of(cluster(member(name, b"x"))))
    assert message == "pg_basebackup sent an archive member with an unsafe name"
    assert name not in message


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_a_member_that_is_not_a_file_or_directory_is_refused(kind: bytes) -> None:
    link, _ = member("pg_tblspc/16384", None, type=kind, linkname="/srv/tablespace", mode=0o777)
    assert "neither a file nor a directory" in refused(tar_of(cluster((link, b""))))


def test_an_empty_archive_and_one_without_backup_manifest_are_refused() -> None:
    assert refused(bytes(1024)) == "pg_basebackup sent an empty archive"
    without = tar_of(cluster()[:-1])
    assert "sent no backup_manifest" in refused(without)


def pax_block(body: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return member("././@PaxHeader", body, type=tarfile.XHDTYPE)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"garbage\n", "unreadable extended header"),
        (b"12 novalue\n", "unreadable extended header"),
        (b"12 size=abc\n", "unreadable size"),
    ],
)
def test_an_unreadable_extended_header_is_refused(body: bytes, reason: str) -> None:
    raw = tar_of(cluster(pax_block(body), member("base/1/after", b"data")))
    assert reason in refused(raw)


def test_a_read_error_reaches_the_repacker() -> None:
    raw = tar_of(cluster(member("base/1/big", os.urandom(3 * CHUNK))))
    repacker = _Repacker(CompressedArtifact([Captured()]), lambda _: None)
    pipe = Pipe(raw, fail_at=CHUNK)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            repacker.pgdata(WatchedOutput(pipe))  # type: ignore[arg-type]
    finally:
        repacker.close()


def test_read_ahead_ends_its_thread_when_stopped_while_the_queue_is_full() -> None:
    ahead = _ReadAhead(lambda _size: b"x" * 10, depth=2)
    assert ahead.read() == b"x" * 10
    ahead.stop()
    ahead._thread.join(timeout=5)
    assert not ahead._thread.is_alive()


class Broken:
    def update(self, data: bytes) -> None:
        raise MemoryError

    def hexdigest(self) -> str:  # pragma: no cover - never reached
        return ""


def test_a_failed_digest_fails_the_backup_instead_of_writing_a_wrong_manifest() -> None:
    digests = _Digests(depth=1)
    entry: dict[str, Any] = {"sha256": None}
    for _ in range(5):  # more than the queue holds: nobody waits forever on a dead thread
        digests.update(Broken(), b"x" * 4096)
    digests.record(hashlib.sha256(), entry)
    with pytest.raises(DumpError, match="hashing the archive's files failed"):
        digests.close()


def test_a_file_that_shrinks_while_read_is_marked_in_the_manifest() -> None:
    """The archive keeps the size the header promised (padded with zeros), and the manifest
    says so: its digest alone would call the padded copy good."""
    writer = Captured()
    artifact = CompressedArtifact([writer])
    repacker = _Repacker(artifact, lambda _: None)
    left = [b"abcd"]

    def read(_size: int) -> bytes:
        return left.pop() if left else b""  # 4 of the 10 bytes listed, then the end

    shrunk, whole = tarfile.TarInfo("files/shrunk"), tarfile.TarInfo("files/whole")
    shrunk.size, whole.size = 10, 3
    try:
        repacker._add(shrunk, read)
        repacker._add(whole, io.BytesIO(b"xyz").read)
        repacker.manifest(uuid.uuid4(), T0)
    finally:
        repacker.close()
    artifact.finish()
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(writer.data.getvalue())).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        assert tar.extractfile("files/shrunk").read() == b"abcd" + b"\0" * 6  # type: ignore[union-attr]
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    assert by_path["files/shrunk"]["truncatedWhileRead"] is True
    assert by_path["files/shrunk"]["sha256"] == hashlib.sha256(b"abcd" + b"\0" * 6).hexdigest()
    assert "truncatedWhileRead" not in by_path["files/whole"]
