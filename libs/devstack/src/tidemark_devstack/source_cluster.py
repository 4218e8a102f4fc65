"""A PostgreSQL cluster of its own for an environment's ``full`` backups in tests and
benchmarks: a base backup copies a whole cluster, so it is never Tidemark's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tidemark_devstack.postgres import LocalPostgres, create_database_at


@dataclass
class SourceCluster:
    """The cluster, and a database on it whose owner may take base backups."""

    postgres: LocalPostgres
    database_url: str

    @property
    def port(self) -> int:
        return int(str(conninfo_to_dict(self.database_url)["port"]))

    def cluster_spec(self) -> dict[str, Any]:
        """The environment's ``cluster`` as the API takes it."""
        return {
            "dataDirectory": str(self.postgres.data_dir),
            "binDirectory": str(self.postgres.bin_dir),
            "port": self.port,
        }

    def stop(self) -> None:
        self.postgres.stop()


def start_source_cluster(
    base_dir: Path | None = None, *, database: str = "shop", password: str, schema_sql: str = ""
) -> SourceCluster:
    """Create and start a cluster in ``base_dir`` (a new directory under the system temp
    directory, reachable by the postgres user, by default), with database ``database``
    owned by a login role of that name with ``password`` and the REPLICATION attribute,
    filled with ``schema_sql``."""
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="tidemark-source-"))
        # The server runs as the postgres user when we are root: it must reach its home.
        base_dir.chmod(0o755)
    postgres = LocalPostgres(base_dir)
    admin_url = postgres.start()
    url = create_database_at(admin_url, database, password, replication=True)
    # Functions' privileges are per database: granted in the environment's own.
    with psycopg.connect(admin_url, dbname=database, autocommit=True) as conn:
        # The WAL receiver forces a segment switch when the open one holds old WAL.
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {}").format(
                sql.Identifier(database)
            )
        )
    if schema_sql:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(schema_sql)
    return SourceCluster(postgres, url)


def remove_source_cluster(cluster: SourceCluster) -> None:
    """Stop the cluster and delete its directory."""
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.postgres.base_dir, ignore_errors=True)


def as_postgres_user(argv: list[str]) -> list[str]:
    """``argv`` run as the postgres user when we are root (initdb, postgres and pg_ctl
    refuse to run as root), unchanged otherwise."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a restore step, failing with its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result
