"""Carries out requested backups, a bounded number at a time, one instance per backup."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import PoolTimeout
from tidemark_contracts import utc_now
from tidemark_contracts.backup import BackupProgress, DatabaseTarget, DestinationTarget
from tidemark_platform.logging import bound_log_context, get_logger
from tidemark_platform.vault import SecretVault

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup, WorkPolicy
from tidemark_backup_runner.pgtools import (
    DumpError,
    DumpResult,
    TargetError,
    check_target,
    dump_application_name,
    dump_database,
    estimate_size,
    require_password,
    stop_earlier_attempts,
)
from tidemark_backup_runner.registry import Registrations
from tidemark_backup_runner.secrets import CredentialPolicy, SecretError, resolve_secret
from tidemark_backup_runner.storage import ArtifactWriter, UnsupportedDestination, writer_for
from tidemark_backup_runner.work import Claim, Lease, LeaseLost, WorkTable

log = get_logger(__name__)

BACKUPS_FINISHED = Counter(
    "tidemark_backups_finished_total",
    "Backups that ended, by type and outcome",
    ["type", "outcome"],
)
BACKUPS_RUNNING = Gauge("tidemark_backups_running", "Backups being taken now")
BACKUP_SECONDS = Histogram(
    "tidemark_backup_duration_seconds",
    "Time from start to completion of successful backups",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)

# (tick, organization id, correlation id of the request that caused the backup)
PublishProgress = Callable[[BackupProgress, UUID, UUID | None], Awaitable[None]]

INTERRUPTED = (
    "the backup-runner running it stopped (its lease expired); each attempt's partial "
    "artifact was discarded"
)
# How often an idle runner looks for work nobody holds (a lease that ran out elsewhere).
DEFAULT_POLL_SECONDS = 2.0
# How often an idle runner also reads the log's tail for requests without a work row.
INDEX_EVERY_SECONDS = 10.0
WORK_LOG = "requests"


def failure_reason(exc: Exception) -> str:
    if isinstance(exc, DumpError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"storing the artifact failed: {exc.strerror or exc}{where}"
    return f"internal error: {type(exc).__name__}"


def artifact_key(backup: Backup) -> str:
    """Where the artifact goes in each destination: also its recorded location, so
    relative to the destination (the organization is already in a local one's path)."""
    return f"{backup.environment_id}/{backup.backup_id}.{backup.type}.pgdump.zst"


class BackupExecutor:
    """Claims unfinished backups from the work table, holds each through a renewed lease,
    and carries it out; a backup whose lease is lost is stopped at once (pg_dump killed,
    this attempt's partial artifact removed) and left to whoever holds it now."""

    def __init__(
        self,
        app: BackupRunnerApplication,
        work: WorkTable,
        publish_progress: PublishProgress,
        on_saved: Callable[[], None],
        *,
        owner: UUID,
        pg_dump: str,
        policy: WorkPolicy | None = None,
        max_concurrent: int = 2,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        zstd_level: int = 3,
        zstd_threads: int = 1,
        progress_interval: float = 1.0,
        lock_wait_timeout_seconds: int = 300,
        stall_timeout_seconds: float = 900.0,
        credential_policy: CredentialPolicy | None = None,
        vault: SecretVault | None = None,
        registrations: Registrations | None = None,
        save_attempts: int = 12,
        destination_root: Path | None = None,
    ) -> None:
        self.app = app
        self.work = work
        self.owner = owner
        self.policy = policy or WorkPolicy()
        self._publish_progress = publish_progress
        self._on_saved = on_saved
        self._pg_dump = pg_dump
        self._zstd_level = zstd_level
        self._zstd_threads = zstd_threads
        self._lock_wait_timeout = lock_wait_timeout_seconds
        self._stall_timeout = stall_timeout_seconds
        self._policy = credential_policy or CredentialPolicy()
        self._vault = vault
        # None only where a test drives the executor without a catalog: main always has it.
        self._registrations = registrations
        self._save_attempts = save_attempts
        self._destination_root = destination_root
        self._progress_interval = progress_interval
        self._poll_seconds = poll_seconds
        self._slots = asyncio.Semaphore(max_concurrent)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._indexed_at = 0.0

    async def submit(self, backup_id: UUID) -> None:
        """Make sure the requested backup has its work row, and look for work now.

        Idempotent: a redelivered command repairs a row a crash kept from being written,
        and changes nothing otherwise."""
        await asyncio.to_thread(self.work.ensure, backup_id)
        self._wake.set()

    async def run(self) -> None:
        try:
            # Requests recorded just before a crash, whose rows were never written.
            await self._index_log()
            while True:
                await self._slots.acquire()
                # Cleared before looking: a request that arrives meanwhile wakes the next look.
                self._wake.clear()
                # The lease runs from the server's clock when it got the claim, which is
                # after this: counting from here, the holder never trusts it too long.
                sent = time.monotonic()
                try:
                    claim = await self._claim()
                except BaseException:
                    self._slots.release()
                    raise
                if claim is None:
                    self._slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
                    continue
                task = asyncio.create_task(
                    self._hold(claim, sent), name=f"backup-{claim.backup_id}"
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            # Shutting down: stop what runs here and hand it over at once.
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _index_log(self) -> None:
        self._indexed_at = time.monotonic()
        while await asyncio.to_thread(self.work.index_log, WORK_LOG, self.app.log_changes):
            pass

    async def _claim(self) -> Claim | None:
        try:
            if time.monotonic() - self._indexed_at > INDEX_EVERY_SECONDS:
                await self._index_log()
            return await asyncio.to_thread(self.work.claim, self.owner, self.policy)
        except (psycopg.Error, PersistenceError, PoolTimeout) as exc:
            log.warning("work_table_unavailable", error=repr(exc))
            return None

    async def _hold(self, claim: Claim, claim_sent: float) -> None:
        """Run the claimed backup while renewing its lease; stop it when the lease is lost."""
        lease = claim.lease
        lost: list[str] = []
        work = asyncio.create_task(self._carry_out(claim), name=f"attempt-{lease.attempt}")
        renewer = asyncio.create_task(self._renew(lease, claim_sent, work, lost))
        try:
            await work
        except LeaseLost as exc:
            lost.append(str(exc))
        except asyncio.CancelledError:
            if not lost:
                # Shutdown: hand the backup over now rather than after the lease expires.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.work.release, lease, "released at shutdown")
                raise
        except Exception as exc:
            # Not a backup failure (those are recorded) but the store unreachable past
            # every retry, or a bug: keep why, and let the lease run out; the next attempt
            # (here or elsewhere) starts over, a bounded number of times.
            log.exception("backup_attempt_crashed", backup_id=str(lease.backup_id))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.work.note_error, lease, failure_reason(exc))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._slots.release()
        if lost:
            log.warning(
                "backup_lease_lost",
                backup_id=str(lease.backup_id),
                attempt=lease.attempt,
                reason=lost[0],
            )

    async def _renew(
        self, lease: Lease, sent: float, work: asyncio.Task[None], lost: list[str]
    ) -> None:
        """Renew ``lease`` (last set by a request sent at ``sent``) until cancelled; when it
        cannot be renewed before it would expire, record why and cancel ``work``."""
        while True:
            await asyncio.sleep(self.policy.renew_every)
            attempt_sent = time.monotonic()
            remaining = self.policy.lease_seconds - (attempt_sent - sent)
            try:
                held = await asyncio.wait_for(
                    asyncio.to_thread(self.work.renew, lease, self.policy), timeout=remaining
                )
            except TimeoutError:
                held = False
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("lease_renewal_failed", backup_id=str(lease.backup_id), error=repr(exc))
                held = self.policy.still_held(time.monotonic() - sent)
                if held:
                    continue
            if not held:
                lost.append("the lease could not be renewed in time")
                work.cancel()
                return
            sent = attempt_sent

    async def _save(self, backup: Backup, lease: Lease) -> None:
        """Save the backup's new events, retrying while the store is unreachable, and only
        while ``lease`` is held (checked in the transaction that writes them).

        The events are collected once: a retried ``save(backup)`` would find none left.
        """
        events = backup.collect_events()
        if not events:
            return
        fence = self.work.fence(lease)
        delay = 0.5
        for attempt in itertools.count(1):
            try:
                await asyncio.to_thread(self.app.save, *events, fence=fence)
                break
            except IntegrityError:
                # A commit whose answer was lost, then retried: stored already, or a bug.
                # (Nobody else can have written: every write is fenced by the lease.)
                stored = await asyncio.to_thread(self.app.get_backup, backup.id)
                if stored.version >= events[-1].originator_version:
                    break
                raise
            except (PersistenceError, psycopg.Error) as exc:
                if attempt >= self._save_attempts:
                    raise
                log.warning("event_store_unavailable", error=repr(exc), attempt=attempt)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._on_saved()

    async def _fail(self, backup: Backup, lease: Lease, reason: str) -> None:
        backup.fail(reason, utc_now())
        await self._end(backup, lease, "failed", reason)

    async def _end(self, backup: Backup, lease: Lease, outcome: str, error: str | None) -> None:
        await self._save(backup, lease)
        await asyncio.to_thread(self.work.finish, lease, outcome, error)
        BACKUPS_FINISHED.labels(backup.type, outcome).inc()
        if outcome == "failed":
            log.warning("backup_failed", backup_id=str(backup.id), reason=error)
            await self._progress(backup, "failed", "failed", 0, None, error)

    def _writers(
        self, backup: Backup, lease: Lease
    ) -> tuple[list[DestinationTarget], list[ArtifactWriter]]:
        destinations = [DestinationTarget.model_validate(d) for d in backup.destinations]
        key = artifact_key(backup)
        # The partial file names its owner and attempt; any later attempt finds and removes
        # it by the artifact's name.
        tag = f"{lease.owner.hex}-{lease.attempt}"
        writers = [
            writer_for(d, backup.organization_id, key, tag, local_root=self._destination_root)
            for d in destinations
        ]
        return destinations, writers

    async def _carry_out(self, claim: Claim) -> None:
        lease = claim.lease
        try:
            backup = await asyncio.to_thread(self.app.get_backup, lease.backup_id)
        except AggregateNotFoundError:
            # Rows are written only for recorded requests; one without is nothing to run.
            log.error("work_without_a_backup", backup_id=str(lease.backup_id))
            await asyncio.to_thread(self.work.finish, lease, "no such backup")
            return
        # Every line logged about this backup, here and in the threads it starts, says
        # which backup and which request it belongs to.
        with bound_log_context(backup_id=backup.id, correlation_id=backup.correlation_id):
            await self._execute(backup, claim)

    async def _execute(self, backup: Backup, claim: Claim) -> None:
        lease = claim.lease
        if backup.is_terminal:
            # Its end was recorded, then its runner stopped before saying so here.
            await asyncio.to_thread(self.work.finish, lease, f"already {backup.status}")
            return
        try:
            destinations, writers = self._writers(backup, lease)
        except UnsupportedDestination as exc:
            await self._fail(backup, lease, str(exc))
            return
        if claim.previous_owner is not None or backup.status == "running":
            # An earlier attempt was cut off: what it left (a partial file, or an artifact
            # complete but never recorded) is not a backup anyone can rely on.
            for writer in writers:
                await asyncio.to_thread(writer.discard)
        if claim.step == "give_up":
            backup.give_up(lease.attempt, claim.last_error or INTERRUPTED, utc_now())
            await self._end(backup, lease, "failed", backup.error)
            return
        if backup.type != "db":
            await self._fail(backup, lease, f"backup type {backup.type!r} is not supported yet")
            return
        target = DatabaseTarget.model_validate(backup.database)
        try:
            # Before any connection: settings libpq would read as more than themselves,
            # and a missing password (libpq would look for one of the runner's), end it.
            check_target(target)
            # Before any credential is opened: only what the organization registered.
            if self._registrations is not None:
                refusal = await self._registrations.refusal(
                    backup.organization_id, backup.environment_id, target, destinations
                )
                if refusal is not None:
                    raise TargetError(refusal)
            password = require_password(
                await asyncio.to_thread(
                    resolve_secret,
                    target.password_ref,
                    backup.organization_id,
                    self._policy,
                    self._vault,
                )
            )
        except (SecretError, TargetError) as exc:
            await self._fail(backup, lease, str(exc))
            return
        if lease.attempt > 1:
            ended = await asyncio.to_thread(
                stop_earlier_attempts, target, password, backup.id, lease.attempt
            )
            if ended:
                log.info("earlier_attempts_stopped", backup_id=str(backup.id), sessions=ended)
        estimate = await asyncio.to_thread(estimate_size, target, password)
        backup.start(utc_now(), estimate, lease.attempt)
        await self._save(backup, lease)
        BACKUPS_RUNNING.inc()
        started = time.monotonic()
        try:
            result = await self._dump(backup, target, password, writers, estimate, lease)
            # Checked just before the artifact becomes visible: a runner that lost the
            # backup must not put its copy where the new owner's goes.
            if not await asyncio.to_thread(self.work.renew, lease, self.policy):
                raise LeaseLost(f"backup {lease.backup_id}: lost before storing the artifact")
            locations = [await asyncio.to_thread(writer.commit) for writer in writers]
        except (asyncio.CancelledError, LeaseLost):
            # The lease is lost, or the service stops: remove only this attempt's partial
            # files; whoever holds the backup next owns the rest.
            for writer in writers:
                await asyncio.to_thread(writer.abort)
            raise
        except Exception as exc:
            # Whatever went wrong, nothing partial stays behind (not even a copy already
            # committed to another destination) and the backup says why.
            for writer in writers:
                await asyncio.to_thread(writer.discard)
            await self._fail(backup, lease, failure_reason(exc))
            if not isinstance(exc, DumpError | OSError):
                log.exception("backup_crashed", backup_id=str(backup.id))
            return
        finally:
            BACKUPS_RUNNING.dec()
        now = utc_now()
        for destination, location in zip(destinations, locations, strict=True):
            backup.record_upload(str(destination.destination_id), location, result.size_bytes, now)
        backup.complete(result.size_bytes, result.checksum, "zstd", now)
        await self._end(backup, lease, "completed", None)
        BACKUP_SECONDS.observe(time.monotonic() - started)
        log.info(
            "backup_completed",
            backup_id=str(backup.id),
            attempt=lease.attempt,
            size_bytes=result.size_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        await self._progress(backup, "completed", "completed", result.raw_bytes, result.raw_bytes)

    async def _dump(
        self,
        backup: Backup,
        target: DatabaseTarget,
        password: str,
        writers: list[ArtifactWriter],
        estimate: int | None,
        lease: Lease,
    ) -> DumpResult:
        done = 0

        def on_progress(raw_bytes: int) -> None:
            nonlocal done
            done = raw_bytes

        async def tick() -> None:
            while True:
                await asyncio.sleep(self._progress_interval)
                await self._progress(backup, "running", "dumping", done, estimate)

        ticker = asyncio.create_task(tick())
        processes: list[subprocess.Popen[bytes]] = []
        try:
            return await asyncio.to_thread(
                dump_database,
                target,
                password,
                writers,
                on_progress,
                pg_dump=self._pg_dump,
                zstd_level=self._zstd_level,
                zstd_threads=self._zstd_threads,
                lock_wait_timeout_seconds=self._lock_wait_timeout,
                stall_timeout_seconds=self._stall_timeout,
                on_process=processes.append,
                application_name=dump_application_name(lease.backup_id, lease.attempt),
            )
        except asyncio.CancelledError:
            # The lease is lost, or shutting down: stop pg_dump now, or it runs on (and
            # the interpreter waits for the whole dump).
            for process in processes:
                process.kill()
            raise
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _progress(
        self,
        backup: Backup,
        status: str,
        phase: str,
        done: int,
        total: int | None,
        message: str | None = None,
    ) -> None:
        percent = 100.0 if status == "completed" else None
        if percent is None and total:
            percent = round(min(99.0, 100.0 * done / total), 1)
        tick = BackupProgress(
            backup_id=backup.id,
            environment_id=backup.environment_id,
            status=status,  # type: ignore[arg-type]
            phase=phase,
            percent=percent,
            bytes_done=done,
            bytes_total=total,
            message=message,
            at=utc_now(),
        )
        try:
            await asyncio.wait_for(
                self._publish_progress(tick, backup.organization_id, backup.correlation_id),
                timeout=5.0,
            )
        except Exception as exc:
            # Progress is ephemeral: losing a tick must never fail a backup.
            log.debug("progress_not_published", error=repr(exc))
