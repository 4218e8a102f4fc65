"""The physical restore: a ``full`` backup laid down as the target's managed cluster,
optionally replayed to a point in time, verified, and rolled back on any failure.

The order that keeps the target whole:

1. Before anything of the target is touched: the artifact's manifest is read, the disk
   checked for room, and every member extracted into a staging directory beside the
   data directory (same filesystem: the swap is a rename) after its size and SHA-256
   matched the manifest (``full_archive``). A mismatch leaves the target as it was.
2. A journal (``<dataDirectory>.tidemark-restore.json``) is written, the cluster stopped
   (``pg_ctl stop -m fast`` as the data directory's owner), the data directory renamed
   to ``<dataDirectory>.tidemark-old`` and the staged one put in its place; the files
   directory likewise (``<files>.tidemark-old``).
3. PITR: ``recovery.signal`` and, in ``postgresql.auto.conf``, a ``restore_command``
   (a small script in ``<dataDirectory>.tidemark-wal/`` that hands over the segments a
   thread of the runner fetches ahead through ``job.fetch_segment``), the target time in
   ``+00:00`` form, ``recovery_target_action = 'promote'`` and timeline ``latest``.
   Without a target the backup's own WAL (``-X fetch``) makes it consistent: it starts
   normally, crash recovery from its ``backup_label``, on the backup's timeline.
4. Start (the cluster's last options, its registered port), poll until out of recovery;
   verify (PITR: the timeline changed, ``recovery.signal`` is gone; the log does not say
   the target was never reached; a query answers); the recovery settings are reset with
   ``ALTER SYSTEM``. The journal then records ``verified`` and only then the old
   directories are discarded.
5. Any failure after the stop: the new server is stopped, the new directories removed,
   the old ones renamed back and the cluster started as it was; ``PhysicalRestoreError``
   with ``target_unchanged`` true, false only when the rollback failed too.

``resume_interrupted`` finishes what a killed runner left: ``verified`` in the journal
means the restore is complete (the old directories are discarded); any earlier phase is
rolled back. Both are idempotent and judge the filesystem, not only the journal.

The server's log, from the restore on, is ``<dataDirectory>.tidemark-server.log``
(``pg_ctl -l``: which log the cluster wrote before is not recorded anywhere).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

from tidemark_contracts.catalog import ClusterSpec
from tidemark_platform.logging import get_logger
from tidemark_recovery.wal import WalError, parse_lsn, segment_name, segment_number

from tidemark_restore_runner.cluster_server import Server, ServerError, server_options
from tidemark_restore_runner.full_archive import (
    FILES,
    PGDATA,
    ArchiveError,
    Manifest,
    Owner,
    extract_verified,
    read_manifest,
    remove_tree,
)

log = get_logger(__name__)

JOURNAL_SUFFIX = ".tidemark-restore.json"
OLD_SUFFIX = ".tidemark-old"
STAGING_SUFFIX = ".tidemark-new"
WAL_SUFFIX = ".tidemark-wal"
SERVER_LOG_SUFFIX = ".tidemark-server.log"
# Held (flock) by whichever process restores or resumes the cluster: a runner whose lease
# was taken over may still have a restore thread running, and two processes must never
# rename, remove or start the same data directory at once.
LOCK_SUFFIX = ".tidemark-restore.lock"
# The id of the last restore that completed into the cluster, written before its journal is
# discarded: a takeover after that moment still knows the target holds that restore.
RESTORED_SUFFIX = ".tidemark-restored"
# Segments fetched ahead of replay (16 MB each on the data directory's filesystem).
FETCH_AHEAD = 8
# restore_command gives up on a segment when the runner's heartbeat is this old (the
# runner was killed); /proc is no proof of life (hidepid hides root's processes).
HEARTBEAT_STALE_SECONDS = 20
SEGMENT_BYTES = 16 * 1024 * 1024
RECOVERY_SETTINGS = (
    "restore_command",
    "recovery_target_time",
    "recovery_target_action",
    "recovery_target_timeline",
)
TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"
STOP_SECONDS = 300.0
START_SECONDS = 300.0
LAUNCH_SECONDS = 60.0
_POLL_SECONDS = 0.25

Progress = Callable[[str, float | None, str | None], None]


@dataclass(frozen=True)
class PhysicalRestore:
    restore_id: UUID
    cluster: ClusterSpec  # the target's managed cluster (on the runner's host)
    artifact: Path  # local, checksum-verified copy of the .full.tar.zst
    files_directory: Path | None  # resolved target files directory; None = none
    pitr_target: datetime | None  # UTC; None = restore to the backup's end
    fetch_segment: Callable[[str, Path], bool] | None  # WAL source (None without PITR)
    work_dir: Path  # scratch directory of this restore on the runner's disk
    # Bounded waits and room: replay of a long WAL range may take hours.
    replay_timeout_seconds: float = 6 * 3600.0
    # Bytes the data directory's filesystem must keep free besides the restore's own.
    keep_free_bytes: int = 256 * 1024 * 1024
    # restore_command waits this long before each archived segment it hands over
    # (tests and benchmarks slow replay down with it; 0 in production).
    segment_delay_seconds: float = 0.0


class PhysicalRestoreError(Exception):
    def __init__(self, reason: str, *, target_unchanged: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.target_unchanged = target_unchanged


class ClusterBusy(PhysicalRestoreError):
    """Another process holds the cluster's restore lock: try again later (nothing done)."""


