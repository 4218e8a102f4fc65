"""How fast does `tidemark events export` read the event stores, against a plain SQL read?

A fresh database gets every store of ``tidemark_cli.sources.SOURCES`` (each service's own
application creates its tables), then a real history driven through those applications
(projects, environments, destinations, schedules, backups that complete, fail and are
deleted, restores, alerts: ``drive_history``). Its stored rows are the templates: they
are copied with fresh ids (three organizations a copy) and shifted times until the stores
hold ``--events`` rows, through COPY.

``baseline``
    A plain SQL read of the same rows: every store's table of events (UNION ALL, no
    order), through a server-side cursor, every row fetched.
``export``
    What ``tidemark events export`` does (``tidemark_cli.audit`` and ``chain``: the
    ordered query, the hash chain, the writing), in a child process of its own, whose
    peak RSS is read at N/10 and at N events.

Summary lines (stdout): ``export: X events/s = R x plain SQL read (target >= 0.5)`` and
``export peak RSS: A MiB at N/10 events, B MiB at N events``; then detail lines. A missed
target does not fail the process; errors do (exit 1; 130 on Ctrl-C). See bench/README.md.

The rebuild figure comes from a database of its own (``--rebuild-events``, default
20,000): see ``measure_rebuild``.

Run: ``make bench-replay`` (= ``uv run python bench/replay.py [--events N]``)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from eventsourcing.persistence import Tracking
from harness import BenchError, deferred, note, postgres, run_bench
from psycopg import sql
from tidemark_alerts.domain import Place
from tidemark_api_gateway.domain import Destination, Environment, Project
from tidemark_backup_runner.domain import Backup
from tidemark_cli import audit, chain
from tidemark_cli.sources import SOURCES
from tidemark_contracts.backup import BackupFailed, DatabaseTarget, DestinationTarget, RequestBackup
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_restore_runner.domain import Restore
from tidemark_schedules import ids as schedule_ids

PREFIX = "export:"
TARGET = 0.5
COPY_SPACING = timedelta(seconds=3)  # copies overlap in time: the sort has real work


# -- a real history, through the services' own applications --------------------------


def open_stores(database_url: str) -> dict[str, Any]:
    """Each store's application on ``database_url`` (creating its tables), by store name."""
    return {source.store: source.open(database_url) for source in SOURCES}


class _Positions:
    """Tracking positions for commands that did not come from Kafka: increasing for the
    life of the process (a store keeps the highest position of each name)."""

    offset = 0

    def next(self, name: str) -> Tracking:
        _Positions.offset += 1
        return Tracking(f"bench-{name}:0", _Positions.offset)


