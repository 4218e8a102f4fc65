"""pg_dump, streamed through zstd and SHA-256 into every destination at once."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import psycopg
import zstandard
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tidemark_contracts.backup import DatabaseTarget

from tidemark_backup_runner.storage import ArtifactSink

CHUNK = 1 << 20


class DumpError(Exception):
    """pg_dump (or writing its output) failed; the message says why, without secrets."""


@dataclass(frozen=True)
class DumpResult:
    size_bytes: int
    checksum: str
    raw_bytes: int
    # A full backup's WAL range (``basebackup``); None for a dump.
    wal_start_lsn: str | None = None
    wal_end_lsn: str | None = None
    wal_timeline: int | None = None


def find_tool(name: str, bin_dir: str | None = None) -> str:
    """The tool from ``bin_dir``, else the newest PostgreSQL's, else the PATH's."""
    candidates = [Path(bin_dir) / name] if bin_dir else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DumpError(f"{name} not found (set TIDEMARK_BACKUP_RUNNER_PG_BIN_DIR)")
    return found


APPLICATION_NAME = "tidemark-backup-runner"


def dump_application_name(backup_id: UUID, attempt: int) -> str:
    """pg_dump's ``application_name``: which backup and attempt a server session serves
    (at most 63 bytes, PostgreSQL's limit; this is 55 at most for attempts below 10^4)."""
    return f"tidemark-backup {backup_id} {attempt}"


class TargetError(DumpError):
    """The database settings (or the password) cannot be used as they are: no connection
    was attempted, and retrying cannot help. The message names the field, not its value."""


CONNECT_TIMEOUT_SECONDS = 10
# libpq's files of the connecting user (~/.pgpass, ~/.postgresql/postgresql.key, root.crt,
# root.crl): named explicitly, inside an empty directory of the runner, so no default
# reaches the runner's own credentials on a tenant's connection.
LIBPQ_FILES = ("passfile", "sslcert", "sslkey", "sslrootcert", "sslcrl")
# Every other connection option libpq would take from a PG* variable of the runner's
# environment, fixed to libpq's own default for the runner's own sessions (pg_dump gets no
# PG* variables at all). A test checks this covers every such option of the linked libpq.
SESSION_OPTIONS = {
    "hostaddr": "",
    "client_encoding": "UTF8",
    "channel_binding": "prefer",
    "sslmode": "prefer",
    "sslnegotiation": "postgres",
    "sslcompression": "0",
    "sslcertmode": "allow",
    "sslsni": "1",
    "requirepeer": "",
    # A password, or nothing at all; never a Kerberos/GSS ticket of the runner's.
    "require_auth": "password,md5,scram-sha-256,none",
    "min_protocol_version": "3.0",
    "max_protocol_version": "3.0",
    "ssl_min_protocol_version": "TLSv1.2",
    "ssl_max_protocol_version": "",
    "gssencmode": "disable",
    "krbsrvname": "postgres",
    "gsslib": "",
    "gssdelegation": "0",
    "target_session_attrs": "any",
    "load_balance_hosts": "disable",
}
_known_options = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())
_nowhere: Path | None = None


def nowhere() -> Path:
    """An empty private directory: the home of libpq's files on tenants' connections."""
    global _nowhere
    if _nowhere is None or not _nowhere.is_dir():
        _nowhere = Path(tempfile.mkdtemp(prefix="tidemark-libpq-"))
    return _nowhere


def check_target(target: DatabaseTarget) -> None:
    """Refuse settings libpq would read as more than themselves (a ``dbname`` that is a
    connection string or URI, a socket directory as ``host``), before any connection."""
    problems = target.problems()
    if problems:
        raise TargetError(
            "unusable database settings: "
            + "; ".join(f"database.{field} {reason}" for field, reason in problems.items())
        )