@contextlib.contextmanager
def _exclusive(data: Path, *, wait: bool) -> Iterator[None]:
    """The cluster's restore lock for the duration (the lock file stays; the lock dies
    with the process that holds it)."""
    fd = os.open(_beside(data, LOCK_SUFFIX), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterBusy(
                "another restore-runner process is still working on this cluster"
            ) from None
        yield
    finally:
        os.close(fd)


def _record_restored(data: Path, restore_id: str) -> None:
    path = _beside(data, RESTORED_SUFFIX)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(restore_id)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _restored_id(data: Path) -> str | None:
    try:
        return _beside(data, RESTORED_SUFFIX).read_text().strip()
    except FileNotFoundError:
        return None


class _Failed(Exception):
    """A step after the stop failed: roll back, then report ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the journal -----------------------------------------------------------------------------


@dataclass
class Journal:
    restore_id: str
    data_directory: str
    bin_directory: str
    port: int
    owner_uid: int
    owner_gid: int
    options: str
    was_running: bool
    staging: str
    wal_directory: str | None
    files_directory: str | None = None
    files_staging: str | None = None
    files_had_old: bool = False
    files_put_in_place: bool = False
    phase: str = "verifying"
    history: list[str] = field(default_factory=list)

    @staticmethod
    def path_for(data_directory: Path) -> Path:
        return data_directory.with_name(data_directory.name + JOURNAL_SUFFIX)

    @classmethod
    def load(cls, data_directory: Path) -> Journal | None:
        path = cls.path_for(data_directory)
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PhysicalRestoreError(
                f"the restore journal beside the data directory cannot be read: "
                f"{type(exc).__name__}",
                target_unchanged=False,
            ) from None
        return cls(**body)

    def save(self, phase: str | None = None) -> None:
        if phase is not None:
            self.phase = phase
            self.history.append(f"{datetime.now(UTC).isoformat()} {phase}")
        path = self.path_for(Path(self.data_directory))
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(asdict(self), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _sync_directory(path.parent)

    def remove(self) -> None:
        path = self.path_for(Path(self.data_directory))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _sync_directory(path.parent)

    @property
    def data(self) -> Path:
        return Path(self.data_directory)

    @property
    def old(self) -> Path:
        return _beside(self.data, OLD_SUFFIX)

    @property
    def files_old(self) -> Path | None:
        return _beside(Path(self.files_directory), OLD_SUFFIX) if self.files_directory else None

    def server(self) -> Server:
        return Server(
            data_directory=self.data,
            bin_directory=Path(self.bin_directory),
            port=self.port,
            uid=self.owner_uid,
            gid=self.owner_gid,
            log_file=_beside(self.data, SERVER_LOG_SUFFIX),
            options=self.options,
        )


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _sync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- restore ---------------------------------------------------------------------------------


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _check_room(job: PhysicalRestore, manifest: Manifest, data: Path) -> None:
    """Refuse before writing when the staging filesystem(s) cannot hold the restore."""
    needs: dict[int, int] = {}
    data_device = os.stat(data.parent).st_dev
    needs[data_device] = manifest.bytes_under(PGDATA) + job.keep_free_bytes
    if job.pitr_target is not None:
        needs[data_device] += (FETCH_AHEAD + 2) * SEGMENT_BYTES
    where = {data_device: data.parent}
    if job.files_directory is not None and manifest.has_files:
        parent = job.files_directory.parent
        device = os.stat(parent).st_dev
        needs[device] = needs.get(device, job.keep_free_bytes) + manifest.bytes_under(FILES)
        where.setdefault(device, parent)
    for device, needed in needs.items():
        free = _free_bytes(where[device])
        if free < needed:
            raise PhysicalRestoreError(
                f"not enough disk space for the restore: it needs {needed // 2**20} MiB "
                f"(with {job.keep_free_bytes // 2**20} MiB kept free) and "
                f"{free // 2**20} MiB are free"
            )


def _stage(job: PhysicalRestore, journal: Journal, manifest: Manifest, owner: Owner) -> None:
    """Extract the verified artifact into the staging directories (root-owned 0700, so
    nobody reaches into them while they fill)."""
    staging = Path(journal.staging)
    staging.mkdir(mode=0o700)
    roots = {PGDATA: staging}
    owners = {PGDATA: owner}
    if journal.files_staging is not None and job.files_directory is not None:
        files_staging = Path(journal.files_staging)
        files_staging.mkdir(mode=0o700)
        roots[FILES] = files_staging
        existing = job.files_directory if job.files_directory.exists() else None
        owners[FILES] = Owner.of(existing or job.files_directory.parent)
    extract_verified(job.artifact, manifest, roots, owners)
    if not (staging / PGDATA / "PG_VERSION").is_file():
        raise ArchiveError("the artifact holds no data directory (pgdata/PG_VERSION)")


def restore_full(job: PhysicalRestore, progress: Progress) -> None:
    """Lay ``job.artifact`` down as ``job.cluster`` (and its files directory), replayed to
    ``job.pitr_target`` when given; raises ``PhysicalRestoreError`` saying why, with
    ``target_unchanged`` true when the target is as it was (blocking). ``ClusterBusy``
    when another process is restoring or resuming the cluster."""
    data = Path(job.cluster.data_directory)
    with _exclusive(data, wait=False):
        _restore_full(job, progress, data)


def _restore_full(job: PhysicalRestore, progress: Progress, data: Path) -> None:
    earlier = Journal.load(data)
    if earlier is not None and earlier.phase == "verified":
        _complete(earlier)  # a restore that succeeded but was not cleaned up
    elif earlier is not None:
        raise PhysicalRestoreError(
            "an earlier restore into this cluster is unfinished (resume_interrupted first)"
        )
    if not (data / "PG_VERSION").is_file():
        raise PhysicalRestoreError("the target's data directory is not a PostgreSQL cluster")
    if job.pitr_target is not None and job.fetch_segment is None:
        raise PhysicalRestoreError("a point-in-time restore needs a WAL source")
    owner = Owner.of(data)
    files_directory = job.files_directory
    progress("verifying", 0.0, "reading the artifact's manifest")
    started = time.monotonic()
    try:
        manifest = read_manifest(job.artifact)
    except ArchiveError as exc:
        raise PhysicalRestoreError(exc.args[0]) from None
    _check_room(job, manifest, data)
    log.info("physical_restore_manifest_read", seconds=round(time.monotonic() - started, 2))
    if files_directory is not None and not manifest.has_files:
        files_directory = None  # the backup had no files directory: the target's stays
    probe = Server(
        data_directory=data,
        bin_directory=Path(job.cluster.bin_directory),
        port=job.cluster.port,
        uid=owner.uid,
        gid=owner.gid,
        log_file=_beside(data, SERVER_LOG_SUFFIX),
        options="",
    )
    journal = Journal(
        restore_id=str(job.restore_id),
        data_directory=str(data),
        bin_directory=job.cluster.bin_directory,
        port=job.cluster.port,
        owner_uid=owner.uid,
        owner_gid=owner.gid,
        options=server_options(data, job.cluster.port),
        was_running=probe.running(),
        staging=str(_beside(data, STAGING_SUFFIX)),
        wal_directory=str(_beside(data, WAL_SUFFIX)) if job.pitr_target is not None else None,
        files_directory=str(files_directory) if files_directory is not None else None,
        files_staging=(
            str(files_directory.parent / f".{files_directory.name}{STAGING_SUFFIX}")
            if files_directory is not None
            else None
        ),
        files_had_old=files_directory is not None and files_directory.exists(),
    )
    # Leftovers of a restore killed before it stopped anything (no journal was kept).
    _discard_staging(journal)
    journal.save("verifying")
    try:
        _stage(job, journal, manifest, owner)
    except (ArchiveError, OSError) as exc:
        _discard_staging(journal)
        journal.remove()
        reason = exc.args[0] if isinstance(exc, ArchiveError) else _os_reason(exc)
        raise PhysicalRestoreError(reason) from None
    except BaseException:
        _discard_staging(journal)
        journal.remove()
        raise
    log.info("physical_restore_staged", seconds=round(time.monotonic() - started, 2))
    try:
        _replace_and_start(job, journal, manifest, progress)
    except _Failed as failure:
        _roll_back_or_raise(journal, failure.reason)
        raise PhysicalRestoreError(
            f"{failure.reason}; the target was rolled back", target_unchanged=True
        ) from None
    except Exception as exc:  # an unforeseen error is still rolled back
        reason = f"the restore failed unexpectedly ({type(exc).__name__})"
        log.exception("physical_restore_unexpected")
        _roll_back_or_raise(journal, reason)
        raise PhysicalRestoreError(
            f"{reason}; the target was rolled back", target_unchanged=True
        ) from None
    try:
        _complete(journal)
    except OSError:
        # The restore is done; what is left is the old copy (resume_interrupted or the
        # next restore into this cluster discards it).
        log.exception("physical_restore_cleanup_failed")
    progress("done", 100.0, None)


def _os_reason(exc: OSError) -> str:
    return f"extracting the artifact failed: {exc.strerror or type(exc).__name__}"


def _roll_back_or_raise(journal: Journal, reason: str) -> None:
    try:
        _roll_back(journal)
    except Exception as exc:
        log.exception("physical_restore_rollback_failed")
        why = exc.args[0] if isinstance(exc, ServerError | _Failed) else type(exc).__name__
        raise PhysicalRestoreError(
            f"{reason}; rolling the target back failed too ({why}): the old data directory "
            f"is kept beside it as {OLD_SUFFIX}",
            target_unchanged=False,
        ) from None


def _replace_and_start(
    job: PhysicalRestore, journal: Journal, manifest: Manifest, progress: Progress
) -> None:
    data = journal.data
    server = journal.server()
    progress("stopping", None, "stopping the target cluster")
    journal.save("stopping")
    try:
        server.stop("fast", STOP_SECONDS)
    except (ServerError, OSError) as exc:
        raise _Failed(f"the target cluster did not stop ({exc})") from None
    if server.running():
        raise _Failed("the target cluster did not stop")

    progress("laying_down", None, "putting the restored data directory in place")
    journal.save("laying_down")
    os.rename(data, journal.old)
    os.rename(Path(journal.staging) / PGDATA, data)
    os.chmod(data, 0o700)
    if os.geteuid() == 0:
        os.chown(data, journal.owner_uid, journal.owner_gid)
    for stale in ("postmaster.pid", "postmaster.opts"):
        with contextlib.suppress(FileNotFoundError):
            (data / stale).unlink()
    if journal.files_directory is not None and journal.files_staging is not None:
        files = Path(journal.files_directory)
        if journal.files_had_old:
            os.rename(files, _beside(files, OLD_SUFFIX))
        journal.files_put_in_place = True
        journal.save()
        os.rename(Path(journal.files_staging) / FILES, files)
    _sync_directory(data.parent)

    prefetch: _Prefetch | None = None
    for signal_file in ("recovery.signal", "standby.signal"):
        with contextlib.suppress(FileNotFoundError):
            (data / signal_file).unlink()
    if job.pitr_target is not None:
        assert journal.wal_directory is not None
        prefetch = _Prefetch(job, manifest, Path(journal.wal_directory), journal)
        _configure_recovery(job, journal, prefetch)
    _prepare_log(journal)
    log_offset = _size(server.log_file)
    journal.save("starting")
    progress("starting", None, "starting the restored cluster")
    try:
        if prefetch is not None:
            prefetch.start()
        try:
            server.start(wait_seconds=None)
        except (ServerError, OSError) as exc:
            raise _Failed(f"the restored cluster did not start ({exc})") from None
        _wait_out_of_recovery(job, server, prefetch, log_offset, progress)
    finally:
        if prefetch is not None:
            prefetch.stop()
    progress("verifying_restore", None, "verifying the restored cluster")
    _verify(job, journal, server, manifest, log_offset)
    journal.save("verified")
    progress("verifying_restore", 100.0, "the restored cluster is promoted and verified")
    # From here the target holds the restored cluster even if this process dies before the
    # journal is discarded: the caller notes it (its takeover then completes, never fails).
    progress("swapped", 100.0, "the restored cluster replaced the target's")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _prepare_log(journal: Journal) -> None:
    path = journal.server().log_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    if os.geteuid() == 0:
        os.chown(path, journal.owner_uid, journal.owner_gid)


def _log_since(server: Server, offset: int) -> str:
    try:
        with open(server.log_file, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _wait_out_of_recovery(
    job: PhysicalRestore,
    server: Server,
    prefetch: _Prefetch | None,
    log_offset: int,
    progress: Progress,
) -> None:
    """Poll (bounded) until the server is out of recovery; it stopping on its own (a
    FATAL) or the bound passing is the restore's failure. ``pg_ctl -w`` is no proof: it
    returns once read-only connections work, even before a FATAL."""
    started = time.monotonic()
    deadline = started + job.replay_timeout_seconds
    reported = -1
    # ``pg_ctl start -W`` returns before the postmaster wrote its pid file: a server not
    # seen yet is starting, one seen and gone has stopped.
    seen = False
    while True:
        state = server.query("SELECT pg_is_in_recovery()")
        if state == "f":
            return
        if state is None:
            if server.running():
                seen = True
            elif seen or time.monotonic() - started > LAUNCH_SECONDS:
                raise _Failed(_why_it_stopped(server, prefetch, log_offset))
        if prefetch is not None:
            replayed = prefetch.used()
            if replayed != reported:
                reported = replayed
                progress("replaying", None, f"{replayed} archived WAL segments replayed")
        if time.monotonic() > deadline:
            raise _Failed(
                f"the restored cluster was still in recovery after "
                f"{int(job.replay_timeout_seconds)} s"
            )
        time.sleep(_POLL_SECONDS)


def _why_it_stopped(server: Server, prefetch: _Prefetch | None, log_offset: int) -> str:
    text = _log_since(server, log_offset)
    if prefetch is not None and prefetch.error is not None:
        return f"fetching archived WAL failed: {prefetch.error}"
    if TARGET_NOT_REACHED in text:
        return (
            "the archived WAL does not reach the target time: recovery ended before it was reached"
        )
    fatal = re.findall(r"(?:FATAL|PANIC):\s+(.*)", text)
    if fatal:
        # The server's own words, without paths (the runner's directories stay out).
        said = re.sub(r'"/[^"]*"', '"…"', fatal[-1])[:200]
        return f"the restored cluster stopped during startup: {said}"
    return "the restored cluster stopped during startup"


def _verify(
    job: PhysicalRestore, journal: Journal, server: Server, manifest: Manifest, log_offset: int
) -> None:
    if server.query("SELECT count(*) > 0 FROM pg_database") != "t":
        raise _Failed("the restored cluster does not answer queries")
    text = _log_since(server, log_offset)
    if TARGET_NOT_REACHED in text:
        raise _Failed("recovery ended before the target time was reached")
    if job.pitr_target is not None:
        if (journal.data / "recovery.signal").exists():
            raise _Failed("the restored cluster left recovery without promotion")
        current = server.query("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        base = manifest.timeline or 1
        if current is None or not re.fullmatch(r"[0-9A-F]{8}", current):
            raise _Failed("the restored cluster's timeline cannot be read")
        if int(current, 16) == base:
            raise _Failed("the restored cluster was not promoted to a new timeline")
        resets = [f"ALTER SYSTEM RESET {name}" for name in RECOVERY_SETTINGS]
        if server.query(*resets, "SELECT pg_reload_conf()") != "t":
            raise _Failed("the recovery settings could not be reset")


# -- WAL for point-in-time recovery ----------------------------------------------------------


_RESTORE_SCRIPT = """#!/bin/sh
# restore_command of a Tidemark point-in-time restore: hands over the WAL segments the
# restore-runner fetches ahead into this directory. $1 = %f, $2 = %p.
dir={directory}
case "$1" in
  ????????????????????????) ;;
  *) [ -f "$dir/$1" ] && exec cp "$dir/$1" "$2"; exit 1 ;;