def drive_history(
    apps: dict[str, Any],
    organization_id: uuid.UUID,
    *,
    password_ref: str = "secret:source-password",  # noqa: S107 (a reference, not a secret)
    positions: _Positions | None = None,
    requested_by: str = "bench",
) -> dict[str, Any]:
    """An organization's history, written by the applications of the stores in ``apps``
    (by store name, as ``open_stores`` gives them): a project with two environments, a
    destination, a schedule changed once, a backup that completes and is deleted, one that
    fails with its alert, one that completes, and a restore of it into the second
    environment. Every request says ``requested_by`` (free text). Returns the ids made, by
    role."""
    store = {source.service + "/" + source.application.__name__: source.store for source in SOURCES}
    catalog = apps[store["api-gateway/CatalogApplication"]]
    scheduler = apps[store["scheduler/SchedulerApplication"]]
    runner = apps[store["backup-runner/BackupRunnerApplication"]]
    restorer = apps[store["restore-runner/RestoreRunnerApplication"]]
    alerts = apps[store["alerts/AlertsApplication"]]
    positions = positions or _Positions()
    now = lambda: datetime.now(UTC)  # noqa: E731
    project_id, env_id, other_env_id, destination_id = (uuid.uuid4() for _ in range(4))
    database = {
        "host": "127.0.0.1",
        "port": 5432,
        "dbname": "shop",
        "user": "shop",
        "passwordRef": password_ref,
    }
    catalog.register(
        Project(
            project_id=project_id, organization_id=organization_id, name="shop", registered_at=now()
        ),
        Environment(
            environment_id=env_id,
            organization_id=organization_id,
            project_id=project_id,
            name="production",
            database=database,
            cluster=None,
            files_path=None,
            registered_at=now(),
        ),
        Environment(
            environment_id=other_env_id,
            organization_id=organization_id,
            project_id=project_id,
            name="staging",
            database=database,
            cluster=None,
            files_path=None,
            registered_at=now(),
        ),
        Destination(
            destination_id=destination_id,
            organization_id=organization_id,
            name="local",
            type="local",
            config={"path": "backups"},
            is_default=True,
            registered_at=now(),
        ),
    )
    for revision, cron in ((1, "0 3 * * *"), (2, "30 4 * * *")):
        scheduler.configure(
            ConfigureSchedule(
                schedule_id=schedule_ids.schedule_id(env_id),
                organization_id=organization_id,
                project_id=project_id,
                environment_id=env_id,
                revision=revision,
                settings=ScheduleSettings(
                    destination_ids=[destination_id], db_frequency="custom", db_cron=cron
                ),
                requested_by=requested_by,
                created_at=now(),
                updated_at=now(),
            ),
            positions.next("schedule"),
        )
    target = DestinationTarget.of(destination_id, "local", "local", {"path": "backups"})

    def backup() -> Backup:
        command = RequestBackup(
            backup_id=uuid.uuid4(),
            organization_id=organization_id,
            project_id=project_id,
            environment_id=env_id,
            type="db",
            trigger="manual",
            requested_by=requested_by,
            requested_at=now(),
            database=DatabaseTarget.model_validate(database),
            destinations=[target],
        )
        runner.request_backup(command, positions.next("backup"))
        made: Backup = runner.get_backup(command.backup_id)
        made.start(now(), 1_000_000)
        return made

    def complete(made: Backup) -> None:
        made.record_upload(str(destination_id), f"{made.id}.dump.zst", 123_456, now())
        made.complete(123_456, "sha256:" + "ab" * 32, "zstd", now())
        runner.save(made)

    deleted, failed, kept = backup(), backup(), backup()
    complete(deleted)
    deleted.request_deletion("bench", now())
    deleted.mark_deleted(now())
    runner.save(deleted)
    error = "pg_dump: connection failed: password authentication failed"
    failed.fail(error, now())
    runner.save(failed)
    alerts.backup_failed(
        BackupFailed(backup_id=failed.id, environment_id=env_id, error=error, failed_at=now()),
        organization_id,
        Place(project_id=project_id, environment_name="production"),
        uuid.uuid4(),
        positions.next("alerts"),
    )
    complete(kept)
    restore = Restore(
        restore_id=uuid.uuid4(),
        organization_id=organization_id,
        project_id=project_id,
        backup_id=kept.id,
        source_environment_id=env_id,
        target_environment_id=other_env_id,
        target_type="other",
        pitr_timestamp=None,
        safety_backup_id=None,
        requested_by=requested_by,
        requested_at=now(),
        # As the runner records it: the command's RestoreSource dumped (snake_case keys).
        source={
            "backup_id": str(kept.id),
            "environment_id": str(env_id),
            "type": "db",
            "size_bytes": 1024,
            "checksum": "sha256:" + "0" * 64,
            "compression": "zstd",
        },
        target={"environmentId": str(other_env_id), "database": database},
        correlation_id=None,
    )
    restore.start(now(), 1)
    restore.pass_milestone("verified", now())
    restore.pass_milestone("target_replaced", now())
    restore.complete(now())
    restorer.save(restore)
    return {
        "organization": organization_id,
        "project": project_id,
        "environment": env_id,
        "other_environment": other_env_id,
        "destination": destination_id,
        "backups": [deleted.id, failed.id, kept.id],
        "restore": restore.id,
    }


# -- filling the stores ---------------------------------------------------------------

_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"
)
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00")


class Template:
    """A stored row split at its ids and times, so a copy is a join of its parts."""

    def __init__(self, originator_id: uuid.UUID, version: int, topic: str, state: str) -> None:
        self.originator_id = originator_id
        self.version = version
        self.topic = topic
        self.parts: list[str | tuple[str, str]] = []
        position = 0
        pattern = re.compile(f"{_UUID.pattern}|{_TIME.pattern}")
        for match in pattern.finditer(state):
            self.parts.append(state[position : match.start()])
            text = match.group(0)
            if _TIME.fullmatch(text):
                self.parts.append(("time", text))
            else:
                self.parts.append(("id", text))
            position = match.end()
        self.parts.append(state[position:])


