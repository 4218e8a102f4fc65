"""Carries out requested backups, a bounded number at a time, and reports progress."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, PersistenceError
from prometheus_client import Counter, Gauge, Histogram
from tidemark_contracts import utc_now
from tidemark_contracts.backup import BackupProgress, DatabaseTarget, DestinationTarget
from tidemark_platform.logging import bound_log_context, get_logger

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup
from tidemark_backup_runner.pgtools import DumpError, DumpResult, dump_database, estimate_size
from tidemark_backup_runner.secrets import CredentialPolicy, SecretError, resolve_secret
from tidemark_backup_runner.storage import ArtifactWriter, UnsupportedDestination, writer_for

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
    "the backup-runner stopped while this backup was running; its partial artifact was "
    "discarded. Request a new backup."
)


def failure_reason(exc: Exception) -> str:
    if isinstance(exc, DumpError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"storing the artifact failed: {exc.strerror or exc}{where}"
    return f"internal error: {type(exc).__name__}"


def artifact_key(backup: Backup) -> str:
    name = f"{backup.backup_id}.{backup.type}.pgdump.zst"
    return f"{backup.organization_id}/{backup.environment_id}/{name}"


class BackupExecutor:
    def __init__(
        self,
        app: BackupRunnerApplication,
        publish_progress: PublishProgress,
        on_saved: Callable[[], None],
        *,
        pg_dump: str,
        max_concurrent: int = 2,
        zstd_level: int = 3,
        zstd_threads: int = 1,
        progress_interval: float = 1.0,
        lock_wait_timeout_seconds: int = 300,
        stall_timeout_seconds: float = 900.0,
        credential_policy: CredentialPolicy | None = None,
        save_attempts: int = 12,
    ) -> None:
        self.app = app
        self._publish_progress = publish_progress
        self._on_saved = on_saved
        self._pg_dump = pg_dump
        self._zstd_level = zstd_level
        self._zstd_threads = zstd_threads
        self._lock_wait_timeout = lock_wait_timeout_seconds
        self._stall_timeout = stall_timeout_seconds
        self._policy = credential_policy or CredentialPolicy()
        self._save_attempts = save_attempts
        self._progress_interval = progress_interval
        self._slots = asyncio.Semaphore(max_concurrent)
        self._queue: asyncio.Queue[UUID] = asyncio.Queue()
        self._active: set[UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, backup_id: UUID) -> None:
        """Carry the backup out unless it is finished or already under way (idempotent)."""
        self._queue.put_nowait(backup_id)

    async def run(self) -> None:
        for backup_id in await asyncio.to_thread(self.app.unfinished_backups):
            self.submit(backup_id)
        while True:
            backup_id = await self._queue.get()
            if backup_id in self._active:
                continue
            self._active.add(backup_id)
            task = asyncio.create_task(self._run_one(backup_id), name=f"backup-{backup_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_one(self, backup_id: UUID) -> None:
        try:
            for attempt in itertools.count(1):
                try:
                    async with self._slots:
                        await self.execute(backup_id)
                    return
                except Exception:
                    # Not a backup failure (those are recorded) but the store unreachable
                    # past every retry: try again later rather than leave it stuck. The
                    # backup stays active meanwhile, so nothing else starts it twice.
                    log.exception(
                        "backup_execution_crashed", backup_id=str(backup_id), attempt=attempt
                    )
                    await asyncio.sleep(min(300.0, 5.0 * 2**attempt))
        finally:
            self._active.discard(backup_id)

    async def _save(self, backup: Backup) -> None:
        """Save the backup's new events, retrying while the store is unreachable.

        The events are collected once: a retried ``save(backup)`` would find none left.
        """
        events = backup.collect_events()
        if not events:
            return
        delay = 0.5
        for attempt in itertools.count(1):
            try:
                await asyncio.to_thread(self.app.save, *events)
                break
            except IntegrityError:
                # A commit whose answer was lost, then retried: stored already, or a bug.
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

    async def _fail(self, backup: Backup, reason: str) -> None:
        backup.fail(reason, utc_now())
        await self._save(backup)
        BACKUPS_FINISHED.labels(backup.type, "failed").inc()
        log.warning("backup_failed", backup_id=str(backup.id), reason=reason)
        await self._progress(backup, "failed", "failed", 0, None, reason)

    def _writers(self, backup: Backup) -> tuple[list[DestinationTarget], list[ArtifactWriter]]:
        destinations = [DestinationTarget.model_validate(d) for d in backup.destinations]
        return destinations, [writer_for(d, artifact_key(backup)) for d in destinations]

    async def execute(self, backup_id: UUID) -> None:
        backup = await asyncio.to_thread(self.app.get_backup, backup_id)
        # Every line logged about this backup, here and in the threads it starts, says
        # which backup and which request it belongs to.
        with bound_log_context(backup_id=backup.id, correlation_id=backup.correlation_id):
            await self._execute(backup)

    async def _execute(self, backup: Backup) -> None:
        if backup.is_terminal:
            return
        try:
            destinations, writers = self._writers(backup)
        except UnsupportedDestination as exc:
            await self._fail(backup, str(exc))
            return
        if backup.status == "running":
            # This runner died during the backup: its artifacts are incomplete, or complete
            # but never recorded. Either way they are not a backup anyone can rely on.
            for writer in writers:
                await asyncio.to_thread(writer.discard)
            await self._fail(backup, INTERRUPTED)
            return
        if backup.type != "db":
            await self._fail(backup, f"backup type {backup.type!r} is not supported yet")
            return
        target = DatabaseTarget.model_validate(backup.database)
        try:
            password = resolve_secret(target.password_ref, backup.organization_id, self._policy)
        except SecretError as exc:
            await self._fail(backup, str(exc))
            return
        estimate = await asyncio.to_thread(estimate_size, target, password)
        backup.start(utc_now(), estimate)
        await self._save(backup)
        BACKUPS_RUNNING.inc()
        started = time.monotonic()
        try:
            result = await self._dump(backup, target, password, writers, estimate)
            locations = [await asyncio.to_thread(writer.commit) for writer in writers]
        except BaseException as exc:
            # Whatever went wrong, nothing partial stays behind (not even a copy already
            # committed to another destination) and the backup says why.
            for writer in writers:
                await asyncio.to_thread(writer.discard)
            if not isinstance(exc, Exception):
                raise  # shutdown: the next start records the interruption
            await self._fail(backup, failure_reason(exc))
            if not isinstance(exc, DumpError | OSError):
                log.exception("backup_crashed", backup_id=str(backup.id))
            return
        finally:
            BACKUPS_RUNNING.dec()
        now = utc_now()
        for destination, location in zip(destinations, locations, strict=True):
            backup.record_upload(str(destination.destination_id), location, result.size_bytes, now)
        backup.complete(result.size_bytes, result.checksum, "zstd", now)
        await self._save(backup)
        BACKUPS_FINISHED.labels(backup.type, "completed").inc()
        BACKUP_SECONDS.observe(time.monotonic() - started)
        log.info(
            "backup_completed",
            backup_id=str(backup.id),
            size_bytes=result.size_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        await self._progress(backup, "completed", "completed", result.raw_bytes, result.raw_bytes)

    async def _dump(
        self,
        backup: Backup,
        target: DatabaseTarget,
        password: str | None,
        writers: list[ArtifactWriter],
        estimate: int | None,
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
            )
        except asyncio.CancelledError:
            # Shutting down: stop pg_dump, or the interpreter waits for the whole dump.
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