esac
while :; do
  if [ -f "$dir/$1" ]; then
    sleep {delay}
    cp "$dir/$1" "$2" || exit 1
    : > "$dir/$1.used"
    exit 0
  fi
  [ -f "$dir/$1.missing" ] && exit 1
  [ -f "$dir/end" ] && exit 1
  # The runner is gone (killed; it touches "alive" every second while it fetches): no
  # segment will come, recovery ends here.
  now=$(date +%s)
  alive=$(stat -c %Y "$dir/alive" 2>/dev/null || echo 0)
  [ $((now - alive)) -gt {stale} ] && exit 1
  sleep 0.1
done
"""


class _Prefetch:
    """Fetches archived segments from the base backup's first one on, a few ahead of
    what the server has taken, into the WAL directory (segments of the backup's own
    range the archive lacks are in its ``pg_wal``; past them the first missing segment
    is the archive's end)."""

    def __init__(
        self, job: PhysicalRestore, manifest: Manifest, directory: Path, journal: Journal
    ) -> None:
        assert job.fetch_segment is not None
        self._fetch = job.fetch_segment
        self.directory = directory
        self._owner = (journal.owner_uid, journal.owner_gid)
        try:
            start = parse_lsn(manifest.wal_start_lsn or "")
            end = parse_lsn(manifest.wal_end_lsn or manifest.wal_start_lsn or "")
        except WalError:
            raise _Failed("the backup's manifest has no WAL range to replay from") from None
        self._timeline = manifest.timeline or 1
        self._segno = segment_number(start)
        self._last_own = segment_number(end)
        self._stopped = threading.Event()
        self._fetched: list[str] = []
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="wal-prefetch")
        self._heart = threading.Thread(target=self._heartbeat, daemon=True, name="wal-alive")

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, *self._owner)

    def prepare(self, delay_seconds: float) -> Path:
        remove_tree(self.directory)
        self.directory.mkdir(mode=0o700)
        self._chown(self.directory)
        script = self.directory / "restore.sh"
        script.write_text(
            _RESTORE_SCRIPT.format(
                directory=shlex.quote(str(self.directory)),
                delay=f"{max(delay_seconds, 0.0):.3f}",
                stale=HEARTBEAT_STALE_SECONDS,
            )
        )
        os.chmod(script, 0o500)
        self._chown(script)
        return script

    def start(self) -> None:
        self._beat()
        self._heart.start()
        self._thread.start()

    def _beat(self) -> None:
        alive = self.directory / "alive"
        alive.touch()
        self._chown(alive)

    def _heartbeat(self) -> None:
        while not self._stopped.wait(1.0):
            with contextlib.suppress(OSError):
                os.utime(self.directory / "alive")

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            (self.directory / "end").touch()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if self._heart.is_alive():
            self._heart.join(timeout=5)

    def used(self) -> int:
        try:
            return sum(1 for p in self.directory.iterdir() if p.name.endswith(".used"))
        except OSError:
            return 0

    def _waiting(self) -> int:
        return sum(1 for n in self._fetched if not (self.directory / f"{n}.used").exists())

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                if self._waiting() >= FETCH_AHEAD:
                    self._forget_used()
                    time.sleep(0.05)
                    continue
                name = segment_name(self._timeline, self._segno)
                part = self.directory / f".{name}.part"
                if self._fetch(name, part):
                    os.chmod(part, 0o600)
                    self._chown(part)
                    os.rename(part, self.directory / name)
                    self._fetched.append(name)
                else:
                    remove_tree(part)
                    (self.directory / f"{name}.missing").touch()
                    if self._segno > self._last_own:
                        (self.directory / "end").touch()
                        return
                self._segno += 1
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("wal_prefetch_failed", error=self.error)
            with contextlib.suppress(OSError):
                (self.directory / "end").touch()

    def _forget_used(self) -> None:
        """Segments the server copied are no longer needed here (16 MB each); the newest
        one it took stays, in case it asks again."""
        used = [n for n in self._fetched if (self.directory / f"{n}.used").exists()]
        for name in used[:-1]:
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()