def require_password(password: str | None) -> str:
    """The password, or a permanent error: libpq would otherwise look for one elsewhere
    (a password file, the runner's environment), so a missing one is never a fallback."""
    if password is None:
        raise TargetError(
            "database.passwordRef is not set or resolves to nothing: a backup needs the "
            "database's password"
        )
    if password == "":
        raise TargetError("database.passwordRef resolves to an empty password")
    if "\x00" in password:
        raise TargetError("database.passwordRef resolves to a password with a NUL character")
    return password


def target_conninfo(
    target: DatabaseTarget, *, application_name: str, extra: dict[str, str] | None = None
) -> str:
    """One libpq connection string of ``target``'s validated parts, libpq's files pointed
    into an empty directory, and ``extra``; checked by libpq's own parser to hold exactly
    these options with exactly these values (make_conninfo quotes every value)."""
    check_target(target)
    home = nowhere()
    parts = {
        "host": target.host,
        "port": str(target.port),
        "dbname": target.dbname,
        "user": target.user,
        **{key: str(home / key) for key in LIBPQ_FILES},
        "gssencmode": "disable",
        "application_name": application_name,
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
        **(extra or {}),
    }
    try:
        conninfo = make_conninfo("", **parts)
        parsed = conninfo_to_dict(conninfo)
    except psycopg.Error:
        raise TargetError("unusable database settings: libpq cannot parse them") from None
    if parsed != parts:
        raise TargetError("unusable database settings: libpq reads them differently")
    return conninfo


def libpq_env(password: str) -> dict[str, str]:
    """pg_dump's whole environment: an allow-list, not the runner's environment minus PG*.

    The password travels here only: never argv (visible in ps), never an event or a log
    line. ``HOME`` is empty, so nothing of the runner's (~/.pgpass, ~/.pg_service.conf,
    ~/.postgresql) applies; messages are in English, for the reasons a backup records.
    """
    return {"HOME": str(nowhere()), "LC_ALL": "C", "PGPASSWORD": password}


def connect(
    target: DatabaseTarget, password: str, *, statement_timeout_ms: int
) -> psycopg.Connection[tuple[Any, ...]]:
    """A short session of the runner's own on the database it backs up.

    libpq runs in this process, so the runner's PG* variables would fill every option not
    given: each is given (``SESSION_OPTIONS``). ``PGSERVICE`` cannot be overridden per
    connection (its service would fill the rest), so it is refused.
    """
    if os.environ.get("PGSERVICE"):
        raise TargetError(
            "the runner's environment sets PGSERVICE, which would apply to tenants' "
            "connections: unset it"
        )
    options = {k: v for k, v in SESSION_OPTIONS.items() if k in _known_options}
    options["sslcrldir"] = str(nowhere() / "sslcrldir")
    options["options"] = f"-c statement_timeout={statement_timeout_ms}"
    options["password"] = require_password(password)
    conninfo = target_conninfo(
        target,
        application_name=APPLICATION_NAME,
        extra={k: v for k, v in options.items() if k in _known_options},
    )
    return psycopg.connect(conninfo)


def estimate_size(target: DatabaseTarget, password: str) -> int | None:
    """The database's size, to turn bytes dumped into a rough percentage; None if unknown."""
    try:
        with connect(target, password, statement_timeout_ms=10_000) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    except (psycopg.Error, TargetError):
        return None  # pg_dump will report the real reason
    return int(row[0]) if row else None


# How long the new attempt waits for an earlier attempt's session to end (PostgreSQL >= 14).
TERMINATE_WAIT_MS = 5000


def stop_earlier_attempts(
    target: DatabaseTarget, password: str, backup_id: UUID, attempt: int
) -> int:
    """End the database sessions of this backup's earlier attempts, waiting for them.

    A runner that died, or lost the backup's lease, may leave its pg_dump's session behind
    (a server does not notice a vanished client while the session waits for a lock). The
    attempt that holds the backup now ends them first, so no two dumps of one backup ever
    run at once. Returns how many it ended; an error (an old server, no right to signal)
    is not fatal: the earlier session ends by itself once it tries to send.
    """
    mine = dump_application_name(backup_id, attempt)
    try:
        with connect(target, password, statement_timeout_ms=TERMINATE_WAIT_MS * 3) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity "
                # A full backup's pg_basebackup is a WAL sender, in no database.
                "WHERE (datname = current_database() OR backend_type = 'walsender') "
                "AND application_name LIKE %s "
                "AND application_name <> %s",
                (TERMINATE_WAIT_MS, f"tidemark-backup {backup_id} %", mine),
            ).fetchall()
    except (psycopg.Error, TargetError):
        return 0
    return sum(1 for row in rows if row[0])


