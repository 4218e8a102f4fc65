"""Deleting backups: each deleted backup's artifact is removed from every destination.

A ``DeleteBackup`` command is recorded on the Backup aggregate (``deleting``) by the
handler, which also makes sure the backup has a row in ``<schema>.deletions``. Any runner
instance claims a due row (``FOR UPDATE SKIP LOCKED``, under a lease), removes the artifact
(``writer_for(...).discard()``, which tolerates an artifact already gone) from every
destination of the backup, and records ``Deleted``. Two instances that both get to one
backup (a lease that ran out during a slow removal) remove what is already gone and
collide in the event store on the second ``Deleted``: nothing breaks, nothing doubles.

Where the failure ends: every try that leaves a destination uncleaned records one
``CleanupFailed`` per destination (the backup stays ``deleting`` with the reason as its
``error``) and is retried after a doubling delay, ``max_attempts`` tries in all. The last
one is recorded ``final``: the row rests as ``gave_up`` and nothing is retried until the
deletion is requested again (``DELETE`` of the backup repeated), which re-arms it with a
fresh count of tries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from psycopg import Connection, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from tidemark_contracts import utc_now
from tidemark_contracts.backup import DestinationTarget
from tidemark_platform.leadership import lock_key
from tidemark_platform.logging import get_logger
from tidemark_platform.vault import SecretVault

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup
from tidemark_backup_runner.executor import artifact_key
from tidemark_backup_runner.registry import Registrations
from tidemark_backup_runner.secrets import CredentialPolicy, SecretError, resolver_for
from tidemark_backup_runner.storage import (
    DestinationRefused,
    UnsupportedDestination,
    writer_for,
)

log = get_logger(__name__)

DDL_LOCK_NAME = "backup_runner:deletions:ddl"
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True)
class DeletionPolicy:
    """How often, and how far apart, the removal of one backup's artifact is tried."""

    max_attempts: int = 5
    first_delay_seconds: float = 5.0
    max_delay_seconds: float = 300.0
    lease_seconds: float = 120.0
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.first_delay_seconds < 0 or self.max_delay_seconds < self.first_delay_seconds:
            raise ValueError("delays must be 0 <= first_delay_seconds <= max_delay_seconds")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (1, 2, …) before the next one."""
        return float(min(self.first_delay_seconds * 2 ** (attempt - 1), self.max_delay_seconds))

    def is_last(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


@dataclass(frozen=True)
class DeletionClaim:
    backup_id: UUID
    owner: UUID
    attempt: int


class DeletionTable:
    """Which backups' artifacts are to be removed, when next, and who is at it now."""

    def __init__(self, database_url: str, schema: str) -> None:
        self.schema = schema
        self._table = sql.Identifier(schema, "deletions")
        self._pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(
            database_url,
            connection_class=Connection[DictRow],
            min_size=1,
            max_size=2,
            kwargs={"row_factory": dict_row, "connect_timeout": 10},
            open=False,
        )

    def open(self) -> None:
        self._pool.open()
        with self._pool.connection() as conn, conn.transaction():
            # Instances starting together take turns creating it.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(DDL_LOCK_NAME))
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {} (
                    backup_id uuid PRIMARY KEY,
                    state text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'gave_up')),
                    attempts integer NOT NULL DEFAULT 0,
                    due_at timestamptz NOT NULL DEFAULT now(),
                    owner uuid,
                    lease_expires_at timestamptz,
                    last_error text,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now())"""
                ).format(self._table)
            )

    def close(self) -> None:
        self._pool.close()

    def ensure(self, backup_id: UUID) -> None:
        """The backup has its row (idempotent: a redelivered command repairs a row a crash
        kept from being written, and changes nothing otherwise)."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL("INSERT INTO {} (backup_id) VALUES (%s) ON CONFLICT DO NOTHING").format(
                    self._table
                ),
                (backup_id,),
            )

    def rearm(self, backup_id: UUID) -> bool:
        """Try again, with a fresh count, a removal that gave up; False when it had not."""
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'queued', attempts = 0, due_at = now(), "
                    "updated_at = now() WHERE backup_id = %s AND state = 'gave_up' RETURNING 1"
                ).format(self._table),
                (backup_id,),
            ).fetchone()
        return row is not None

    def claim(self, owner: UUID, policy: DeletionPolicy) -> DeletionClaim | None:
        """Take one due removal nobody holds (queued and due, or its lease ran out)."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "SELECT backup_id, attempts FROM {} "
                    "WHERE (state = 'queued' AND due_at <= now()) "
                    "OR (state = 'running' AND lease_expires_at < now()) "
                    "ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).format(self._table)
            ).fetchone()
            if row is None:
                return None
            attempt = int(row["attempts"]) + 1
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'running', owner = %s, attempts = %s, "
                    "lease_expires_at = now() + make_interval(secs => %s), updated_at = now() "
                    "WHERE backup_id = %s"
                ).format(self._table),
                (owner, attempt, policy.lease_seconds, row["backup_id"]),
            )
        return DeletionClaim(row["backup_id"], owner, attempt)

    def renew(self, claim: DeletionClaim, policy: DeletionPolicy) -> bool:
        """Extend the claim's lease while its removal runs; False when it was taken over."""
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET lease_expires_at = now() + make_interval(secs => %s), "
                    "updated_at = now() "
                    "WHERE backup_id = %s AND owner = %s AND attempts = %s AND state = 'running' "
                    "RETURNING 1"
                ).format(self._table),
                (policy.lease_seconds, claim.backup_id, claim.owner, claim.attempt),
            ).fetchone()
        return row is not None

    def finish(
        self,
        claim: DeletionClaim,
        state: str,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        """End the claimed try: ``done``, ``gave_up``, or ``queued`` again in ``retry_in``
        seconds. A try whose claim was taken over meanwhile changes nothing."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = %s, owner = NULL, lease_expires_at = NULL, "
                    "last_error = %s, due_at = now() + make_interval(secs => %s), "
                    "updated_at = now() "
                    "WHERE backup_id = %s AND owner = %s AND attempts = %s AND state = 'running'"
                ).format(self._table),
                (
                    state,
                    error[:MAX_ERROR_LENGTH] if error is not None else None,
                    retry_in or 0.0,
                    claim.backup_id,
                    claim.owner,
                    claim.attempt,
                ),
            )

    def row(self, backup_id: UUID) -> dict[str, object] | None:
        with self._pool.connection() as conn:
            found = conn.execute(
                sql.SQL("SELECT * FROM {} WHERE backup_id = %s").format(self._table),
                (backup_id,),
            ).fetchone()
        return dict(found) if found is not None else None


def cleanup_reason(destination: DestinationTarget, exc: BaseException) -> str:
    """Why ``destination`` could not be cleaned, fit for an event: never a path of the
    runner's machine (the local writer names files relative to the organization) nor a
    secret."""
    where = f"destination {destination.name!r}"
    if isinstance(exc, DestinationRefused | UnsupportedDestination):
        return str(exc)  # it names the destination itself
    if isinstance(exc, SecretError):
        return f"{where}: {exc}"
    if isinstance(exc, OSError):
        name = f": {exc.filename}" if exc.filename else ""
        return f"{where}: removing the artifact failed: {exc.strerror or exc}{name}"
    return f"{where}: removing the artifact failed: internal error: {type(exc).__name__}"


class Deleter:
    """Claims due removals, one at a time, and carries each out."""

    def __init__(
        self,
        app: BackupRunnerApplication,
        table: DeletionTable,
        on_saved: Callable[[], None],
        *,
        owner: UUID,
        policy: DeletionPolicy | None = None,
        destination_root: Path | None = None,
        credential_policy: CredentialPolicy | None = None,
        vault: SecretVault | None = None,
        registrations: Registrations | None = None,
    ) -> None:
        self.app = app
        self.table = table
        # An s3 destination's keys, opened for the backup's organization only.
        self._credential_policy = credential_policy or CredentialPolicy()
        self._vault = vault
        # None only where a test drives the deleter without a catalog: main always has it.
        self._registrations = registrations
        self.owner = owner
        self.policy = policy or DeletionPolicy()
        self._on_saved = on_saved
        self._destination_root = destination_root
        self._wake = asyncio.Event()

    async def submit(self, backup_id: UUID) -> None:
        """Make sure the backup's removal is queued (re-armed when it had given up)."""
        await asyncio.to_thread(self.table.ensure, backup_id)
        if await asyncio.to_thread(self.table.rearm, backup_id):
            log.info("backup_cleanup_rearmed", backup_id=str(backup_id))
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                claim = await asyncio.to_thread(self.table.claim, self.owner, self.policy)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("deletion_table_unavailable", error=repr(exc))
                claim = None
            if claim is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.policy.poll_seconds)
                continue
            try:
                await self.carry_out(claim)
            except Exception:
                # The store unreachable, say: the lease runs out and the try is made again.
                log.exception("backup_cleanup_crashed", backup_id=str(claim.backup_id))

    async def carry_out(self, claim: DeletionClaim) -> None:
        """One try at removing the claimed backup's artifact from all its destinations."""
        try:
            backup = await asyncio.to_thread(self.app.get_backup, claim.backup_id)
        except AggregateNotFoundError:
            await asyncio.to_thread(self.table.finish, claim, "done", "no such backup")
            return
        if backup.status != "deleting":
            # Deleted already (another runner finished first), or never accepted.
            await asyncio.to_thread(self.table.finish, claim, "done", f"backup {backup.status}")
            return
        registered = await self._registered(backup)
        # A removal can outlast the lease (several stores, each slow to refuse): renewed
        # meanwhile, so no second instance takes the same try over and doubles it.
        renewer = asyncio.create_task(self._renew(claim))
        try:
            failures = await asyncio.to_thread(self._remove_everywhere, backup, registered)
        finally:
            renewer.cancel()
            await asyncio.wait({renewer})
        now = utc_now()
        if not failures:
            backup.mark_deleted(now)
            if await self._save(backup):
                log.info("backup_deleted", backup_id=str(backup.id), attempt=claim.attempt)
            await asyncio.to_thread(self.table.finish, claim, "done")
            return
        final = self.policy.is_last(claim.attempt)
        for destination_id, reason in failures:
            backup.record_cleanup_failure(destination_id, reason, claim.attempt, final, now)
        if not await self._save(backup):
            return  # someone else recorded meanwhile: its try decides
        reasons = "; ".join(reason for _, reason in failures)
        log.warning(
            "backup_cleanup_failed",
            backup_id=str(backup.id),
            attempt=claim.attempt,
            final=final,
            reason=reasons,
        )
        if final:
            await asyncio.to_thread(self.table.finish, claim, "gave_up", reasons)
        else:
            delay = self.policy.delay_after(claim.attempt)
            await asyncio.to_thread(self.table.finish, claim, "queued", reasons, delay)

    async def _renew(self, claim: DeletionClaim) -> None:
        while True:
            await asyncio.sleep(self.policy.lease_seconds / 3)
            try:
                held = await asyncio.to_thread(self.table.renew, claim, self.policy)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("deletion_lease_not_renewed", error=repr(exc))
                continue
            if not held:
                # Taken over: the removal is idempotent, and this try's end changes nothing.
                log.warning("deletion_lease_lost", backup_id=str(claim.backup_id))
                return

    async def _registered(self, backup: Backup) -> set[UUID] | None:
        """The backup's destinations registered as it recorded them (None: no catalog)."""
        if self._registrations is None:
            return None
        recorded = [
            DestinationTarget.model_validate(d) for d in backup.destinations if "config" in d
        ]
        return await self._registrations.registered_as_recorded(backup.organization_id, recorded)

    def _remove_everywhere(
        self, backup: Backup, registered: set[UUID] | None = None
    ) -> list[tuple[str, str]]:
        """Remove the artifact from every destination; (destination id, reason) of those
        that could not be cleaned. With ``registered``, a destination not among them (a
        command refused for naming something else, whose run never wrote there) is left
        untouched: its credentials are never opened for what a command named."""
        key = artifact_key(backup)
        failures = []
        for recorded in backup.destinations:
            if "config" not in recorded:
                # A request refused before it ran keeps its destinations as references
                # only: nothing was ever written to them.
                continue
            destination = DestinationTarget.model_validate(recorded)
            if registered is not None and destination.destination_id not in registered:
                log.warning(
                    "unregistered_destination_not_cleaned",
                    backup_id=str(backup.id),
                    destination_id=str(destination.destination_id),
                )
                continue
            try:
                writer = writer_for(
                    destination,
                    backup.organization_id,
                    key,
                    local_root=self._destination_root,
                    credentials=resolver_for(
                        backup.organization_id, self._credential_policy, self._vault
                    ),
                )
                writer.discard()
            except Exception as exc:
                failures.append((str(destination.destination_id), cleanup_reason(destination, exc)))
        return failures

    async def _save(self, backup: Backup) -> bool:
        """Save the new events; False when another runner's events got there first."""
        try:
            await asyncio.to_thread(self.app.save, backup)
        except IntegrityError:
            log.info("backup_cleanup_raced", backup_id=str(backup.id))
            return False
        self._on_saved()
        return True
