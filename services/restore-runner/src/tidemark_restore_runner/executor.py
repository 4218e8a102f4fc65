"""Carries out requested restores: one instance per restore, one restore per target.

For each claimed restore: wait for its safety backup, download and verify the artifact
(nothing of the target is touched before), then lay it down (``db``: dbrestore.py;
``full``: physical.py), recording milestones and publishing progress ticks. A restore
taken over from a runner that stopped is run again when that runner had not touched the
target yet, and otherwise recovered (cleaned up and ended as the target stands).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from prometheus_client import Counter, Gauge
from tidemark_backup_runner.domain import WorkPolicy
from tidemark_backup_runner.pgtools import TargetError, check_target, require_password
from tidemark_backup_runner.secrets import (
    CredentialPolicy,
    SecretError,
    resolve_secret,
    resolver_for,
)
from tidemark_contracts import utc_now
from tidemark_contracts.backup import DatabaseTarget
from tidemark_contracts.catalog import ClusterSpec
from tidemark_contracts.restore import RestoreProgress, RestoreSource
from tidemark_platform.failures import is_transient
from tidemark_platform.logging import bound_log_context, get_logger
from tidemark_platform.vault import SecretVault

from tidemark_restore_runner import dbrestore
from tidemark_restore_runner.application import RestoreRunnerApplication
from tidemark_restore_runner.artifacts import (
    VerificationFailed,
    download_verified,
    segment_fetcher,
    wait_for_segment,
    wal_sources,
)
from tidemark_restore_runner.domain import TOUCHING, Restore, next_step, stopped_reason
from tidemark_restore_runner.view import BackupsReader
from tidemark_restore_runner.work import Claim, Lease, LeaseLost, WorkTable

log = get_logger(__name__)

RESTORES_FINISHED = Counter(
    "tidemark_restores_finished_total",
    "Restores that ended, by type and outcome",
    ["type", "outcome"],
)
RESTORES_RUNNING = Gauge("tidemark_restores_running", "Restores being carried out now")
WORK_LOG = "requests"
INDEX_EVERY_SECONDS = 10.0
SAFETY_POLL_SECONDS = 0.5

T = TypeVar("T")
PublishProgress = Callable[[RestoreProgress, UUID, UUID | None], Awaitable[None]]


class Ended(Exception):
    """The restore ended (recorded); nothing more to do in this attempt."""


class RestoreExecutor:
    def __init__(
        self,
        app: RestoreRunnerApplication,
        work: WorkTable,
        backups: BackupsReader,
        publish_progress: PublishProgress,
        on_saved: Callable[[], None],
        *,
        owner: UUID,
        scratch_dir: Path,
        pg_restore: str = "pg_restore",
        policy: WorkPolicy | None = None,
        poll_seconds: float = 2.0,
        max_concurrent: int = 2,
        safety_backup_timeout: float = 3600.0,
        progress_interval: float = 0.5,
        credential_policy: CredentialPolicy | None = None,
        vault: SecretVault | None = None,
        destination_root: Path | None = None,
        files_root: Path | None = None,
        replay_segment_delay: float = 0.0,
        wal_view_timeout: float = 120.0,
    ) -> None:
        self.app = app
        self.work = work
        self.backups = backups
        self.owner = owner
        self.policy = policy or WorkPolicy()
        self._publish_progress = publish_progress
        self._on_saved = on_saved
        self._scratch = scratch_dir
        self._pg_restore = pg_restore
        self._poll_seconds = poll_seconds
        self._slots = asyncio.Semaphore(max_concurrent)
        self._safety_timeout = safety_backup_timeout
        self._progress_interval = progress_interval
        self._credentials = credential_policy or CredentialPolicy()
        self._vault = vault
        self._destination_root = destination_root
        self._files_root = files_root
        self._replay_segment_delay = replay_segment_delay
        self._wal_view_timeout = wal_view_timeout
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing: set[asyncio.Task[None]] = set()
        self._indexed_at = 0.0

    # -- the loop --------------------------------------------------------------------------

    async def submit(self, restore_id: UUID, target_environment_id: UUID) -> None:
        await asyncio.to_thread(self.work.ensure, restore_id, target_environment_id)
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._index_log()
            while True:
                await self._slots.acquire()
                self._wake.clear()
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
                task = asyncio.create_task(self._hold(claim, sent))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
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
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("work_table_unavailable", error=repr(exc))
            return None

    async def _hold(self, claim: Claim, sent: float) -> None:
        lease = claim.lease
        work = asyncio.create_task(self._carry_out(claim))
        renewer = asyncio.create_task(self._renew(lease, sent, work))
        try:
            await work
        except (LeaseLost, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not renewer.done():
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.work.release, lease)
                raise
            log.warning("restore_lease_lost", restore_id=str(lease.restore_id))
        except Exception as exc:
            log.exception("restore_attempt_crashed", restore_id=str(lease.restore_id))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.work.note_error, lease, type(exc).__name__)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._slots.release()

    async def _renew(self, lease: Lease, sent: float, work: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.policy.renew_every)
            attempt_sent = time.monotonic()
            try:
                held = await asyncio.wait_for(
                    asyncio.to_thread(self.work.renew, lease, self.policy),
                    timeout=max(0.1, self.policy.lease_seconds - (attempt_sent - sent)),
                )
            except TimeoutError:
                held = False
            except Exception as exc:
                log.warning("lease_renewal_failed", error=repr(exc))
                held = self.policy.still_held(time.monotonic() - sent)
                if held:
                    continue
            if not held:
                work.cancel()
                return
            sent = attempt_sent

    # -- one restore -----------------------------------------------------------------------

    async def _carry_out(self, claim: Claim) -> None:
        lease = claim.lease
        try:
            restore = await asyncio.to_thread(self.app.get_restore, lease.restore_id)
        except AggregateNotFoundError:
            await asyncio.to_thread(self.work.finish, lease)
            return
        with bound_log_context(restore_id=restore.id, correlation_id=restore.correlation_id):
            work_dir = self._scratch / str(restore.id)
            try:
                await self._execute(restore, claim, work_dir)
            except Ended:
                pass
            finally:
                if restore.is_terminal:
                    await asyncio.to_thread(shutil.rmtree, work_dir, True)

    async def _execute(self, restore: Restore, claim: Claim, work_dir: Path) -> None:
        lease = claim.lease
        if restore.is_terminal:
            await asyncio.to_thread(self.work.finish, lease)
            return
        target = DatabaseTarget.model_validate(restore.target["database"])
        source = RestoreSource.model_validate(restore.source)
        cluster_data = restore.target.get("cluster")
        cluster = ClusterSpec.model_validate(cluster_data) if cluster_data else None
        step = next_step(
            claim.step != "give_up", claim.previous_owner is not None, claim.previous_phase
        )
        if step == "give_up_recovering":
            await self._fail(
                restore,
                lease,
                f"gave up recovering the target after {lease.attempt - 1} attempts "
                f"(the restore-runner stopped during {claim.previous_phase}): "
                f"{claim.last_error or 'the runner holding it stopped'}; the target may "
                "be partly restored",
                target_unchanged=False,
            )
            return
        if step == "give_up":
            await self._fail(
                restore,
                lease,
                f"gave up after {lease.attempt - 1} attempts: "
                f"{claim.last_error or 'the runner holding it stopped'}",
            )
            return
        if step == "recover":
            await self._recover(
                restore, lease, target, cluster, claim.previous_phase or "restoring"
            )
            return
        restore.start(utc_now(), lease.attempt)
        await self._save(restore, lease)
        RESTORES_RUNNING.inc()
        try:
            await self._lay_down(restore, lease, target, source, cluster, work_dir)
        finally:
            RESTORES_RUNNING.dec()

    async def _lay_down(
        self,
        restore: Restore,
        lease: Lease,
        target: DatabaseTarget,
        source: RestoreSource,
        cluster: ClusterSpec | None,
        work_dir: Path,
    ) -> None:
        # 1. The safety backup of the target, before anything else.
        await self._phase(restore, lease, "waiting_for_safety_backup")
        if restore.safety_backup_id is not None and not restore.reached("safety_backup"):
            await self._wait_for_safety_backup(restore, lease)
        # 2. The artifact, downloaded and verified: nothing of the target is touched before.
        await self._phase(restore, lease, "downloading")
        await asyncio.to_thread(shutil.rmtree, work_dir, True)
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
        artifact = work_dir / "artifact"
        done = [0]

        def on_bytes(count: int) -> None:
            done[0] = count

        credentials = resolver_for(restore.organization_id, self._credentials, self._vault)
        ticker = self._ticker(restore, "downloading", done, source.size_bytes)
        try:
            origin = await asyncio.to_thread(
                download_verified,
                source.copies,
                restore.organization_id,
                source.checksum,
                artifact,
                on_bytes,
                local_root=self._destination_root,
                credentials=credentials,
            )
        except VerificationFailed as exc:
            await self._fail(restore, lease, str(exc))
            return
        finally:
            ticker.cancel()
        self._progress(restore, "running", "verifying", source.size_bytes, source.size_bytes)
        restore.pass_milestone("verified", utc_now(), f"checksum matches ({origin})")
        await self._save(restore, lease)
        if source.type == "db":
            await self._restore_db(restore, lease, target, source, artifact)
        else:
            assert cluster is not None  # refused at request time otherwise
            await self._restore_full(restore, lease, source, cluster, artifact, work_dir)

    async def _wait_for_safety_backup(self, restore: Restore, lease: Lease) -> None:
        assert restore.safety_backup_id is not None
        deadline = time.monotonic() + self._safety_timeout
        while True:
            row = await self.backups.backup(restore.safety_backup_id)
            if row is not None and row["status"] == "completed":
                restore.pass_milestone(
                    "safety_backup",
                    utc_now(),
                    f"safety backup {restore.safety_backup_id} completed",
                )
                await self._save(restore, lease)
                return
            if row is not None and row["status"] == "failed":
                await self._fail(
                    restore,
                    lease,
                    f"the safety backup of the target failed ({row['error']}); the target "
                    "was not touched",
                )
                raise Ended
            if time.monotonic() > deadline:
                await self._fail(
                    restore,
                    lease,
                    f"the safety backup of the target did not complete within "
                    f"{int(self._safety_timeout)} s; the target was not touched",
                )
                raise Ended
            await asyncio.sleep(SAFETY_POLL_SECONDS)

    async def _password(self, restore: Restore, lease: Lease, target: DatabaseTarget) -> str:
        try:
            check_target(target)
            return require_password(
                await asyncio.to_thread(
                    resolve_secret,
                    target.password_ref,
                    restore.organization_id,
                    self._credentials,
                    self._vault,
                )
            )
        except (SecretError, TargetError) as exc:
            await self._fail(restore, lease, f"{exc}; the target was not touched")
            raise Ended from None

    async def _restore_db(
        self,
        restore: Restore,
        lease: Lease,
        target: DatabaseTarget,
        source: RestoreSource,
        artifact: Path,
    ) -> None:
        password = await self._password(restore, lease, target)
        await self._phase(restore, lease, "restoring")
        processes: list[subprocess.Popen[bytes]] = []
        done = [0]

        def on_bytes(count: int) -> None:
            done[0] = count

        ticker = self._ticker(restore, "restoring", done, source.size_bytes)
        try:
            into = await asyncio.to_thread(dbrestore.create_scratch, target, password, restore.id)
            await asyncio.to_thread(
                dbrestore.pg_restore,
                target,
                password,
                into,
                artifact,
                on_bytes,
                pg_restore_binary=self._pg_restore,
                application_name=dbrestore.restore_application_name(restore.id),
                on_process=processes.append,
            )
        except dbrestore.RestoreFailure as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(dbrestore.drop_scratch, target, password, restore.id)
            await self._fail(restore, lease, f"{exc}; the target was left as it was")
            return
        except asyncio.CancelledError:
            for process in processes:
                process.kill()
            raise
        finally:
            ticker.cancel()
        await self._phase(restore, lease, "swapping")
        self._progress(restore, "running", "swapping", source.size_bytes, source.size_bytes)
        try:
            await asyncio.to_thread(dbrestore.swap, target, password, restore.id)
        except dbrestore.RestoreFailure as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(dbrestore.drop_scratch, target, password, restore.id)
            await self._fail(restore, lease, str(exc))
            return
        await asyncio.to_thread(self.work.note_phase, lease, "swapped")
        restore.pass_milestone("target_replaced", utc_now())
        await self._save(restore, lease)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(dbrestore.drop_old, target, password, restore.id)
        await self._complete(restore, lease)

    async def _restore_full(
        self,
        restore: Restore,
        lease: Lease,
        source: RestoreSource,
        cluster: ClusterSpec,
        artifact: Path,
        work_dir: Path,
    ) -> None:
        try:
            from tidemark_restore_runner import physical  # full9's module
        except ImportError:
            await self._fail(restore, lease, "full restores are not available on this runner")
            return
        fetch = None
        if restore.pitr_timestamp is not None:
            until = source.wal_until_segment
            if until is not None and not await wait_for_segment(
                lambda: self.backups.has_segment(source.environment_id, until),
                seconds=self._wal_view_timeout,
            ):
                await self._fail(
                    restore,
                    lease,
                    f"the WAL archive did not reach segment {until} within "
                    f"{int(self._wal_view_timeout)} s; the target was left as it was",
                )
                return
            rows = await self.backups.segments(source.environment_id)
            fetch = segment_fetcher(
                {r["segment"]: r for r in rows},
                wal_sources(source),
                restore.organization_id,
                local_root=self._destination_root,
                credentials=resolver_for(restore.organization_id, self._credentials, self._vault),
            )
        files_path = restore.target.get("files_path")
        files_directory = (
            self._files_root / str(restore.organization_id) / files_path
            if files_path and self._files_root is not None
            else None
        )
        job = physical.PhysicalRestore(
            restore_id=restore.id,
            cluster=cluster,
            artifact=artifact,
            files_directory=files_directory,
            pitr_target=restore.pitr_timestamp,
            fetch_segment=fetch,
            work_dir=work_dir / "physical",
            segment_delay_seconds=self._replay_segment_delay,
        )
        await self._phase(restore, lease, "restoring")
        loop = asyncio.get_running_loop()

        noted = ["restoring"]

        def progress(phase: str, percent: float | None, message: str | None) -> None:
            # On the restore's thread: where the target stands now is noted before the
            # step runs, so a runner taking over knows to recover rather than rerun.
            if phase in TOUCHING and phase != noted[0]:
                try:
                    self.work.note_phase(lease, phase)
                except Exception as exc:  # the restore goes on; a takeover recovers
                    log.warning("restore_phase_not_noted", phase=phase, error=repr(exc))
                noted[0] = phase
            if phase == "done":
                return  # the final tick is ours, once the outcome is recorded
            loop.call_soon_threadsafe(
                self._progress, restore, "running", phase, 0, None, message, percent
            )

        try:
            await asyncio.to_thread(physical.restore_full, job, progress)
        except physical.ClusterBusy:
            raise  # an earlier holder's thread still runs: this attempt ends, a later one retries
        except physical.PhysicalRestoreError as exc:
            await self._fail(restore, lease, exc.reason, target_unchanged=exc.target_unchanged)
            return
        await asyncio.to_thread(self.work.note_phase, lease, "swapped")
        restore.pass_milestone("target_replaced", utc_now())
        await self._save(restore, lease)
        await self._complete(restore, lease)

    async def _recover(
        self,
        restore: Restore,
        lease: Lease,
        target: DatabaseTarget,
        cluster: ClusterSpec | None,
        phase: str,
    ) -> None:
        """The runner before this one stopped after it began changing the target."""
        if restore.status == "pending":
            restore.start(utc_now(), lease.attempt)
        if restore.restore_type == "db":
            password = await self._password(restore, lease, target)
            outcome = await asyncio.to_thread(dbrestore.recover, target, password, restore.id)
            replaced = outcome == "swapped" or phase == "swapped"
        else:
            from tidemark_restore_runner import physical

            assert cluster is not None
            try:
                result = await asyncio.to_thread(physical.resume_interrupted, cluster, restore.id)
            except physical.PhysicalRestoreError as exc:
                await self._fail(restore, lease, exc.reason, target_unchanged=exc.target_unchanged)
                return
            # "swapped" was noted once the restored cluster was verified: its journal may
            # be gone already, and the target holds the restore.
            replaced = result == "completed" or phase == "swapped"
        log.info("restore_recovered", restore_id=str(restore.id), replaced=replaced, phase=phase)
        if replaced:
            restore.pass_milestone("target_replaced", utc_now(), "finished after a takeover")
            await self._save(restore, lease)
            await self._complete(restore, lease)
        else:
            await self._fail(restore, lease, stopped_reason(phase, restore.restore_type))

    # -- recording -------------------------------------------------------------------------

    async def _phase(self, restore: Restore, lease: Lease, phase: str) -> None:
        await asyncio.to_thread(self.work.note_phase, lease, phase)
        self._progress(restore, "running", phase, 0, None)

    async def _save(self, restore: Restore, lease: Lease) -> None:
        events = restore.collect_events()
        if not events:
            return
        await asyncio.to_thread(self.app.save, *events, fence=self.work.fence(lease))
        self._on_saved()

    async def _complete(self, restore: Restore, lease: Lease) -> None:
        restore.complete(utc_now())
        await self._save(restore, lease)
        await asyncio.to_thread(self.work.finish, lease)
        RESTORES_FINISHED.labels(restore.restore_type, "completed").inc()
        log.info("restore_completed", restore_id=str(restore.id))
        self._progress(restore, "completed", "done", 0, None, percent=100.0)

    async def _fail(
        self, restore: Restore, lease: Lease, reason: str, *, target_unchanged: bool = True
    ) -> None:
        if restore.status == "pending":
            restore.start(utc_now(), lease.attempt)
        restore.fail(reason, utc_now(), target_unchanged=target_unchanged)
        await self._save(restore, lease)
        await asyncio.to_thread(self.work.finish, lease)
        RESTORES_FINISHED.labels(restore.restore_type, "failed").inc()
        log.warning("restore_failed", restore_id=str(restore.id), reason=reason)
        self._progress(restore, "failed", "done", 0, None, reason)

    def _ticker(
        self, restore: Restore, phase: str, done: list[int], total: int | None
    ) -> asyncio.Task[None]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(self._progress_interval)
                self._progress(restore, "running", phase, done[0], total)

        return asyncio.create_task(tick())

    def _progress(
        self,
        restore: Restore,
        status: str,
        phase: str,
        done: int,
        total: int | None,
        message: str | None = None,
        percent: float | None = None,
    ) -> None:
        if percent is None and total:
            percent = round(min(99.0, 100.0 * done / total), 1)
        tick = RestoreProgress(
            restore_id=restore.id,
            backup_id=restore.backup_id,
            environment_id=restore.target_environment_id,
            status=status,  # type: ignore[arg-type]
            phase=phase,
            percent=percent,
            bytes_done=done,
            bytes_total=total,
            message=message,
            at=utc_now(),
        )
        if status == "running" and len(self._publishing) >= 200:
            return
        task = asyncio.create_task(self._send(tick, restore))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _send(self, tick: RestoreProgress, restore: Restore) -> None:
        try:
            await asyncio.wait_for(
                self._publish_progress(tick, restore.organization_id, restore.correlation_id),
                timeout=5.0,
            )
        except Exception as exc:
            log.debug("progress_not_published", error=repr(exc))