def summarize_stderr(stderr: bytes, tool: str = "pg_dump") -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    cleaned = [line.removeprefix(f"{tool}: error: ").removeprefix(f"{tool}: ") for line in lines]
    text = " ".join(cleaned[-4:]) or "no diagnostic output"
    return text[:1000]


class CompressedArtifact:
    """Raw bytes in; zstd-compressed bytes out to every writer, with their SHA-256.

    File-like on the way in (``write``), so a tar stream can be written straight into it.
    The checksum is of the stored (compressed) bytes. Writers are opened here and
    committed by the caller.
    """

    def __init__(
        self, writers: Sequence[ArtifactSink], *, zstd_level: int = 3, zstd_threads: int = 1
    ) -> None:
        self._writers = writers
        zstd = zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads)
        self._compressor = zstd.compressobj(size=-1)
        self._digest = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        for writer in writers:
            writer.open()

    def _emit(self, data: bytes) -> None:
        if data:
            self._digest.update(data)
            for writer in self._writers:
                writer.write(data)
            self.stored_bytes += len(data)

    def abandon(self) -> None:
        """The artifact failed: whatever is still written (a tar stream flushing as it is
        collected) goes nowhere, since the caller aborts the writers."""
        self._writers = ()

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        """Compress ``chunk``; it is copied into the compressor before this returns, so
        the caller may reuse it (a view of a read buffer, a gathering buffer)."""
        self.raw_bytes += len(chunk)
        self._emit(self._compressor.compress(chunk))
        return len(chunk)

    def finish(self) -> DumpResult:
        self._emit(self._compressor.flush())
        return DumpResult(
            size_bytes=self.stored_bytes,
            checksum=f"sha256:{self._digest.hexdigest()}",
            raw_bytes=self.raw_bytes,
        )


