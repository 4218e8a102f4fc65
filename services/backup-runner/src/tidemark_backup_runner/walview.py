"""What WAL archiving the runner owes: the schedules' WAL settings (its own view of
``schedule.events``) joined with its catalog view, and the receivers' lease table.

The view keeps, per environment, the WAL settings of the newest schedule revision it saw
(``schedule.events`` versions have gaps, as the gateway's schedules view notes: the
``revision`` orders them). An environment is *wanted* when its schedule has WAL on and
its registration has a ``cluster``; its database and the schedule's destinations come
from the catalog view, so only what the organization registered is ever used.

The lease table (``wal_receivers``) makes one instance the receiver of an environment:
it claims the row, renews the lease, and every write of the environment's ``WalArchive``
is fenced by it; another instance takes over only after the lease ran out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Connection, Cursor, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool
from tidemark_contracts import SCHEDULE_EVENTS, Envelope, Message, Topic
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget
from tidemark_contracts.schedule import ScheduleConfigured
from tidemark_platform.database import Connection as AsyncConnection
from tidemark_platform.eventstore import Fence
from tidemark_platform.leadership import lock_key

DDL_LOCK_NAME = "backup_runner:wal:ddl"


class WalSchedulesView:
    """The runner's projection of ``schedule.events``: WAL settings per environment."""

    name = "backup-runner-wal-schedules"
    topic: Topic = SCHEDULE_EVENTS
    tables: tuple[str, ...] = ("wal_schedules",)
    version_guard = False  # revisions order it (see the module docstring)

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.wal_schedules (
    environment_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    revision integer NOT NULL,
    wal_enabled boolean NOT NULL,
    wal_retention_days integer,
    destination_ids uuid[] NOT NULL
);
"""

    async def apply(
        self, conn: AsyncConnection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if not isinstance(message, ScheduleConfigured):
            return
        settings = message.settings
        await conn.execute(
            f"INSERT INTO {schema}.wal_schedules AS s (environment_id, organization_id, "
            "revision, wal_enabled, wal_retention_days, destination_ids) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (environment_id) DO UPDATE SET "
            "organization_id = excluded.organization_id, revision = excluded.revision, "
            "wal_enabled = excluded.wal_enabled, "
            "wal_retention_days = excluded.wal_retention_days, "
            "destination_ids = excluded.destination_ids WHERE s.revision < excluded.revision",
            (
                message.environment_id,
                message.organization_id,
                message.revision,
                settings.wal_enabled,
                settings.wal_retention_days,
                list(settings.destination_ids),
            ),
        )


@dataclass(frozen=True)
class WalTarget:
    """An environment whose WAL is to be archived, as its organization registered it."""

    environment_id: UUID
    organization_id: UUID
    database: DatabaseTarget
    destinations: tuple[DestinationTarget, ...]
    wal_retention_days: int | None


@dataclass(frozen=True)
class ReceiverLease:
    environment_id: UUID
    owner: UUID
    generation: int


class WalTables:
    """The view's reads and the receivers' lease table (blocking; run in threads)."""

    def __init__(self, database_url: str, schema: str, catalog_schema: str) -> None:
        self.schema = schema
        self.catalog_schema = catalog_schema
        self._receivers = sql.Identifier(schema, "wal_receivers")
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
                    environment_id uuid PRIMARY KEY,
                    owner uuid,
                    generation bigint NOT NULL DEFAULT 0,
                    lease_expires_at timestamptz,
                    status text NOT NULL DEFAULT 'active',
                    updated_at timestamptz NOT NULL DEFAULT now())"""
                ).format(self._receivers)
            )

    def close(self) -> None:
        self._pool.close()

    # -- what is wanted --------------------------------------------------------------------

    def wanted(self) -> list[WalTarget]:
        """Environments with WAL on and a cluster, with their registered destinations
        among the schedule's (a destination not (yet) in the view is left out)."""
        catalog = sql.Identifier(self.catalog_schema)
        with self._pool.connection() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT s.environment_id, s.organization_id, s.wal_retention_days, "
                    "e.database, coalesce(("
                    "  SELECT jsonb_agg(jsonb_build_object('destination_id', d.id, 'name', "
                    "  d.name, 'type', d.type, 'config', d.config) ORDER BY d.id) "
                    "  FROM {catalog}.destinations d WHERE d.id = ANY(s.destination_ids) "
                    "  AND d.organization_id = s.organization_id), '[]'::jsonb) AS destinations "
                    "FROM {catalog}.wal_schedules s JOIN {catalog}.environments e "
                    "ON e.id = s.environment_id AND e.organization_id = s.organization_id "
                    "WHERE s.wal_enabled AND e.cluster IS NOT NULL"
                ).format(catalog=catalog)
            ).fetchall()
        return [_target(row) for row in rows]

    def archiving(self) -> list[UUID]:
        """Environments whose receiver row says archiving is not disabled."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT environment_id FROM {} WHERE status <> 'disabled'").format(
                    self._receivers
                )
            ).fetchall()
        return [row["environment_id"] for row in rows]

    def environment(self, environment_id: UUID) -> tuple[UUID, DatabaseTarget] | None:
        """An environment's organization and registered database (to drop its slot)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "SELECT organization_id, database FROM {}.environments WHERE id = %s"
                ).format(sql.Identifier(self.catalog_schema)),
                (environment_id,),
            ).fetchone()
        if row is None:
            return None
        return row["organization_id"], DatabaseTarget.model_validate(row["database"])

    # -- leases ----------------------------------------------------------------------------

    def claim(
        self, environment_id: UUID, owner: UUID, lease_seconds: float
    ) -> ReceiverLease | None:
        """Become the environment's receiver: when nobody is, or the lease ran out (or it
        is ours already, e.g. after a restart of this instance's receiver)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO {t} AS r (environment_id, owner, generation, lease_expires_at, "
                    "status) VALUES (%(env)s, %(owner)s, 1, now() + make_interval(secs => "
                    "%(secs)s), 'active') ON CONFLICT (environment_id) DO UPDATE SET "
                    "owner = excluded.owner, generation = r.generation + 1, "
                    "lease_expires_at = excluded.lease_expires_at, status = 'active', "
                    "updated_at = now() WHERE r.owner IS NULL OR r.owner = excluded.owner "
                    "OR r.lease_expires_at IS NULL OR r.lease_expires_at < now() "
                    "RETURNING generation"
                ).format(t=self._receivers),
                {"env": environment_id, "owner": owner, "secs": lease_seconds},
            ).fetchone()
        return None if row is None else ReceiverLease(environment_id, owner, row["generation"])

    def renew(self, lease: ReceiverLease, lease_seconds: float) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET lease_expires_at = now() + make_interval(secs => %s), "
                    "updated_at = now() WHERE environment_id = %s AND owner = %s "
                    "AND generation = %s AND lease_expires_at > now() RETURNING 1"
                ).format(self._receivers),
                (lease_seconds, lease.environment_id, lease.owner, lease.generation),
            ).fetchone()
        return row is not None

    def release(self, lease: ReceiverLease, status: str | None = None) -> None:
        """Give the environment up (any instance may take it at once); ``status``
        'disabled' when archiving ended for it."""
        with self._pool.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET owner = NULL, lease_expires_at = NULL, "
                    "status = coalesce(%s, status), updated_at = now() "
                    "WHERE environment_id = %s AND owner = %s AND generation = %s"
                ).format(self._receivers),
                (status, lease.environment_id, lease.owner, lease.generation),
            )

    def fence(self, lease: ReceiverLease) -> Fence:
        """Refuses an event-store write unless ``lease`` is still held."""
        query = sql.SQL(
            "SELECT 1 FROM {} WHERE environment_id = %s AND owner = %s AND generation = %s "
            "AND lease_expires_at > now() FOR SHARE"
        ).format(self._receivers)

        def check(cur: Cursor[DictRow]) -> None:
            cur.execute(query, (lease.environment_id, lease.owner, lease.generation))
            if cur.fetchone() is None:
                raise ReceiverLeaseLost(f"environment {lease.environment_id}: receiver lease lost")

        return check


class ReceiverLeaseLost(Exception):
    """This instance is no longer the environment's receiver."""


def _target(row: dict[str, Any]) -> WalTarget:
    return WalTarget(
        environment_id=row["environment_id"],
        organization_id=row["organization_id"],
        database=DatabaseTarget.model_validate(row["database"]),
        destinations=tuple(
            DestinationTarget.of(d["destination_id"], d["name"], d["type"], d["config"])
            for d in row["destinations"]
        ),
        wal_retention_days=row["wal_retention_days"],
    )
