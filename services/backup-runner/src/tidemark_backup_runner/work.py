"""The work table: which requested backups are unfinished, and which instance holds each.

Every requested backup has a row here (``backup_runner.work``). An instance *claims* a
row atomically (``FOR UPDATE SKIP LOCKED``), which makes it the row's owner until its
lease expires; the owner renews the lease while it runs the backup. A row whose lease
ran out is claimed again by any instance, as a new attempt. Each attempt (owner, start,
end, outcome) is kept in ``backup_runner.work_attempts``.

The event store is written by the eventsourcing library in transactions of its own, so a
request can be recorded and its row not yet written (a crash between the two). Two paths
repair that: a redelivered command ensures the row again, and ``index_log`` follows the
notification log from a position kept here, adding rows for requests it has not seen.
Start-up reads this table, and the log only after that position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from psycopg import Connection, Cursor, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool
from tidemark_platform.eventstore import Fence
from tidemark_platform.leadership import lock_key

from tidemark_backup_runner.domain import WorkPolicy

# What a claimed row's owner does: start the backup (again), or record that it gave up.
Step = Literal["run", "give_up"]
LogChange = tuple[UUID, Literal["requested", "finished"]]
# Reads the event store's log: (after position, limit) -> (changes, last position read).
ReadLog = Callable[[int, int], tuple[list[LogChange], int]]
MAX_ERROR_LENGTH = 1000
DDL_LOCK_NAME = "backup_runner:work:ddl"
POOL_MAX_SIZE = 4


class LeaseLost(Exception):
    """This instance no longer holds the backup: another may be running it now."""


@dataclass(frozen=True)
class Lease:
    """The right to run one attempt of one backup: (backup, owner, attempt)."""

    backup_id: UUID
    owner: UUID
    attempt: int


@dataclass(frozen=True)
class Claim:
    lease: Lease
    step: Step
    previous_owner: UUID | None
    last_error: str | None

    @property
    def backup_id(self) -> UUID:
        return self.lease.backup_id


class WorkTable:
    def __init__(self, database_url: str, schema: str) -> None:
        self.schema = schema
        self._work = sql.Identifier(schema, "work")
        self._attempts = sql.Identifier(schema, "work_attempts")
        self._log = sql.Identifier(schema, "work_log_position")
        self._pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(
            database_url,
            connection_class=Connection[DictRow],
            min_size=1,
            max_size=POOL_MAX_SIZE,
            kwargs={"row_factory": dict_row, "connect_timeout": 10},
            open=False,
        )

    def open(self) -> None:
        self._pool.open()
        with self._pool.connection() as conn, conn.transaction():
            # Instances starting together would race in CREATE ... IF NOT EXISTS (which can
            # still collide in the catalog): one creates, the others wait and find it made.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(DDL_LOCK_NAME))
            for statement in self._ddl():
                conn.execute(statement)

    def close(self) -> None:
        self._pool.close()

    def _ddl(self) -> list[sql.Composed]:
        schema = sql.Identifier(self.schema)
        return [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                backup_id uuid PRIMARY KEY,
                state text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'finished')),
                owner uuid,
                lease_expires_at timestamptz,
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now())"""
            ).format(self._work),
            # Attempts handed over at a runner's shutdown: a rolling restart is no failure,
            # so they do not count against MAX_ATTEMPTS.
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS handovers integer NOT NULL DEFAULT 0"
            ).format(self._work),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS work_unfinished_idx ON {} (created_at) "
                "WHERE state <> 'finished'"
            ).format(self._work),
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                backup_id uuid NOT NULL,
                attempt integer NOT NULL,
                owner uuid NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                ended_at timestamptz,
                outcome text,
                PRIMARY KEY (backup_id, attempt))"""
            ).format(self._attempts),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, position bigint NOT NULL)"
            ).format(self._log),
        ]

    # -- rows ----------------------------------------------------------------------------

    def ensure(self, backup_id: UUID) -> None:
        """The backup has its row (idempotent: an existing row is left as it is)."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL("INSERT INTO {} (backup_id) VALUES (%s) ON CONFLICT DO NOTHING").format(
                    self._work
                ),
                (backup_id,),
            )

    def index_log(self, name: str, read: ReadLog, limit: int = 500) -> int:
        """Apply the log's changes after this table's position for ``name``; returns how
        many entries it read. ``read(after, limit)`` gives (changes, last position read)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING"
                ).format(self._log),
                (name,),
            )
            # Locked: instances indexing at once take turns instead of doing it twice.
            row = conn.execute(
                sql.SQL("SELECT position FROM {} WHERE name = %s FOR UPDATE").format(self._log),
                (name,),
            ).fetchone()
            assert row is not None
            position: int = row["position"]
            changes, last = read(position, limit)
            if last <= position:
                return 0
            with conn.cursor() as cur:
                self._apply(cur, changes)
            conn.execute(
                sql.SQL("UPDATE {} SET position = %s WHERE name = %s").format(self._log),
                (last, name),
            )
            return last - position

    def _apply(self, cur: Cursor[DictRow], changes: Iterable[LogChange]) -> None:
        for backup_id, change in changes:
            if change == "requested":
                cur.execute(
                    sql.SQL("INSERT INTO {} (backup_id) VALUES (%s) ON CONFLICT DO NOTHING").format(
                        self._work
                    ),
                    (backup_id,),
                )
            else:
                cur.execute(
                    sql.SQL(
                        "UPDATE {} SET state = 'finished', lease_expires_at = NULL, "
                        "updated_at = now() WHERE backup_id = %s AND state <> 'finished'"
                    ).format(self._work),
                    (backup_id,),
                )

    # -- claims and leases -----------------------------------------------------------------

    def claim(self, owner: UUID, policy: WorkPolicy) -> Claim | None:
        """Take one unfinished backup that nobody holds (queued, or its lease expired)."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "SELECT backup_id, owner, attempts, handovers, last_error, lease_expires_at "
                    "FROM {} "
                    "WHERE state = 'queued' OR (state = 'running' AND lease_expires_at < now()) "
                    "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).format(self._work)
            ).fetchone()
            if row is None:
                return None
            backup_id: UUID = row["backup_id"]
            made: int = row["attempts"]
            cut_off = made - row["handovers"]
            step: Step = "run" if policy.next_attempt(cut_off) is not None else "give_up"
            number = made + 1 if step == "run" else made
            if row["owner"] is not None:
                # The previous attempt's owner let the lease run out: it ended then (its
                # saves are fenced by the lease, so it cannot have done anything after).
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET ended_at = %s, outcome = 'lease expired' "
                        "WHERE backup_id = %s AND attempt = %s AND ended_at IS NULL"
                    ).format(self._attempts),
                    (row["lease_expires_at"], backup_id, made),
                )
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'running', owner = %s, attempts = %s, "
                    "lease_expires_at = now() + make_interval(secs => %s), updated_at = now() "
                    "WHERE backup_id = %s"
                ).format(self._work),
                (owner, number, policy.lease_seconds, backup_id),
            )
            if step == "run":
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (backup_id, attempt, owner) VALUES (%s, %s, %s)"
                    ).format(self._attempts),
                    (backup_id, number, owner),
                )
        return Claim(Lease(backup_id, owner, number), step, row["owner"], row["last_error"])

    def renew(self, lease: Lease, policy: WorkPolicy) -> bool:
        """Extend the lease; False when it is no longer ours (expired, or taken over)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET lease_expires_at = now() + make_interval(secs => %s), "
                    "updated_at = now() WHERE backup_id = %s AND owner = %s AND attempts = %s "
                    "AND state = 'running' AND lease_expires_at > now() RETURNING 1"
                ).format(self._work),
                (policy.lease_seconds, lease.backup_id, lease.owner, lease.attempt),
            ).fetchone()
        return row is not None

    def fence(self, lease: Lease) -> Fence:
        """A check for event-store writes: refuses them unless ``lease`` is still held."""
        query = sql.SQL(
            "SELECT 1 FROM {} WHERE backup_id = %s AND owner = %s AND attempts = %s "
            "AND state = 'running' AND lease_expires_at > now() FOR SHARE"
        ).format(self._work)

        def check(cur: Cursor[DictRow]) -> None:
            cur.execute(query, (lease.backup_id, lease.owner, lease.attempt))
            if cur.fetchone() is None:
                raise LeaseLost(
                    f"backup {lease.backup_id}: attempt {lease.attempt} no longer holds it"
                )

        return check

    def finish(self, lease: Lease, outcome: str, error: str | None = None) -> None:
        """The backup is done with (its end is recorded in the event store already)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'finished', lease_expires_at = NULL, "
                    "last_error = coalesce(%s, last_error), updated_at = now() "
                    "WHERE backup_id = %s AND owner = %s AND attempts = %s"
                ).format(self._work),
                (_short(error), lease.backup_id, lease.owner, lease.attempt),
            )
            with conn.cursor() as cur:
                self._end_attempt(cur, lease, outcome)

    def release(self, lease: Lease, outcome: str, error: str | None = None) -> None:
        """Hand the backup over before it is done (the runner is stopping): any instance
        may take it over at once, and the hand-over of a run does not count as a failed
        attempt. (A runner stopped while giving up ran no attempt: nothing is given back.)"""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "UPDATE {work} SET lease_expires_at = now(), handovers = handovers + ("
                    "SELECT count(*) FROM {attempts} WHERE backup_id = %(id)s "
                    "AND attempt = %(attempt)s AND owner = %(owner)s)::integer, "
                    "last_error = coalesce(%(error)s, last_error), updated_at = now() "
                    "WHERE backup_id = %(id)s AND owner = %(owner)s AND attempts = %(attempt)s "
                    "AND state = 'running'"
                ).format(work=self._work, attempts=self._attempts),
                {
                    "error": _short(error),
                    "id": lease.backup_id,
                    "owner": lease.owner,
                    "attempt": lease.attempt,
                },
            )
            with conn.cursor() as cur:
                self._end_attempt(cur, lease, outcome)

    def note_error(self, lease: Lease, error: str) -> None:
        """Why the attempt under ``lease`` went wrong, for the attempt that follows."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET last_error = %s, updated_at = now() "
                    "WHERE backup_id = %s AND owner = %s AND attempts = %s"
                ).format(self._work),
                (_short(error), lease.backup_id, lease.owner, lease.attempt),
            )

    def _end_attempt(self, cur: Cursor[DictRow], lease: Lease, outcome: str) -> None:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET ended_at = now(), outcome = %s WHERE backup_id = %s "
                "AND attempt = %s AND owner = %s AND ended_at IS NULL"
            ).format(self._attempts),
            (outcome, lease.backup_id, lease.attempt, lease.owner),
        )

    # -- reading ---------------------------------------------------------------------------

    def row(self, backup_id: UUID) -> dict[str, object] | None:
        with self._pool.connection() as conn:
            found = conn.execute(
                sql.SQL("SELECT * FROM {} WHERE backup_id = %s").format(self._work),
                (backup_id,),
            ).fetchone()
        return dict(found) if found is not None else None

    def attempts(self, backup_id: UUID) -> list[dict[str, object]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {} WHERE backup_id = %s ORDER BY attempt").format(
                    self._attempts
                ),
                (backup_id,),
            ).fetchall()
        return [dict(r) for r in rows]


def _short(error: str | None) -> str | None:
    return error[:MAX_ERROR_LENGTH] if error is not None else None
