"""Continuous WAL archiving: one ``pg_receivewal`` per environment across all runner
instances, every finished segment stored and recorded, the archive's status kept.

``WalArchiver`` looks every few seconds at what is wanted (``walview``) and claims the
receiver lease of each wanted environment nobody holds; for each it holds, a
``Receiver`` runs the environment's ``pg_receivewal`` (``--no-loop``: its failures come
back here, to be counted, backed off and reported) on a replication slot of its own into
a spool directory, archives each finished segment (``walsegments``), forces a segment
switch when the open one holds old WAL, and decides the status (``WalPolicy``). An
environment that is no longer wanted is disabled: receiver stopped, slot dropped (a slot
nobody reads would make the server keep WAL forever and fill its disk; enabling again
starts a new slot, and the gap is recorded), status ``disabled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from prometheus_client import Counter, Gauge
from tidemark_contracts import utc_now
from tidemark_contracts.wal import WalArchivingStatus, wal_archive_id
from tidemark_platform.failures import is_transient
from tidemark_platform.logging import get_logger
from tidemark_platform.vault import SecretVault
from tidemark_recovery.wal import parse_lsn

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.pgtools import (
    TargetError,
    connect,
    libpq_env,
    require_password,
    summarize_stderr,
    target_conninfo,
)
from tidemark_backup_runner.secrets import (
    CredentialPolicy,
    SecretError,
    resolve_secret,
    resolver_for,
)
from tidemark_backup_runner.walarchive import RESET_REASON, WalArchive, verdict
from tidemark_backup_runner.walsegments import (
    archive_file,
    clear_spool,
    drop_unfilled_partials,
    finished_segments,
    has_wal,
    write_marker,
)
from tidemark_backup_runner.walview import ReceiverLease, ReceiverLeaseLost, WalTables, WalTarget

log = get_logger(__name__)

SEGMENTS_ARCHIVED = Counter(
    "tidemark_wal_segments_archived_total", "WAL segments stored and recorded"
)
SEGMENT_BYTES = Counter(
    "tidemark_wal_archived_bytes_total", "Compressed bytes of archived WAL segments"
)
RECEIVER_RESTARTS = Counter(
    "tidemark_wal_receiver_restarts_total", "pg_receivewal runs that ended and were restarted"
)
ARCHIVE_LAG = Gauge(
    "tidemark_wal_archive_lag_seconds",
    "Seconds since the last segment was archived, per environment this instance receives",
    ["environment_id"],
)
RECEIVERS = Gauge("tidemark_wal_receivers", "Environments whose receiver this instance runs")

APPLICATION_NAME = "pg_receivewal"  # what pg_stat_replication shows for our receivers
SERVER_GONE = "has already been removed"
NOT_IN_HISTORY = "is not in this server's history"
PR_SET_PDEATHSIG = 1


def slot_name(environment_id: UUID) -> str:
    """The environment's own replication slot (one slot per receiver directory)."""
    return f"tidemark_wal_{environment_id.hex}"


@dataclass(frozen=True)
class WalPolicy:
    lease_seconds: float = 30.0
    stall_seconds: float = 300.0
    switch_seconds: float = 60.0
    poll_seconds: float = 2.0
    check_seconds: float = 5.0
    max_failures: int = 3
    max_backoff_seconds: float = 60.0
    startup_grace_seconds: float = 2.0

    @property
    def renew_every(self) -> float:
        return self.lease_seconds / 3

    def backoff(self, failures: int) -> float:
        """Seconds before the next try after ``failures`` failures in a row (1, 2, 4 …)."""
        return float(min(2 ** max(failures - 1, 0), self.max_backoff_seconds))

    def stalled(self, *, idle_seconds: float, server_lsn: int, archived_end: int) -> bool:
        """No segment for the stall time while the server wrote WAL past the archive."""
        return idle_seconds >= self.stall_seconds and server_lsn > archived_end

    def should_switch(self, dirty_seconds: float | None, since_switch: float | None) -> bool:
        """The open segment has held unarchived WAL for the switch time (and no switch was
        forced within it)."""
        if dirty_seconds is None or dirty_seconds < self.switch_seconds:
            return False
        return since_switch is None or since_switch >= self.switch_seconds


