"""How late do scheduled fires come, and what do they cost, with many schedules in one
scheduler process?

``--schedules`` schedules (mixed zones and crons, see ``CRONS``/``ZONES``) are configured
in the scheduler's real event store on PostgreSQL (a fresh database per run), their
environments and destination written into its catalog view (schema ``scheduler``). One
process then runs the scheduler's own timer, firing and ownership (``Timer``, ``Firing``,
``Ownership`` with every partition assigned, ``SystemClock``) for ``--minutes`` minutes of
real time, from the first minute boundary after the schedules are loaded.

Figures (one summary line, then details):

- fire lateness p50/p99/max: from a fire time to the moment its Fired event and
  RequestBackup are committed (target p99 <= 1 s);
- CPU seconds of this process per minute of schedule time (the PostgreSQL server's CPU
  is not in it);
- configure and load times (what a restart or a rebalance costs).

Kafka is not involved: the relay that publishes the stored commands is measured by
bench/relay.py. Missing the target does not fail the process; errors do (exit 1; 130 on
Ctrl-C).

Run: ``uv run python bench/scheduler_scale.py --schedules 10000 --minutes 3``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from harness import BenchError, deferred, note, postgres, run_bench
from psycopg.types.json import Jsonb
from tidemark_contracts.backup import BackupType
from tidemark_contracts.schedule import ScheduleSettings
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import schema_ddl
from tidemark_scheduler.application import FireRequest, SchedulerApplication
from tidemark_scheduler.domain import FireOutcome, Schedule
from tidemark_scheduler.firing import CatalogTargets, Firing
from tidemark_scheduler.main import EVENTSTORE_SCHEMA, SCHEMA
from tidemark_scheduler.ownership import Ownership
from tidemark_scheduler.timer import SystemClock, Timer

PREFIX = "scheduler_scale:"
TARGET_P99_SECONDS = 1.0
# (cron, weight): a few schedules fire every minute or five, most hourly or daily.
CRONS: tuple[tuple[str, int], ...] = (
    ("* * * * *", 5),
    ("*/5 * * * *", 15),
    ("{m} * * * *", 40),  # hourly at a minute of its own
    ("{m} 2 * * *", 30),  # daily
    ("0 3 * * 0", 10),  # weekly
)
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Asia/Tokyo",
)
ORGANIZATIONS = 100


class MeasuredApplication(SchedulerApplication):
    """The scheduler's application, noting when each fire was committed."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.committed: list[tuple[datetime, datetime]] = []  # (fire time, committed at)

    def fire_many(
        self,
        schedules: dict[uuid.UUID, Schedule],
        requests: Sequence[FireRequest],
        now: datetime,
        grace: timedelta,
    ) -> dict[tuple[uuid.UUID, BackupType], FireOutcome]:
        outcomes = super().fire_many(schedules, requests, now, grace)
        committed = datetime.now(UTC)
        for outcome in outcomes.values():
            if outcome.fired_for is not None:
                self.committed.append((outcome.fired_for, committed))
        return outcomes


def pick_cron(rng: random.Random) -> str:
    crons, weights = zip(*CRONS, strict=True)
    return rng.choices(crons, weights)[0].format(m=rng.randrange(60))


