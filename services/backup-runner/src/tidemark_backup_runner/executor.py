"""Carries out requested backups, a bounded number at a time, one instance per backup."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import subprocess
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from tidemark_contracts import utc_now
from tidemark_contracts.backup import BackupProgress, DatabaseTarget, DestinationTarget
from tidemark_platform.failures import is_transient
from tidemark_platform.logging import bound_log_context, get_logger
from tidemark_platform.vault import SecretVault

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.basebackup import (
    check_files_directory,
    estimate_cluster_size,
    take_full_backup,
)
from tidemark_backup_runner.domain import Backup, WorkPolicy
from tidemark_backup_runner.failures import failure_reason
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
from tidemark_backup_runner.secrets import (
    CredentialPolicy,
    SecretError,
    resolve_secret,
    resolver_for,
)
from tidemark_backup_runner.storage import (
    ArtifactWriter,
    SealedCopy,
    UnsupportedDestination,
    writer_for,
)
from tidemark_backup_runner.storage.fanout import FanOut
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
# Progress publications in flight at most; beyond them running ticks are dropped.
MAX_PROGRESS_IN_FLIGHT = 200


T = TypeVar("T")
# What became of the artifact in one destination: (location, None) once it is there,
# verified and visible; (None, why) when that destination failed.
Outcome = tuple[str | None, str | None]


def artifact_key(backup: Backup) -> str:
    """Where the artifact goes in each destination: also its recorded location, so
    relative to the destination (the organization is already in a local one's path)."""
    if backup.type == "full":
        return f"{backup.environment_id}/{backup.backup_id}.full.tar.zst"
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
        pg_basebackup: str = "pg_basebackup",
        files_root: Path | None = None,
        basebackup_max_rate_kb: int | None = None,
        s3_part_size: int | None = None,
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
        self._pg_basebackup = pg_basebackup
        # Environments' files directories live under <root>/<organization id>/<filesPath>;
        # without a root a full backup of an environment that has one fails, saying so.
        self._files_root = files_root
        self._basebackup_max_rate_kb = basebackup_max_rate_kb
        self._s3_part_size = s3_part_size
        self._progress_interval = progress_interval
        self._poll_seconds = poll_seconds
        self._slots = asyncio.Semaphore(max_concurrent)
        # A backup's long blocking work (pg_dump, its files, its database's sessions) runs
        # on threads of its own: the loop's default executor, which asyncio.to_thread uses
        # for the work table and the event store, is never taken by dumps. Each held
        # backup runs one such call at a time, so one thread per slot is enough.
        self._threads = ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="backup-work"
        )
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()
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
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on the backups' own threads (with this task's
        context, so its log lines name the backup)."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

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
                if not is_transient(exc) or attempt >= self._save_attempts:
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
            self._progress(backup, "failed", "failed", 0, None, error)

    def _writers(
        self, backup: Backup, lease: Lease
    ) -> tuple[list[DestinationTarget], list[ArtifactWriter]]:
        destinations = [DestinationTarget.model_validate(d) for d in backup.destinations]
        key = artifact_key(backup)
        # The partial file names its owner and attempt; any later attempt finds and removes
        # it by the artifact's name.
        tag = f"{lease.owner.hex}-{lease.attempt}"
        # An s3 destination's keys are resolved on its writer's thread, for the backup's
        # organization only, like the database's password.
        credentials = resolver_for(backup.organization_id, self._policy, self._vault)
        extra = {} if self._s3_part_size is None else {"s3_part_size": self._s3_part_size}
        writers = [
            writer_for(
                d,
                backup.organization_id,
                key,
                tag,
                local_root=self._destination_root,
                credentials=credentials,
                **extra,
            )
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
            try:
                await self._execute(backup, claim)
            except LeaseLost:
                raise
            except Exception as exc:
                if is_transient(exc):
                    # The store or Kafka away past every retry: a later attempt tries again,
                    # a bounded number of times, and redoes only what did not happen.
                    raise
                # Bad data or a bug: no retry can change it. The backup ends now, saying why.
                # (A validation error's traceback would repeat the rejected values.)
                reason = failure_reason(exc)
                log.error(
                    "backup_failed_permanently",
                    backup_id=str(lease.backup_id),
                    reason=reason,
                    exc_info=not isinstance(exc, ValidationError),
                )
                await self._fail_permanently(lease, reason)

    async def _fail_permanently(self, lease: Lease, reason: str) -> None:
        # As stored: the failed attempt may have left the object half changed.
        backup = await asyncio.to_thread(self.app.get_backup, lease.backup_id)
        if backup.is_terminal:
            await asyncio.to_thread(self.work.finish, lease, f"already {backup.status}")
            return
        await self._fail(backup, lease, reason)

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
            # An earlier attempt was cut off. If it finished its dump (sealed in every
            # destination, the bytes matching the manifest), only the recording did not
            # happen: record it. Anything less (a partial file, a copy without its proof)
            # is not a backup anyone can rely on, and the dump starts over.
            copies = await self._sealed_copies(backup, writers)
            if copies is not None:
                await self._adopt(backup, lease, destinations, writers, copies)
                return
            # Removed only while the lease is confirmed held: a runner whose lease lapsed
            # while it looked must not remove the uploads of whoever holds it now.
            await self._confirm_lease(lease, "before removing earlier attempts' copies")
            for writer in writers:
                await self._discard_quietly(writer)
        if claim.step == "give_up":
            backup.give_up(lease.attempt, claim.last_error or INTERRUPTED, utc_now())
            await self._end(backup, lease, "failed", backup.error)
            return
        if backup.type not in ("db", "full"):
            await self._fail(backup, lease, f"backup type {backup.type!r} is not supported yet")
            return
        files_path: str | None = None
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
            if backup.type == "full":
                files_path = await self._files_path(backup)
            password = require_password(
                await self._blocking(
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
            ended = await self._blocking(
                stop_earlier_attempts, target, password, backup.id, lease.attempt
            )
            if ended:
                log.info("earlier_attempts_stopped", backup_id=str(backup.id), sessions=ended)
        estimate = await self._blocking(
            estimate_cluster_size if backup.type == "full" else estimate_size, target, password
        )
        backup.start(utc_now(), estimate, lease.attempt)
        await self._save(backup, lease)
        BACKUPS_RUNNING.inc()
        started = time.monotonic()
        # Produced once, streamed to every destination at the same time.
        fan = FanOut(writers)
        try:
            result = await self._dump(backup, target, password, fan, estimate, lease, files_path)
            manifest = {
                "backupId": str(backup.id),
                "attempt": lease.attempt,
                "owner": str(lease.owner),
                "sizeBytes": result.size_bytes,
                "checksum": result.checksum,
                "rawBytes": result.raw_bytes,
                "walStartLsn": result.wal_start_lsn,
                "walEndLsn": result.wal_end_lsn,
                "walTimeline": result.wal_timeline,
            }
            # From here on the dump is done for good: whatever happens to this attempt, a
            # later one finds it sealed and records it instead of dumping again. Each
            # destination seals (and verifies) its copy on its own thread; one that fails
            # here is recorded as failed below.
            await self._blocking(fan.seal, manifest)
        except (asyncio.CancelledError, LeaseLost):
            # The lease is lost, or the service stops: remove only this attempt's unsealed
            # partial files; whoever holds the backup next owns the rest.
            await self._blocking(fan.abort)
            raise
        except Exception as exc:
            await self._blocking(fan.abort)
            if is_transient(exc):
                raise
            # The dump or its storage failed: nothing partial stays behind (the failure is
            # recorded first: a runner that lost the backup must not remove the new
            # owner's files) and the backup says why.
            self._record_failed_destinations(backup, destinations, fan)
            await self._fail(backup, lease, failure_reason(exc))
            for writer in writers:
                await self._discard_quietly(writer)
            if not isinstance(exc, DumpError | OSError):
                log.exception("backup_crashed", backup_id=str(backup.id))
            return
        finally:
            BACKUPS_RUNNING.dec()
        outcomes = await self._publish(
            lease,
            [
                (None, lane.error) if lane.error else functools.partial(lane.writer.commit)
                for lane in fan.lanes
            ],
        )
        await self._record(
            backup,
            lease,
            destinations,
            writers,
            outcomes,
            result.size_bytes,
            result.checksum,
            wal_range=(result.wal_start_lsn, result.wal_end_lsn, result.wal_timeline),
        )
        if backup.status != "completed":
            return
        BACKUP_SECONDS.observe(time.monotonic() - started)
        log.info(
            "backup_completed",
            backup_id=str(backup.id),
            attempt=lease.attempt,
            size_bytes=result.size_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        self._progress(backup, "completed", "completed", result.raw_bytes, result.raw_bytes)

    async def _sealed_copies(
        self, backup: Backup, writers: list[ArtifactWriter]
    ) -> list[SealedCopy] | None:
        """The copies an earlier attempt sealed, one per destination and all the same
        artifact; None unless every destination has one (and the backup was started)."""
        if backup.status != "running":
            return None
        copies = []
        for writer in writers:
            copy = await self._blocking(writer.sealed)
            if copy is None:
                return None
            copies.append(copy)
        if len({(c.size_bytes, c.checksum) for c in copies}) != 1:
            return None
        return copies

    async def _adopt(
        self,
        backup: Backup,
        lease: Lease,
        destinations: list[DestinationTarget],
        writers: list[ArtifactWriter],
        copies: list[SealedCopy],
    ) -> None:
        """Record the artifact an earlier attempt dumped and sealed, instead of dumping."""
        log.info(
            "sealed_artifact_adopted",
            backup_id=str(backup.id),
            attempt=lease.attempt,
            sealed_by_attempt=copies[0].manifest.get("attempt"),
        )
        outcomes = await self._publish(
            lease,
            [
                functools.partial(writer.adopt, copy)
                for writer, copy in zip(writers, copies, strict=True)
            ],
        )
        await self._record(
            backup,
            lease,
            destinations,
            writers,
            outcomes,
            copies[0].size_bytes,
            copies[0].checksum,
            wal_range=_wal_range_of(copies[0].manifest),
        )
        if backup.status != "completed":
            return
        raw = copies[0].manifest.get("rawBytes")
        done = raw if isinstance(raw, int) else copies[0].size_bytes
        self._progress(backup, "completed", "completed", done, done)

    async def _publish(
        self, lease: Lease, steps: list[Callable[[], str] | Outcome]
    ) -> list[Outcome]:
        """Make the sealed artifact visible in every destination, once the lease is
        confirmed: a runner that lost the backup must not put its copy where the new
        owner's goes. While the work table is unreachable the confirmation is retried; the
        renewer gives the attempt up once the lease may have run out. A step is a
        destination's publication, or the outcome of one that already failed; a
        publication that fails fails its destination only."""
        await self._confirm_lease(lease, "before storing the artifact")
        return [
            step if isinstance(step, tuple) else await self._blocking(_outcome_of, step)
            for step in steps
        ]

    async def _confirm_lease(self, lease: Lease, when: str) -> None:
        """Renew ``lease`` now, or raise ``LeaseLost``. While the work table is unreachable
        the confirmation is retried; the renewer gives the attempt up once the lease may
        have run out."""
        delay = 0.5
        while True:
            try:
                held = await asyncio.to_thread(self.work.renew, lease, self.policy)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("lease_unconfirmed", backup_id=str(lease.backup_id), error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not held:
                raise LeaseLost(f"backup {lease.backup_id}: lost {when}")
            return

    def _record_failed_destinations(
        self, backup: Backup, destinations: list[DestinationTarget], fan: FanOut
    ) -> None:
        """Record which destinations failed on their own before the whole backup did."""
        now = utc_now()
        for destination, lane in zip(destinations, fan.lanes, strict=True):
            if lane.error and backup.status == "running":
                backup.record_upload_failure(str(destination.destination_id), lane.error, now)

    async def _record(
        self,
        backup: Backup,
        lease: Lease,
        destinations: list[DestinationTarget],
        writers: list[ArtifactWriter],
        outcomes: list[Outcome],
        size_bytes: int,
        checksum: str,
        wal_range: tuple[str | None, str | None, int | None] = (None, None, None),
    ) -> None:
        """Record each destination's outcome and the backup's: completed when at least one
        destination holds a verified copy, else failed (retried while the store is away;
        an attempt cut off meanwhile leaves the sealed artifact to the next one). Only
        then, the write fenced by the lease, is what failed destinations hold removed."""
        now = utc_now()
        for destination, (location, error) in zip(destinations, outcomes, strict=True):
            if location is not None:
                backup.record_upload(str(destination.destination_id), location, size_bytes, now)
            else:
                backup.record_upload_failure(
                    str(destination.destination_id), error or "failed", now
                )
        if backup.uploads:
            backup.complete(
                size_bytes,
                checksum,
                "zstd",
                now,
                wal_start_lsn=wal_range[0],
                wal_end_lsn=wal_range[1],
                wal_timeline=wal_range[2],
            )
            await self._end(backup, lease, "completed", None)
        else:
            reasons = "; ".join(error or "failed" for _, error in outcomes)
            backup.fail(f"no destination holds a verified copy: {reasons}", now)
            await self._end(backup, lease, "failed", backup.error)
        for writer, (location, _) in zip(writers, outcomes, strict=True):
            if location is None:
                await self._discard_quietly(writer)
            else:
                with contextlib.suppress(OSError):
                    await self._blocking(writer.forget_proofs)

    async def _discard_quietly(self, writer: ArtifactWriter) -> None:
        """Remove what a failed destination holds of the artifact; a store still away is
        logged (its cleanup is then the deletion's, or the store's lifecycle rules')."""
        try:
            await self._blocking(writer.discard)
        except Exception as exc:
            log.warning("failed_destination_not_cleaned", error=failure_reason(exc))

    async def _dump(
        self,
        backup: Backup,
        target: DatabaseTarget,
        password: str,
        fan: FanOut,
        estimate: int | None,
        lease: Lease,
        files_path: str | None = None,
    ) -> DumpResult:
        done = 0
        phase = "basebackup" if backup.type == "full" else "dumping"

        def on_progress(raw_bytes: int) -> None:
            nonlocal done
            done = raw_bytes

        async def tick() -> None:
            while True:
                await asyncio.sleep(self._progress_interval)
                self._progress(backup, "running", phase, done, estimate)

        ticker = asyncio.create_task(tick())
        processes: list[subprocess.Popen[bytes]] = []
        try:
            if backup.type == "full":
                return await self._blocking(
                    take_full_backup,
                    target,
                    password,
                    [fan],
                    on_progress,
                    backup_id=backup.id,
                    created=utc_now(),
                    files=(
                        (self._files_root, backup.organization_id, files_path)
                        if files_path is not None
                        else None
                    ),
                    pg_basebackup=self._pg_basebackup,
                    zstd_level=self._zstd_level,
                    zstd_threads=self._zstd_threads,
                    max_rate_kb=self._basebackup_max_rate_kb,
                    stall_timeout_seconds=self._stall_timeout,
                    on_process=processes.append,
                    application_name=dump_application_name(lease.backup_id, lease.attempt),
                )
            return await self._blocking(
                dump_database,
                target,
                password,
                [fan],
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
            # Waited for without swallowing a cancellation of this task (suppressing the
            # ticker's CancelledError here would also suppress ours).
            await asyncio.wait({ticker})

    async def _files_path(self, backup: Backup) -> str | None:
        """The registered files directory of a full backup's environment, checked before
        anything else runs: the command cannot name one, only the catalog says it."""
        if self._registrations is None:
            return None
        files_path = await self._registrations.files_path(
            backup.organization_id, backup.environment_id
        )
        if files_path is not None:
            await self._blocking(
                check_files_directory, self._files_root, backup.organization_id, files_path
            )
        return files_path

    def _progress(
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
        # Progress is ephemeral: a tick is sent beside the backup, never waited for by it.
        # A publication stuck in Kafka's client (wait_for waits for the cancellation of
        # what it times out, however long that takes) must not hold a backup, its slot,
        # or its shutdown; while too many are in flight, running ticks are dropped.
        if status == "running" and len(self._publishing) >= MAX_PROGRESS_IN_FLIGHT:
            return
        task = asyncio.create_task(self._send_progress(tick, backup))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _send_progress(self, tick: BackupProgress, backup: Backup) -> None:
        try:
            await asyncio.wait_for(
                self._publish_progress(tick, backup.organization_id, backup.correlation_id),
                timeout=5.0,
            )
        except Exception as exc:
            # Losing a tick must never fail a backup.
            log.debug("progress_not_published", error=repr(exc))


def _wal_range_of(manifest: Any) -> tuple[str | None, str | None, int | None]:
    """The WAL range (and start timeline) a sealed full backup's proof recorded (none for
    a dump; no timeline in proofs sealed before it was kept)."""
    start, end = manifest.get("walStartLsn"), manifest.get("walEndLsn")
    timeline = manifest.get("walTimeline")
    return (
        start if isinstance(start, str) else None,
        end if isinstance(end, str) else None,
        timeline if isinstance(timeline, int) and not isinstance(timeline, bool) else None,
    )


def _outcome_of(publish: Callable[[], str]) -> Outcome:
    """A destination's publication as its outcome; its failure fails that destination."""
    try:
        return publish(), None
    except Exception as exc:
        log.warning("destination_not_published", reason=failure_reason(exc))
        return None, failure_reason(exc)
