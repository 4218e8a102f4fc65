"""The work table: unfinished restores, which instance holds each, and how far it got.

Every requested restore has a row (``restore_runner.work``). An instance claims a row
(``FOR UPDATE SKIP LOCKED``) and holds it through a renewed lease; a row whose lease ran
out is claimed again by any instance. Claims are serialized by one advisory lock and a
row is never claimed while another restore into the same target is held: no two restores
ever run into one target at once. ``phase`` is where the holder was (the executor writes
it as it goes), so the instance that takes a restore over knows what to clean up.

As in the backup-runner, rows are also kept from the event store's notification log
(``index_log``), which repairs a crash between recording a request and writing its row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from psycopg import Connection, Cursor, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool
from tidemark_backup_runner.domain import WorkPolicy
from tidemark_platform.eventstore import Fence
from tidemark_platform.leadership import lock_key

from tidemark_restore_runner.application import LogChange

Step = Literal["run", "give_up"]
ReadLog = Callable[[int, int], tuple[list[LogChange], int]]
DDL_LOCK_NAME = "restore_runner:work:ddl"
# Claims take turns: the "no other restore of this target is held" check and the claim
# must not interleave between instances.
CLAIM_LOCK_NAME = "restore_runner:work:claim"
MAX_ERROR_LENGTH = 1000


class LeaseLost(Exception):
    """This instance no longer holds the restore."""


@dataclass(frozen=True)
class Lease:
    restore_id: UUID
    owner: UUID
    attempt: int


@dataclass(frozen=True)
class Claim:
    lease: Lease
    step: Step
    previous_owner: UUID | None
    previous_phase: str | None
    last_error: str | None

    @property
    def restore_id(self) -> UUID:
        return self.lease.restore_id


class WorkTable:
    def __init__(self, database_url: str, schema: str) -> None:
        self.schema = schema
        self._work = sql.Identifier(schema, "work")
        self._log = sql.Identifier(schema, "work_log_position")
        self._pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(
            database_url,
            connection_class=Connection[DictRow],
            min_size=1,
            max_size=4,
            kwargs={"row_factory": dict_row, "connect_timeout": 10},
            open=False,
        )

    def open(self) -> None:
        self._pool.open()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(DDL_LOCK_NAME))
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {} (
                    restore_id uuid PRIMARY KEY,
                    target_environment_id uuid NOT NULL,
                    state text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'finished')),
                    owner uuid,
                    lease_expires_at timestamptz,
                    attempts integer NOT NULL DEFAULT 0,
                    phase text,
                    last_error text,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now())"""
                ).format(self._work)
            )
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS restore_work_unfinished_idx ON {} "
                    "(target_environment_id, created_at) WHERE state <> 'finished'"
                ).format(self._work)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} "
                    "(name text PRIMARY KEY, position bigint NOT NULL)"
                ).format(self._log)
            )

    def close(self) -> None:
        self._pool.close()

    def ensure(self, restore_id: UUID, target_environment_id: UUID) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (restore_id, target_environment_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING"
                ).format(self._work),
                (restore_id, target_environment_id),
            )

    def index_log(self, name: str, read: ReadLog, limit: int = 500) -> int:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING"
                ).format(self._log),
                (name,),
            )
            row = conn.execute(
                sql.SQL("SELECT position FROM {} WHERE name = %s FOR UPDATE").format(self._log),
                (name,),
            ).fetchone()
            assert row is not None
            position: int = row["position"]
            changes, last = read(position, limit)
            if last <= position:
                return 0
            for restore_id, target, change in changes:
                if change == "requested":
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (restore_id, target_environment_id) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING"
                        ).format(self._work),
                        (restore_id, target),
                    )
                else:
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET state = 'finished', lease_expires_at = NULL, "
                            "updated_at = now() WHERE restore_id = %s AND state <> 'finished'"
                        ).format(self._work),
                        (restore_id,),
                    )
            conn.execute(
                sql.SQL("UPDATE {} SET position = %s WHERE name = %s").format(self._log),
                (last, name),
            )
            return last - position

    def claim(self, owner: UUID, policy: WorkPolicy) -> Claim | None:
        """Take one unfinished restore nobody holds whose target no other held restore is
        running into; the oldest first."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock_key(CLAIM_LOCK_NAME))
            row = conn.execute(
                sql.SQL(
                    "SELECT w.restore_id, w.owner, w.attempts, w.phase, w.last_error FROM {work} w "
                    "WHERE (w.state = 'queued' OR (w.state = 'running' "
                    "AND w.lease_expires_at < now())) "
                    "AND NOT EXISTS (SELECT 1 FROM {work} o WHERE "
                    "o.target_environment_id = w.target_environment_id "
                    "AND o.restore_id <> w.restore_id AND o.state = 'running' "
                    "AND o.lease_expires_at >= now()) "
                    "ORDER BY w.created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).format(work=self._work)
            ).fetchone()
            if row is None:
                return None
            made: int = row["attempts"]
            step: Step = "run" if policy.next_attempt(made) is not None else "give_up"
            number = made + 1
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'running', owner = %s, attempts = %s, "
                    "lease_expires_at = now() + make_interval(secs => %s), updated_at = now() "
                    "WHERE restore_id = %s"
                ).format(self._work),
                (owner, number, policy.lease_seconds, row["restore_id"]),
            )
        return Claim(
            Lease(row["restore_id"], owner, number),
            step,
            row["owner"],
            row["phase"],
            row["last_error"],
        )

    def renew(self, lease: Lease, policy: WorkPolicy) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET lease_expires_at = now() + make_interval(secs => %s), "
                    "updated_at = now() WHERE restore_id = %s AND owner = %s AND attempts = %s "
                    "AND state = 'running' AND lease_expires_at > now() RETURNING 1"
                ).format(self._work),
                (policy.lease_seconds, lease.restore_id, lease.owner, lease.attempt),
            ).fetchone()
        return row is not None

    def fence(self, lease: Lease) -> Fence:
        query = sql.SQL(
            "SELECT 1 FROM {} WHERE restore_id = %s AND owner = %s AND attempts = %s "
            "AND state = 'running' AND lease_expires_at > now() FOR SHARE"
        ).format(self._work)

        def check(cur: Cursor[DictRow]) -> None:
            cur.execute(query, (lease.restore_id, lease.owner, lease.attempt))
            if cur.fetchone() is None:
                raise LeaseLost(f"restore {lease.restore_id}: attempt {lease.attempt} lost it")

        return check

    def note_phase(self, lease: Lease, phase: str) -> None:
        """Where the holder is now: what a taker-over must clean up after it."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET phase = %s, updated_at = now() "
                    "WHERE restore_id = %s AND owner = %s AND attempts = %s"
                ).format(self._work),
                (phase, lease.restore_id, lease.owner, lease.attempt),
            )

    def note_error(self, lease: Lease, error: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET last_error = %s, updated_at = now() "
                    "WHERE restore_id = %s AND owner = %s AND attempts = %s"
                ).format(self._work),
                (error[:MAX_ERROR_LENGTH], lease.restore_id, lease.owner, lease.attempt),
            )

    def finish(self, lease: Lease) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'finished', lease_expires_at = NULL, "
                    "updated_at = now() WHERE restore_id = %s AND owner = %s AND attempts = %s"
                ).format(self._work),
                (lease.restore_id, lease.owner, lease.attempt),
            )

    def release(self, lease: Lease) -> None:
        """Hand the restore over at shutdown: any instance may take it over at once."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET lease_expires_at = now(), updated_at = now() "
                    "WHERE restore_id = %s AND owner = %s AND attempts = %s "
                    "AND state = 'running'"
                ).format(self._work),
                (lease.restore_id, lease.owner, lease.attempt),
            )

    def row(self, restore_id: UUID) -> dict[str, object] | None:
        with self._pool.connection() as conn:
            found = conn.execute(
                sql.SQL("SELECT * FROM {} WHERE restore_id = %s").format(self._work),
                (restore_id,),
            ).fetchone()
        return dict(found) if found is not None else None