def write_catalog(
    database_url: str, environments: list[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, uuid.UUID]:
    """Environments and one destination per organization in the catalog view; returns the
    destination of each organization."""
    destinations = {org: uuid.uuid4() for org in {org for org, _ in environments}}
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(schema_ddl(CatalogView(), SCHEMA))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.destinations (id, organization_id, name, type, config, "
                "is_default, created_at) VALUES (%s, %s, %s, 'local', %s, true, %s)",
                [
                    (dest, org, f"local-{dest.hex[:6]}", Jsonb({"path": "backups"}), now)
                    for org, dest in destinations.items()
                ],
            )
            database = {"host": "db.internal", "port": 5432, "dbname": "shop", "user": "backup"}
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.environments (id, organization_id, project_id, name, "
                "database, cluster, files_path, created_at) "
                "VALUES (%s, %s, %s, %s, %s, NULL, NULL, %s)",
                [(env, org, env, "production", Jsonb(database), now) for org, env in environments],
            )
    return destinations


def configure_all(
    app: SchedulerApplication,
    environments: list[tuple[uuid.UUID, uuid.UUID]],
    destinations: dict[uuid.UUID, uuid.UUID],
    rng: random.Random,
) -> None:
    """The schedules as their first ConfigureSchedule creates them, saved 500 at a time
    (setup, not measured: the handler saves one per command, with its tracking)."""
    now = datetime.now(UTC)
    batch: list[Schedule] = []
    for position, (org, env) in enumerate(environments, start=1):
        full = rng.random() < 0.2
        settings = ScheduleSettings(
            timezone=rng.choice(ZONES),
            db_frequency="custom",
            db_cron=pick_cron(rng),
            full_frequency="custom" if full else "none",
            full_cron=pick_cron(rng) if full else None,
            destination_ids=[destinations[org]],
        )
        batch.append(
            Schedule.configure_new(
                environment_id=env,
                organization_id=org,
                project_id=env,
                revision=1,
                settings=settings,
                requested_by="bench",
                created_at=now,
                updated_at=now,
            )
        )
        if len(batch) == 500 or position == len(environments):
            app.save(*batch)
            for schedule in batch:
                app.remember_environment(schedule.environment_id)
            batch = []
        if position % 10_000 == 0:
            note(f"configured {position}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace, database_url: str) -> None:
    rng = random.Random(args.seed)
    orgs = [uuid.uuid4() for _ in range(ORGANIZATIONS)]
    environments = [(rng.choice(orgs), uuid.uuid4()) for _ in range(args.schedules)]
    destinations = write_catalog(database_url, environments)
    app = MeasuredApplication.on_postgres(database_url, EVENTSTORE_SCHEMA)
    app.ensure_index()
    started = time.monotonic()
    await asyncio.to_thread(configure_all, app, environments, destinations, rng)
    configure_seconds = time.monotonic() - started
    note(f"configured {args.schedules} schedules in {configure_seconds:.1f}s")

    pool = connection_pool(database_url, min_size=1, max_size=args.workers + 2)
    await pool.open(wait=True, timeout=30)
    clock = SystemClock()
    firing = Firing(
        app,
        CatalogTargets(pool, SCHEMA),
        clock,
        grace=timedelta(minutes=15),
        retry=timedelta(seconds=15),
    )
    timer = Timer(firing.fire_many, clock, workers=args.workers, batch=args.batch)
    ownership = Ownership(app, timer)
    task = asyncio.create_task(timer.run())
    try:
        started = time.monotonic()
        await ownership.assigned(list(range(ownership.partitions)))
        await ownership.wait_loaded()
        load_seconds = time.monotonic() - started
        note(f"loaded {len(timer)} schedule types in {load_seconds:.1f}s")
        now = datetime.now(UTC)
        window_start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        window_end = window_start + timedelta(minutes=args.minutes)
        await asyncio.sleep((window_start - datetime.now(UTC)).total_seconds())
        cpu_start = time.process_time()
        note(f"measuring fires from {window_start:%H:%M:%S} to {window_end:%H:%M:%S}")
        await asyncio.sleep((window_end - datetime.now(UTC)).total_seconds())
        cpu_seconds = time.process_time() - cpu_start
        # Fires of the window's last fire times may still be under way.
        await asyncio.sleep(args.drain_seconds)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ownership.close()
        await pool.close()
        app.close()

    lateness = [
        (committed - fire_time).total_seconds()
        for fire_time, committed in app.committed
        if window_start <= fire_time < window_end
    ]
    if not lateness:
        raise BenchError("no fire in the measured window")
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    verdict = "PASS" if p99 <= TARGET_P99_SECONDS else "FAIL"
    print(
        f"{PREFIX} schedules={args.schedules} fires={len(lateness)} "
        f"lateness_p50={p50:.3f}s lateness_p99={p99:.3f}s target_p99<={TARGET_P99_SECONDS}s "
        f"{verdict} cpu_s_per_schedule_minute={cpu_seconds / args.minutes:.2f}",
        flush=True,
    )
    print(
        f"{PREFIX}   lateness_max={max(lateness):.3f}s mean={statistics.fmean(lateness):.3f}s "
        f"fires_per_minute={len(lateness) / args.minutes:.0f} workers={args.workers} "
        f"batch={args.batch} "
        f"configure_s={configure_seconds:.1f} load_s={load_seconds:.1f} "
        f"heap={len(timer)}",
        flush=True,
    )


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    root = state_dir() / "bench"
    admin_url, _ = postgres(root, cleanup)
    name = f"tidemark_bench_sched_{uuid.uuid4().hex[:8]}"
    database_url = create_database_at(admin_url, name)
    deferred(cleanup, f"drop database {name}", lambda: drop_database_at(admin_url, name))
    asyncio.run(run(args, database_url))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=3, help="minutes of schedule time measured")
    parser.add_argument("--workers", type=int, default=4, help="the timer's fire workers")
    parser.add_argument("--batch", type=int, default=100, help="fires saved per transaction")
    parser.add_argument("--drain-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