def _die_with_parent() -> None:
    """In the child: SIGTERM when the runner dies (a SIGKILLed runner must not leave a
    receiver on the slot: two receivers on one slot lose WAL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _reason(exc: BaseException) -> str:
    """Words for a status reason: never a runner path or a secret."""
    if isinstance(exc, TargetError | SecretError):
        return str(exc)
    if is_transient(exc):
        return f"the runner's database was unreachable ({type(exc).__name__})"
    if isinstance(exc, psycopg.Error):
        return f"the environment's database refused ({type(exc).__name__})"
    if isinstance(exc, OSError):
        text = str(exc) if not exc.filename else (exc.strerror or type(exc).__name__)
        return f"storing a segment failed: {text}"
    return f"internal error: {type(exc).__name__}"


class WalArchiver:
    def __init__(
        self,
        app: BackupRunnerApplication,
        tables: WalTables,
        on_saved: Callable[[], None],
        *,
        owner: UUID,
        policy: WalPolicy,
        spool_root: Path,
        pg_receivewal: str,
        pg_waldump: str,
        credential_policy: CredentialPolicy,
        vault: SecretVault | None,
        destination_root: Path | None,
        zstd_level: int = 3,
    ) -> None:
        self.app = app
        self.tables = tables
        self.on_saved = on_saved
        self.owner = owner
        self.policy = policy
        self.spool_root = spool_root
        self.pg_receivewal = pg_receivewal
        self.pg_waldump = pg_waldump
        self.credential_policy = credential_policy
        self.vault = vault
        self.destination_root = destination_root
        self.zstd_level = zstd_level
        self.receivers: dict[UUID, Receiver] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:
                    if not is_transient(exc):
                        log.exception("wal_supervisor_failed")
                    else:
                        log.warning("wal_supervisor_unavailable", error=repr(exc))
                await asyncio.sleep(self.policy.poll_seconds)
        finally:
            await self.stop_all()

    async def tick(self) -> None:
        """Start receivers for wanted environments nobody receives; stop and disable the
        ones no longer wanted."""
        for env, task in list(self._tasks.items()):
            if task.done():
                self._tasks.pop(env)
                self.receivers.pop(env, None)
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "wal_receiver_ended", environment_id=str(env), error=repr(task.exception())
                    )
        wanted = {t.environment_id: t for t in await asyncio.to_thread(self.tables.wanted)}
        for env, target in wanted.items():
            receiver = self.receivers.get(env)
            if receiver is not None:
                receiver.target = target
                continue
            lease = await asyncio.to_thread(
                self.tables.claim, env, self.owner, self.policy.lease_seconds
            )
            if lease is not None:
                self._start(Receiver(self, target, lease))
        for env, receiver in list(self.receivers.items()):
            if env not in wanted and not receiver.disabling:
                receiver.disable("WAL archiving was switched off for the environment")
        for env in await asyncio.to_thread(self.tables.archiving):
            if env in wanted or env in self.receivers:
                continue
            lease = await asyncio.to_thread(
                self.tables.claim, env, self.owner, self.policy.lease_seconds
            )
            if lease is None:
                continue
            found = await asyncio.to_thread(self.tables.environment, env)
            if found is None:
                await asyncio.to_thread(self.tables.release, lease, "disabled")
                continue
            target = WalTarget(env, found[0], found[1], (), None)
            receiver = Receiver(self, target, lease)
            receiver.disable("WAL archiving was switched off for the environment")
            self._start(receiver)

    def _start(self, receiver: Receiver) -> None:
        env = receiver.target.environment_id
        self.receivers[env] = receiver
        self._tasks[env] = asyncio.create_task(receiver.run(), name=f"wal-receiver-{env}")

    async def stop_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class Receiver:
    """One environment's receiver while this instance holds its lease."""

    def __init__(self, archiver: WalArchiver, target: WalTarget, lease: ReceiverLease) -> None:
        self.archiver = archiver
        self.target = target
        self.lease = lease
        self.env = target.environment_id
        self.spool = archiver.spool_root / str(self.env)
        self.slot = slot_name(self.env)
        self.archive: WalArchive | None = None
        self.disabling: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.stderr: deque[bytes] = deque(maxlen=20)
        self.gap_hint: str | None = None
        self._history_lost = False  # pg_receivewal found the spool not in the server's history
        self._renewed = time.monotonic()
        self._wake = asyncio.Event()
        self._switch_denied = False
        self._store_failures = 0
        self._store_retry_at = 0.0

    @property
    def policy(self) -> WalPolicy:
        return self.archiver.policy

    def disable(self, reason: str) -> None:
        self.disabling = reason
        self._wake.set()

    # -- the whole life ----------------------------------------------------------------------

    async def run(self) -> None:
        RECEIVERS.inc()
        released = False
        try:
            self.archive = await asyncio.to_thread(self._load)
            if self.disabling is None:
                await self._receive()
            if self.disabling is not None:
                await self._disable()
                released = True
        except ReceiverLeaseLost:
            log.warning("wal_receiver_lease_lost", environment_id=str(self.env))
            released = True  # someone else holds it now: nothing of ours to give back
        finally:
            await self._stop_process()
            RECEIVERS.dec()
            with contextlib.suppress(Exception):
                ARCHIVE_LAG.remove(str(self.env))
            if not released:
                # Stopping (or failed): another instance may take over at once.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.archiver.tables.release, self.lease)

    async def _receive(self) -> None:
        failures = 0
        password = None
        while self.disabling is None:
            try:
                if password is None:
                    password = await self._password()
                await self._prepare(password)
                outcome = await self._one_run(password)
            except ReceiverLeaseLost:
                raise
            except Exception as exc:
                if not isinstance(exc, TargetError | SecretError | psycopg.Error | OSError):
                    log.exception("wal_receiver_crashed", environment_id=str(self.env))
                password = None if isinstance(exc, SecretError | TargetError) else password
                outcome = _reason(exc)
            if self.disabling is not None:
                return
            if outcome is None:  # ended by a stall: restarted at once
                failures = 0
                continue
            failures += 1
            RECEIVER_RESTARTS.inc()
            log.warning(
                "wal_receiver_failed",
                environment_id=str(self.env),
                reason=outcome,
                failures=failures,
            )
            if failures >= self.policy.max_failures:
                await self._set_status(
                    "stalled", f"the WAL receiver keeps failing ({failures} times): {outcome}"
                )
            await self._sleep(self.policy.backoff(failures))

    async def _password(self) -> str:
        value = await asyncio.to_thread(
            resolve_secret,
            self.target.database.password_ref,
            self.target.organization_id,
            self.archiver.credential_policy,
            self.archiver.vault,
        )
        return require_password(value)

    async def _prepare(self, password: str) -> None:
        """The slot exists and nobody else streams from it; the spool resumes after the
        last archived segment (or from the slot, after the server lost that WAL)."""
        await asyncio.to_thread(self.spool.mkdir, parents=True, exist_ok=True)
        dropped = await asyncio.to_thread(drop_unfilled_partials, self.spool)
        if dropped:
            log.info("wal_unfilled_partial_dropped", segments=dropped)
        created = await asyncio.to_thread(self._take_slot, password)
        archive = self.archive
        if (
            archive is not None
            and archive.last_segment is not None
            and (created or self._history_lost)
        ):
            # A new slot (the cluster was restored, or the slot dropped) or a server that
            # does not know the spool's position: the WAL it streams now cannot continue
            # the archive. Recorded as a reset, and started from the slot.
            await asyncio.to_thread(clear_spool, self.spool)
            archive.reset(RESET_REASON, utc_now())
            await self._save(archive)
            self.gap_hint = None
            log.warning("wal_archive_reset", environment_id=str(self.env), reason=RESET_REASON)
        self._history_lost = False
        if (
            self.gap_hint is None  # not after the server lost that WAL: then from the slot
            and archive is not None
            and archive.last_segment is not None
            and not has_wal(self.spool)
        ):
            await asyncio.to_thread(write_marker, self.spool, archive.last_segment)

    def _take_slot(self, password: str) -> bool:
        """True when the slot had to be created."""
        with connect(self.target.database, password, statement_timeout_ms=15_000) as conn:
            conn.autocommit = True
            # A receiver left behind (its runner vanished, or lost the lease) would move
            # the slot under ours: end it first.
            conn.execute(
                "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (self.slot,),
            )
            # Reserving WAL from the moment of creation (pg_receivewal's --create-slot
            # reserves nothing until the first stream).
            cursor = conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (self.slot, self.slot),
            )
            return cursor.fetchone() is not None

    def _drop_slot(self, password: str) -> None:
        with connect(self.target.database, password, statement_timeout_ms=15_000) as conn:
            conn.autocommit = True
            conn.execute(
                "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (self.slot,),
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.slot,),
            )

    # -- one run of pg_receivewal --------------------------------------------------------------

    async def _one_run(self, password: str) -> str | None:
        """Run pg_receivewal until it ends or stalls: the reason it failed, or None when
        this side stopped it (stall, disabling)."""
        conninfo = target_conninfo(self.target.database, application_name=APPLICATION_NAME)
        self.stderr.clear()
        self.process = await asyncio.create_subprocess_exec(
            self.archiver.pg_receivewal,
            f"--directory={self.spool}",
            f"--slot={self.slot}",
            "--no-loop",
            "--no-password",
            "--status-interval=10",
            f"--dbname={conninfo}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=libpq_env(password),
            preexec_fn=_die_with_parent,
        )
        reader = asyncio.create_task(self._read_stderr(self.process))
        started = time.monotonic()
        last_progress = started
        start_lsn = await self._server_lsn(password)
        dirty_since: float | None = None
        last_switch: float | None = None
        last_check = 0.0
        try:
            while self.process.returncode is None and self.disabling is None:
                await self._renew()
                if await self._archive_finished():
                    last_progress = time.monotonic()
                    dirty_since = None
                now = time.monotonic()
                if (
                    now - started >= self.policy.startup_grace_seconds
                    and (self.archive is None or self.archive.status != "active")
                    and self._store_failures < self.policy.max_failures
                ):
                    await self._set_status("active", "receiving WAL")
                if self.archive is not None and self.archive.last_archived_at is not None:
                    ARCHIVE_LAG.labels(str(self.env)).set(
                        (utc_now() - self.archive.last_archived_at).total_seconds()
                    )
                if now - last_check >= self.policy.check_seconds:
                    last_check = now
                    lsn = await self._server_lsn(password)
                    end = self.archive.archived_end_lsn if self.archive else None
                    baseline = end if end is not None else start_lsn
                    if lsn is not None and baseline is not None:
                        if lsn > baseline:
                            dirty_since = dirty_since if dirty_since is not None else now
                        else:
                            dirty_since = None
                        if self.policy.should_switch(
                            None if dirty_since is None else now - dirty_since,
                            None if last_switch is None else now - last_switch,
                        ):
                            last_switch = now
                            await asyncio.to_thread(self._switch, password)
                        if self.policy.stalled(
                            idle_seconds=now - last_progress, server_lsn=lsn, archived_end=baseline
                        ):
                            idle = int(now - last_progress)
                            await self._set_status(
                                "stalled",
                                f"no WAL segment archived for {idle} s while the database "
                                "wrote WAL; the receiver is restarted",
                            )
                            RECEIVER_RESTARTS.inc()
                            return None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
            if self.disabling is not None:
                return None
            await reader
            # What it wrote before it ended is archived before anything else happens.
            await self._archive_finished()
            text = b"".join(self.stderr)
            if SERVER_GONE.encode() in text:
                # The server no longer has the WAL after the last archived segment: start
                # from the slot; the first segment then records the gap.
                await asyncio.to_thread(clear_spool, self.spool)
                self.gap_hint = "the server had already removed that WAL when the receiver resumed"
            elif NOT_IN_HISTORY.encode() in text:
                # The server is on another history than the spool (restored): a reset.
                self._history_lost = True
            detail = summarize_stderr(text, "pg_receivewal") if text.strip() else ""
            return f"pg_receivewal exited with {self.process.returncode}" + (
                f": {detail}" if detail else ""
            )
        finally:
            await self._stop_process()
            reader.cancel()

    async def _read_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            self.stderr.append(line)

    async def _stop_process(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # SIGKILL: a stopped (SIGSTOP) receiver would not act on SIGTERM.
            process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 10)

    async def _server_lsn(self, password: str) -> int | None:
        def read() -> int | None:
            with connect(self.target.database, password, statement_timeout_ms=10_000) as conn:
                row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            return parse_lsn(row[0]) if row else None

        try:
            return await asyncio.to_thread(read)
        except (psycopg.Error, TargetError) as exc:
            log.info(
                "wal_position_unreadable", environment_id=str(self.env), error=type(exc).__name__
            )
            return None

    def _switch(self, password: str) -> None:
        try:
            with connect(self.target.database, password, statement_timeout_ms=10_000) as conn:
                conn.execute("SELECT pg_switch_wal()")
        except psycopg.errors.InsufficientPrivilege:
            if not self._switch_denied:
                self._switch_denied = True
                log.warning(
                    "wal_switch_not_permitted",
                    environment_id=str(self.env),
                    hint="GRANT EXECUTE ON FUNCTION pg_switch_wal() to the database's user",
                )
        except (psycopg.Error, TargetError) as exc:
            log.info("wal_switch_failed", environment_id=str(self.env), error=type(exc).__name__)

    # -- segments ------------------------------------------------------------------------------

    async def _archive_finished(self) -> bool:
        """Archive every finished segment in the spool, in order; True when one was
        recorded. A failure is logged, counted and retried on the next round; it stalls
        the archive after ``max_failures`` rounds in a row."""
        if time.monotonic() < self._store_retry_at:
            return False  # backing off after a failed store
        names = await asyncio.to_thread(finished_segments, self.spool)
        recorded = False
        for name in names:
            # A backlog (after an outage) takes a while: the lease is kept meanwhile.
            await self._renew()
            last = self.archive.last_segment if self.archive else None
            if verdict(last, name) == "duplicate":
                if name != last:
                    (self.spool / name).unlink(missing_ok=True)
                continue
            if not self.target.destinations:
                await self._set_status(
                    "stalled", "none of the schedule's destinations is registered to this runner"
                )
                return recorded
            try:
                facts = await asyncio.to_thread(
                    archive_file,
                    self.spool / name,
                    environment_id=self.env,
                    organization_id=self.target.organization_id,
                    destinations=self.target.destinations,
                    pg_waldump=self.archiver.pg_waldump,
                    tag=f"{self.archiver.owner.hex}-{self.lease.generation}",
                    local_root=self.archiver.destination_root,
                    credentials=resolver_for(
                        self.target.organization_id,
                        self.archiver.credential_policy,
                        self.archiver.vault,
                    ),
                    zstd_level=self.archiver.zstd_level,
                )
            except Exception as exc:
                self._store_failures += 1
                self._store_retry_at = time.monotonic() + self.policy.backoff(self._store_failures)
                log.warning(
                    "wal_segment_not_stored",
                    environment_id=str(self.env),
                    segment=name,
                    reason=_reason(exc),
                    failures=self._store_failures,
                )
                if self._store_failures >= self.policy.max_failures:
                    await self._set_status(
                        "stalled", f"WAL segment {name} could not be stored: {_reason(exc)}"
                    )
                return recorded
            self._store_failures = 0
            archive = await self._archive_or_open()
            archive.archive(facts, utc_now(), self.gap_hint)
            await self._save(archive)
            self.gap_hint = None
            SEGMENTS_ARCHIVED.inc()
            SEGMENT_BYTES.inc(facts.size_bytes)
            recorded = True
            await asyncio.to_thread(write_marker, self.spool, name)
            if last is not None and last != name:
                (self.spool / last).unlink(missing_ok=True)
            log.info("wal_segment_archived", environment_id=str(self.env), segment=name)
        return recorded

    # -- the aggregate ---------------------------------------------------------------------------

    def _load(self) -> WalArchive | None:
        try:
            archive: WalArchive = self.archiver.app.repository.get(wal_archive_id(self.env))
        except AggregateNotFoundError:
            return None
        return archive

    async def _archive_or_open(self) -> WalArchive:
        if self.archive is None:
            await self._set_status("active", "receiving WAL")
        assert self.archive is not None
        return self.archive

    async def _set_status(self, status: WalArchivingStatus, reason: str | None) -> None:
        now = utc_now()
        if self.archive is None:
            if status == "disabled":
                return
            self.archive = WalArchive(
                environment_id=self.env,
                organization_id=self.target.organization_id,
                status=status,
                reason=reason,
                wal_retention_days=self.target.wal_retention_days,
                changed_at=now,
            )
        elif not self.archive.change_status(
            status,
            reason,
            self.target.wal_retention_days
            if status != "disabled"
            else self.archive.wal_retention_days,
            now,
        ):
            return
        await self._save(self.archive)
        log.info("wal_archiving_status", environment_id=str(self.env), status=status, reason=reason)

    async def _save(self, archive: WalArchive) -> None:
        events = archive.collect_events()
        if not events:
            return
        fence = self.archiver.tables.fence(self.lease)
        delay = 0.5
        for attempt in range(1, 6):
            try:
                await asyncio.to_thread(self.archiver.app.save, *events, fence=fence)
                break
            except IntegrityError:
                stored = await asyncio.to_thread(self._load)
                if stored is not None and stored.version >= events[-1].originator_version:
                    break
                raise
            except Exception as exc:
                if isinstance(exc, ReceiverLeaseLost) or not is_transient(exc) or attempt == 5:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.archiver.on_saved()

    async def _renew(self) -> None:
        if time.monotonic() - self._renewed < self.policy.renew_every:
            return
        sent = time.monotonic()
        try:
            held = await asyncio.to_thread(
                self.archiver.tables.renew, self.lease, self.policy.lease_seconds
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            held = sent - self._renewed < self.policy.lease_seconds
            if not held:
                raise ReceiverLeaseLost("the lease could not be renewed in time") from None
            return
        if not held:
            raise ReceiverLeaseLost("the lease was taken over")
        self._renewed = sent

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.disabling is None and (left := deadline - time.monotonic()) > 0:
            await self._renew()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, 1.0))

    # -- switching off ---------------------------------------------------------------------------

    async def _disable(self) -> None:
        await self._stop_process()
        try:
            password = await self._password()
            await asyncio.to_thread(self._drop_slot, password)
        except Exception as exc:
            log.warning("wal_slot_not_dropped", environment_id=str(self.env), reason=_reason(exc))
        await asyncio.to_thread(shutil.rmtree, self.spool, True)
        await self._set_status("disabled", self.disabling)
        await asyncio.to_thread(self.archiver.tables.release, self.lease, "disabled")