class WatchedOutput:
    """A tool's stdout, remembering when it last produced anything (for the watchdog)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.last_output = time.monotonic()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self.last_output = time.monotonic()
        return data


def run_streaming(
    command: Sequence[str],
    env: dict[str, str],
    consume: Callable[[WatchedOutput], None],
    *,
    tool: str,
    stall_timeout_seconds: float,
    on_process: Callable[[subprocess.Popen[bytes]], None] = lambda _: None,
) -> None:
    """Run ``command`` and hand its stdout to ``consume``; raise ``DumpError`` saying why
    when the tool fails, stalls (no output for ``stall_timeout_seconds``: a host that
    accepts the connection and then goes silent is killed, so nothing hangs forever) or
    its output cannot be written. ``on_process`` receives the process, for a caller that
    must be able to kill it (shutdown). When the tool dies mid-stream, its own reason is
    reported, not what its truncated output did to ``consume``."""
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    on_process(process)
    assert process.stdout is not None
    assert process.stderr is not None
    output = WatchedOutput(process.stdout)
    stalled = threading.Event()
    finished = threading.Event()

    def watchdog() -> None:
        while not finished.wait(min(5.0, stall_timeout_seconds / 4)):
            if time.monotonic() - output.last_output > stall_timeout_seconds:
                stalled.set()
                process.kill()
                return

    threading.Thread(target=watchdog, daemon=True, name=f"{tool}-watchdog").start()
    stderr_chunks: list[bytes] = []
    stderr_reader = threading.Thread(
        target=lambda: stderr_chunks.append(process.stderr.read() if process.stderr else b""),
        daemon=True,
    )
    stderr_reader.start()

    def tool_failure(returncode: int) -> DumpError:
        stderr_reader.join(timeout=10)
        if stalled.is_set():
            return DumpError(
                f"{tool} produced no output for {stall_timeout_seconds:.0f} s and was stopped"
            )
        if returncode < 0:
            return DumpError(f"{tool} was stopped by signal {-returncode}")
        return DumpError(
            f"{tool} exited with {returncode}: {summarize_stderr(b''.join(stderr_chunks), tool)}"
        )

    try:
        consume(output)
    except Exception as exc:
        # Did the tool end first (its output cut short, which is what ``consume`` saw)?
        try:
            returncode: int | None = process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            returncode = None
            process.kill()
            process.wait()
        if stalled.is_set() or (returncode is not None and returncode != 0):
            raise tool_failure(process.returncode) from None
        if isinstance(exc, OSError):
            raise DumpError(f"writing the artifact failed: {exc.strerror or exc}") from None
        raise
    finally:
        finished.set()
        process.stdout.close()
    returncode = process.wait()
    if stalled.is_set() or returncode != 0:
        raise tool_failure(returncode)
    stderr_reader.join(timeout=10)


def dump_database(
    target: DatabaseTarget,
    password: str,
    writers: Sequence[ArtifactSink],
    on_progress: Callable[[int], None],
    *,
    pg_dump: str,
    zstd_level: int = 3,
    zstd_threads: int = 1,
    lock_wait_timeout_seconds: int = 300,
    stall_timeout_seconds: float = 900.0,
    on_process: Callable[[subprocess.Popen[bytes]], None] = lambda _: None,
    application_name: str = APPLICATION_NAME,
) -> DumpResult:
    """Run ``pg_dump --format=custom`` and stream its output, compressed, to ``writers``.

    pg_dump's own compression is off: compressing twice costs CPU for nothing, and zstd
    at level 3 is several times faster than pg_dump's gzip (its output is ~10% larger on
    our benchmark data; raise ``zstd_level`` to trade speed for size). With
    ``zstd_threads`` >= 1 compression runs beside the reading of pg_dump's output instead
    of in turn with it. The checksum is of the stored bytes.
    Writers are opened here and committed by the caller; on failure this raises and the
    caller aborts them. To stream to several destinations at once, each at its own pace,
    pass one ``storage.fanout.FanOut`` of them: it raises (an ``OSError``) only once
    every destination has failed. A pg_dump that produces nothing for ``stall_timeout_seconds``
    (a database host that accepts the connection and then goes silent, a dropped route)
    is killed, so a backup cannot hang forever. ``on_process`` receives pg_dump's
    process, for a caller that must be able to kill it (shutdown).
    The database is reached only through one connection string of ``target``'s validated
    parts (``target_conninfo``), with the password in pg_dump's environment and nothing
    else of the runner's; unusable settings raise ``TargetError`` before pg_dump starts.
    """
    conninfo = target_conninfo(target, application_name=application_name)
    env = libpq_env(require_password(password))
    command = [
        pg_dump,
        "--format=custom",
        "--compress=0",
        "--no-password",
        # Fail, rather than wait forever, when DDL holds a lock the dump needs.
        f"--lock-wait-timeout={lock_wait_timeout_seconds}s",
        f"--dbname={conninfo}",
    ]
    artifact = CompressedArtifact(writers, zstd_level=zstd_level, zstd_threads=zstd_threads)

    def consume(output: WatchedOutput) -> None:
        while chunk := output.read(CHUNK):
            artifact.write(chunk)
            on_progress(artifact.raw_bytes)

    run_streaming(
        command,
        env,
        consume,
        tool="pg_dump",
        stall_timeout_seconds=stall_timeout_seconds,
        on_process=on_process,
    )
    # The compressor's tail is written only once pg_dump succeeded.
    try:
        return artifact.finish()
    except OSError as exc:
        raise DumpError(f"writing the artifact failed: {exc.strerror or exc}") from None
