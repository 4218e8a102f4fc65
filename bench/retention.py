"""How long does a retention preview over 10,000 backups take, against merely loading them?

The gateway's backups table (``BackupsView``'s own DDL, in a fresh database) holds
``--count`` backups of one environment, shaped like a long-running schedule: an hourly
scheduled ``db`` backup, a daily scheduled ``full`` one, a manual backup now and then, a
few failed and deleted ones; plus ``--neighbours`` backups of another environment.

``baseline``
    Load the environment's backups, sorted by PostgreSQL: ``SELECT id, type, trigger,
    status, created_at, size_bytes … WHERE environment_id = … ORDER BY created_at DESC,
    id`` and fetch every row.
``preview``
    The same load, then what the retention preview does with the rows: ``BackupFacts``
    of each, ``pitr_base`` (WAL on, ``--wal-days``) and ``plan_retention`` with a typical
    policy (24 hourly, 7 daily, 5 weekly, 12 monthly, 30 days of dailies) in
    Europe/Berlin.

The two alternate, ``--runs`` times each after ``--warmup`` unmeasured rounds. Figures
(one summary line each): ``preview_vs_load`` = median preview time / median load time
(no target in the issue: reported); ``preview_p99_ms`` = the 99th percentile of the
preview's time in ms, target < 100 ms. Then detail lines. Missing a target does not fail
the process; errors do (exit 1; 130 on Ctrl-C). See bench/README.md.

Run: ``make bench-retention`` (= ``uv run python bench/retention.py``)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from harness import BenchError, deferred, note, postgres, run_bench
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA
from tidemark_contracts.schedule import RetentionSettings
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_schedules.retention import BackupFacts, RetentionPlan, pitr_base, plan_retention

PREFIX = "retention:"
P99_TARGET_MS = 100.0
ZONE = "Europe/Berlin"
POLICY = RetentionSettings(
    retain_hourly=24,
    retain_daily=7,
    retain_weekly=5,
    retain_monthly=12,
    retain_daily_days=30,
)
LOAD = f"""
SELECT id, type, trigger, status, created_at, size_bytes
FROM {SCHEMA}.backups
WHERE environment_id = %s
ORDER BY created_at DESC, id
"""


def rows_of(
    organization: uuid.UUID, project: uuid.UUID, environment: uuid.UUID, n: int, now: datetime
) -> list[tuple[Any, ...]]:
    """``n`` backups, newest ``now``, one an hour: a daily ``full`` at 02:00 UTC, every
    97th manual, every 89th failed and every 211th deleted (the rest completed)."""
    rows = []
    for i in range(n):
        at = now - timedelta(hours=i)
        backup_type = "full" if at.hour == 2 else "db"
        status = "failed" if i % 89 == 5 else "deleted" if i % 211 == 7 else "completed"
        size = None if status != "completed" else (40 if backup_type == "db" else 900) << 20
        rows.append(
            (
                uuid.uuid4(),
                organization,
                project,
                environment,
                backup_type,
                "manual" if i % 97 == 3 else "scheduled",
                status,
                size,
                at,
                at if status != "failed" else None,
            )
        )
    return rows


def load(conn: psycopg.Connection[Any], environment: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(LOAD, (environment,)).fetchall()


def preview(
    conn: psycopg.Connection[Any], environment: uuid.UUID, now: datetime, wal_days: int
) -> RetentionPlan:
    facts = [
        BackupFacts(
            backup_id=row[0],
            type=row[1],
            trigger=row[2],
            status=row[3],
            created_at=row[4],
            size_bytes=row[5],
        )
        for row in load(conn, environment)
    ]
    protected = pitr_base(facts, wal_enabled=True, wal_retention_days=wal_days, now=now)
    return plan_retention(facts, POLICY, ZONE, protected=protected)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="backups of the environment")
    parser.add_argument(
        "--neighbours", type=int, default=2_000, help="backups of another environment"
    )
    parser.add_argument("--runs", type=int, default=100, help="measured runs of each (>= 50)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first")
    parser.add_argument("--wal-days", type=int, default=7, help="walRetentionDays")
    args = parser.parse_args(argv)
    if args.runs < 50:
        parser.error("--runs must be at least 50 (a p99 of fewer says little)")
    return args


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    wall_started = time.monotonic()
    root = state_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    admin_url, _ = postgres(root, cleanup)
    db_name = f"tidemark_bench_retention_{uuid.uuid4().hex[:8]}"
    db_url = create_database_at(admin_url, db_name)
    deferred(cleanup, f"drop database {db_name}", lambda: drop_database_at(admin_url, db_name))

    organization, project = uuid.uuid4(), uuid.uuid4()
    environment, neighbour = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    conn = psycopg.connect(db_url, autocommit=True)
    cleanup.callback(conn.close)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    conn.execute(BackupsView().ddl(SCHEMA))
    note(f"loading {args.count} + {args.neighbours} backups ...")
    columns = (
        "id, organization_id, project_id, environment_id, type, trigger, status, size_bytes,"
        " created_at, completed_at"
    )
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {SCHEMA}.backups ({columns}) FROM STDIN") as copy,
    ):
        for row in rows_of(organization, project, environment, args.count, now):
            copy.write_row(row)
        for row in rows_of(organization, project, neighbour, args.neighbours, now):
            copy.write_row(row)
    conn.execute(f"VACUUM ANALYZE {SCHEMA}.backups")

    rows = load(conn, environment)
    if len(rows) != args.count:
        raise BenchError(f"loaded {len(rows)} rows, want {args.count}")
    plan = preview(conn, environment, now, args.wal_days)
    completed = sum(1 for row in rows if row[3] == "completed")
    if len(plan.keep) + len(plan.delete) != completed or not plan.delete:
        raise BenchError(f"the plan is wrong: {len(plan.keep)} kept, {len(plan.delete)} deleted")

    note(f"{args.warmup} warm-up rounds, then {args.runs} runs of each, alternating ...")
    load_before = os.getloadavg()[0]
    loads: list[float] = []
    previews: list[float] = []
    plans: list[float] = []
    facts = [BackupFacts(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows]
    for run in range(args.warmup + args.runs):
        started = time.perf_counter()
        load(conn, environment)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        preview(conn, environment, now, args.wal_days)
        previewed = time.perf_counter() - started
        started = time.perf_counter()
        plan_retention(facts, POLICY, ZONE)
        planned = time.perf_counter() - started
        if run >= args.warmup:
            loads.append(loaded * 1000)
            previews.append(previewed * 1000)
            plans.append(planned * 1000)

    ratio = statistics.median(previews) / statistics.median(loads)
    p99 = percentile(previews, 99)
    print(
        f"{PREFIX} preview_vs_load ratio={ratio:.2f} (preview median "
        f"{statistics.median(previews):.1f} ms, load and sort median "
        f"{statistics.median(loads):.1f} ms; n={args.count}) target: none (reported)",
        flush=True,
    )
    verdict = "PASS" if p99 < P99_TARGET_MS else "FAIL"
    print(
        f"{PREFIX} preview_p99_ms value={p99:.1f} (p50 {percentile(previews, 50):.1f} ms, "
        f"max {max(previews):.1f} ms over {args.runs} runs) target<{P99_TARGET_MS:.0f} {verdict}",
        flush=True,
    )
    print(
        f"{PREFIX}   load and sort: p50 {percentile(loads, 50):.1f} ms, p99 "
        f"{percentile(loads, 99):.1f} ms; plan_retention alone (facts built): p50 "
        f"{percentile(plans, 50):.1f} ms, p99 {percentile(plans, 99):.1f} ms",
        flush=True,
    )
    print(
        f"{PREFIX}   plan: {len(plan.keep)} kept, {len(plan.delete)} deleted of {completed} "
        f"completed ({args.count} rows of the environment, {args.neighbours} of another), "
        f"{plan.freed_bytes / 2**30:.1f} GiB freed; policy hourly 24, daily 7, weekly 5, "
        f"monthly 12, 30 days of dailies, {ZONE}, WAL {args.wal_days} days",
        flush=True,
    )
    print(
        f"{PREFIX}   load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs; whole run {time.monotonic() - wall_started:.0f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