def _configure_recovery(job: PhysicalRestore, journal: Journal, prefetch: _Prefetch) -> None:
    assert job.pitr_target is not None
    script = prefetch.prepare(job.segment_delay_seconds)
    target = job.pitr_target.astimezone(UTC).isoformat()  # "+00:00": a "Z" is refused
    settings = {
        "restore_command": f"{shlex.quote(str(script))} %f %p",
        "recovery_target_time": target,
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
    }
    data = journal.data
    auto = data / "postgresql.auto.conf"
    lines = "".join(
        f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in settings.items()
    )
    with open(auto, "a") as handle:
        handle.write("# Tidemark point-in-time restore (reset once promoted)\n" + lines)
    signal = data / "recovery.signal"
    signal.touch()
    if os.geteuid() == 0:
        os.chown(auto, journal.owner_uid, journal.owner_gid)
        os.chown(signal, journal.owner_uid, journal.owner_gid)


# -- finishing and rolling back --------------------------------------------------------------


def _discard_staging(journal: Journal) -> None:
    remove_tree(Path(journal.staging))
    if journal.files_staging is not None:
        remove_tree(Path(journal.files_staging))
    if journal.wal_directory is not None:
        remove_tree(Path(journal.wal_directory))


def _complete(journal: Journal) -> None:
    """The restored cluster is verified: discard what the old one left (idempotent)."""
    _record_restored(journal.data, journal.restore_id)
    remove_tree(journal.old)
    if journal.files_old is not None and journal.files_had_old:
        remove_tree(journal.files_old)
    _discard_staging(journal)
    journal.remove()