class Copier:
    """Copy ``k`` of the templates: every id mapped to another, the same in every store
    (derived from the id and ``k``), organizations included; every time shifted by
    ``k * COPY_SPACING``."""

    def __init__(self, base: datetime) -> None:
        self.offset = EPOCH - base
        self.salt = uuid.uuid4().bytes

    def new_id(self, text: str, copy: int) -> uuid.UUID:
        key = text.replace("-", "")
        # Organizations too get new ids per copy: shared among copies, their catalogs
        # would register the same project names twice, which no real history holds (the
        # rebuild's catalog projections refuse it, as the live ones would).
        seed = self.salt + key.encode() + copy.to_bytes(4, "big")
        return uuid.UUID(bytes=hashlib.blake2b(seed, digest_size=16).digest())

    def render(self, template: Template, copy: int) -> tuple[uuid.UUID, int, str, bytes]:
        shift = self.offset + COPY_SPACING * copy
        out: list[str] = []
        for part in template.parts:
            if isinstance(part, str):
                out.append(part)
            elif part[0] == "time":
                out.append((datetime.fromisoformat(part[1]) + shift).isoformat())
            else:
                fresh = self.new_id(part[1], copy)
                out.append(str(fresh) if "-" in part[1] else fresh.hex)
        originator = self.new_id(template.originator_id.hex, copy)
        return originator, template.version, template.topic, "".join(out).encode()


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def fill(database_url: str, events: int, templates_from: int = 3) -> int:
    """Stores of ``database_url`` holding about ``events`` rows; returns the exact count."""
    apps = open_stores(database_url)
    try:
        for _ in range(templates_from):
            org = uuid.uuid4()
            drive_history(apps, org)
    finally:
        for app in apps.values():
            app.close()
    templates: dict[str, list[Template]] = {}
    base = datetime.max.replace(tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        for source in SOURCES:
            rows = conn.execute(
                sql.SQL(
                    "SELECT originator_id, originator_version, topic, convert_from(state, 'UTF8') "
                    "FROM {} ORDER BY notification_id"
                ).format(audit.table_of(source))
            ).fetchall()
            templates[source.store] = [Template(*row) for row in rows]
            for _, _, _, state in rows:
                for text in _TIME.findall(state):
                    base = min(base, datetime.fromisoformat(text))
            conn.execute(sql.SQL("TRUNCATE {}").format(audit.table_of(source)))
        per_copy = sum(len(t) for t in templates.values())
        if per_copy == 0:
            raise BenchError("the driven history stored no events")
        copies = max(1, -(-events // per_copy))
        copier = Copier(base)
        written = 0
        for source in SOURCES:
            rows_of = templates[source.store]
            if not rows_of:
                continue
            note(f"filling {source.store}: {len(rows_of) * copies:,} rows")
            target = sql.SQL(
                "COPY {} (originator_id, originator_version, topic, state) FROM STDIN"
            ).format(audit.table_of(source))
            with conn.cursor() as cursor, cursor.copy(target) as copy:
                for k in range(copies):
                    for template in rows_of:
                        copy.write_row(copier.render(template, k))
                        written += 1
            conn.commit()
        conn.execute("ANALYZE")
    return written


# -- measuring ------------------------------------------------------------------------


def plain_read(database_url: str) -> tuple[int, float]:
    """Every stored row of every store, unordered, every row fetched."""
    with psycopg.connect(database_url) as conn:
        branches = [
            sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
            ).format(audit.table_of(s))
            for _, s in audit.existing_sources(conn)
        ]
        statement = sql.SQL(" UNION ALL ").join(branches)
        count = 0
        started = time.perf_counter()
        # Read as the export reads (binary, streamed in chunks of the same size).
        with conn.transaction(), conn.cursor(binary=True) as cursor:
            for _row in cursor.stream(statement, size=audit.ITERSIZE):
                count += 1
        return count, time.perf_counter() - started


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def export_child(database_url: str, output: str, events: int) -> None:
    """The export as the CLI runs it, reporting its time and its peak RSS at N/10 and N."""
    tenth = max(1, events // 10)
    report: dict[str, Any] = {}

    def watched(bodies: Iterator[bytes]) -> Iterator[bytes]:
        for done, body in enumerate(bodies, start=1):
            if done == tenth:
                report["rss_tenth_kib"] = _peak_rss_kib()
            yield body

    with open(output, "wb", buffering=1 << 20) as out, audit.connect(database_url) as conn:
        started = time.perf_counter()  # the plain read's clock starts at its query too
        statement, params, sources = audit.export_query(conn, audit.Query(None, None, None))
        writer = chain.ChainWriter(out)
        writer.header(audit.iso(datetime.now(UTC)), {}, [s.store for s in sources])
        writer.events_from(watched(audit.stream_bodies(conn, statement, params)))
        writer.trailer()
    report["seconds"] = time.perf_counter() - started
    report["events"] = writer.events
    report["rss_end_kib"] = _peak_rss_kib()
    print(json.dumps(report))


def measure_export(database_url: str, output: str, events: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--export-child", output, "--events", str(events)],
        env={**os.environ, "BENCH_REPLAY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"the export failed: {result.stderr.strip().splitlines()[-1:]}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def measure_rebuild(admin_url: str, cleanup: contextlib.ExitStack, events: int) -> None:
    """`tidemark projections rebuild` (every read model, compared with the live tables) over
    a database of its own holding ``events`` stored events, against a plain SQL read of the
    same rows there. Its own size: the rebuild applies each event through the projections'
    SQL (4-5 statements an event), some hundreds of events a second, so 1,000,000 would take
    hours; the figure is the rate, and the rate does not depend on the count."""
    import asyncio

    from tidemark_cli.rebuild import rebuild_read_models

    name = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
    database_url = create_database_at(admin_url, name)
    deferred(cleanup, f"drop database {name}", lambda: drop_database_at(admin_url, name))
    stored = fill(database_url, events)
    count, plain_seconds = plain_read(database_url)
    if count != stored:
        raise BenchError(f"the plain read saw {count} rows, {stored} were stored")
    started = time.perf_counter()
    report = asyncio.run(rebuild_read_models(database_url))
    seconds = time.perf_counter() - started
    rate, plain_rate = stored / seconds, stored / plain_seconds
    print(
        f"rebuild: {rate:,.0f} events/s = {rate / plain_rate:.4f} x plain SQL read "
        f"({plain_rate:,.0f} rows/s) over {stored:,} stored events (target >= 0.5)",
        flush=True,
    )
    note(
        f"rebuild: {report.events_read:,} events applied over {len(report.models)} read models "
        f"in {seconds:.1f} s; equal to the live tables: {report.equal}"
    )


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    root = state_dir() / "bench" / "replay"
    admin_url, _ = postgres(root, cleanup)
    name = f"bench_replay_{uuid.uuid4().hex[:8]}"
    database_url = create_database_at(admin_url, name)
    deferred(cleanup, f"drop database {name}", lambda: drop_database_at(admin_url, name))
    started = time.perf_counter()
    stored = fill(database_url, args.events)
    note(f"filled {stored:,} stored events in {time.perf_counter() - started:.1f} s")
    # Alternating rounds, the best of each: on a shared machine the load changes from
    # second to second, and the best round is the one least disturbed by it.
    plain_times: list[float] = []
    reports: list[dict[str, Any]] = []
    count = 0
    for round_ in range(1, args.rounds + 1):
        count, seconds = plain_read(database_url)
        if count != stored:
            raise BenchError(f"the plain read saw {count} rows, {stored} were stored")
        plain_times.append(seconds)
        note(f"round {round_}: plain SQL read of {count:,} rows in {seconds:.2f} s")
        report = measure_export(database_url, args.output, stored)
        if report["events"] != stored:
            raise BenchError(f"the export wrote {report['events']} events, {stored} were stored")
        reports.append(report)
        note(f"round {round_}: export of {report['events']:,} events in {report['seconds']:.2f} s")
    plain_seconds = min(plain_times)
    report = min(reports, key=lambda r: float(r["seconds"]))
    export_rate = report["events"] / report["seconds"]
    plain_rate = count / plain_seconds
    ratio = export_rate / plain_rate
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(
        f"{PREFIX} {export_rate:,.0f} events/s = {ratio:.2f} x plain SQL read "
        f"(target >= {TARGET}) {verdict}",
        flush=True,
    )
    print(
        f"export peak RSS: {report['rss_tenth_kib'] / 1024:.1f} MiB at N/10 events, "
        f"{report['rss_end_kib'] / 1024:.1f} MiB at N={stored:,} events",
        flush=True,
    )
    print(
        f"plain SQL read: {plain_rate:,.0f} rows/s over {count:,} rows (best of {args.rounds}: "
        + ", ".join(f"{t:.2f}" for t in plain_times)
        + " s)",
        flush=True,
    )
    print(
        "export rounds: " + ", ".join(f"{float(r['seconds']):.2f}" for r in reports) + " s",
        flush=True,
    )
    if args.rebuild_events > 0:
        measure_rebuild(admin_url, cleanup, args.rebuild_events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of)")
    parser.add_argument("--output", default=os.devnull, help="where the export writes")
    parser.add_argument(
        "--rebuild-events",
        type=int,
        default=20_000,
        help="stored events of the rebuild's own database (0: no rebuild figure)",
    )
    parser.add_argument("--export-child", metavar="OUTPUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(os.environ["BENCH_REPLAY_DATABASE_URL"], args.export_child, args.events)
        return 0
    return run_bench(PREFIX, bench, args)


if __name__ == "__main__":
    sys.exit(main())