def _roll_back(journal: Journal) -> None:
    """Put the old data (and files) directory back and start the cluster as it was;
    judged by what is on disk, so a second run after a crash in the middle finishes it."""
    server = journal.server()
    data, old = journal.data, journal.old
    if old.exists():
        # The data directory is the restored one (or half of it): stop whatever runs there.
        try:
            server.stop("immediate", STOP_SECONDS)
        except ServerError:
            pid = server.postmaster_pid()
            if pid is not None and server.running():
                raise
        if server.running():
            raise _Failed("the restored cluster could not be stopped")
        remove_tree(data)
        os.rename(old, data)
        _sync_directory(data.parent)
    if journal.files_directory is not None:
        files = Path(journal.files_directory)
        files_old = _beside(files, OLD_SUFFIX)
        if files_old.exists():
            remove_tree(files)
            os.rename(files_old, files)
        elif journal.files_put_in_place and not journal.files_had_old:
            remove_tree(files)
    if journal.was_running and not server.running():
        _prepare_log(journal)
        server.start(wait_seconds=START_SECONDS)
        if not server.wait_until_answering(60):
            raise _Failed("the old cluster was put back but does not answer queries")
    _discard_staging(journal)
    journal.remove()


def resume_interrupted(
    cluster: ClusterSpec, restore_id: UUID | None = None
) -> Literal["nothing", "rolled_back", "completed"]:
    """Finish a restore into ``cluster`` that a killed runner left unfinished: complete
    when the journal recorded the restored cluster verified, else roll back. Idempotent;
    raises ``PhysicalRestoreError`` (target_unchanged false) when the rollback fails.

    Waits while another process holds the cluster (a runner whose lease was taken over,
    its restore thread still running). With ``restore_id``, a restore of that id that
    completed and discarded its journal already is "completed", not "nothing"."""
    data = Path(cluster.data_directory)
    with _exclusive(data, wait=True):
        return _resume_interrupted(data, restore_id)


def _resume_interrupted(
    data: Path, restore_id: UUID | None
) -> Literal["nothing", "rolled_back", "completed"]:
    journal = Journal.load(data)
    if journal is None:
        if restore_id is not None and _restored_id(data) == str(restore_id):
            return "completed"
        return "nothing"
    if journal.phase == "verified":
        server = journal.server()
        if not server.running():
            _prepare_log(journal)
            try:
                server.start(wait_seconds=START_SECONDS)
            except ServerError as exc:
                raise PhysicalRestoreError(
                    f"the restored cluster was verified but does not start again ({exc})",
                    target_unchanged=False,
                ) from None
        _complete(journal)
        return "completed"
    interrupted = journal.phase
    _roll_back_or_raise(journal, f"the restore was interrupted during {interrupted}")
    return "rolled_back"
