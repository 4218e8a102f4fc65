"""How fast does the gateway serve a page of backups over 100,000 of them, against /health?

The read model holds ``--count`` backups of one environment (plus ``--neighbours`` of a
second environment of the same project): each backup's events (BackupRequested, then
BackupStarted and BackupCompleted or BackupFailed, a few left pending) folded into its row
by the projection's own rule (``next_row``) and counted by the projection's own count rule
(``count_moves``), loaded with COPY; the counts are then checked against the rows, and the
newest ``--live`` backups go through the projection's live apply path on top of that.

One gateway process (``tidemark_devstack.stack.Stack``, as ``make run`` starts it) serves
the requests. A load client (``wrk`` when it is on PATH, else an httpx async client) keeps
``--connections`` requests in flight for ``--duration`` seconds per endpoint, and reports
requests per second and p99 latency of:

- ``GET /health`` (the baseline: measured first and last, the higher rate counts),
- ``GET /api/v1/environments/{env}/backups`` (page 1, limit 20),
- ``GET /api/v1/projects/{project}/backups`` (page 1, limit 50),
- ``GET /api/v1/environments/{env}/backups?status=failed&type=db`` (a filtered page 1),

each as a ratio to the baseline (target >= 0.5), one summary line per figure, then detail
lines, among them a deep page (``offset`` near the end), which is not a target: API.md
pages by limit/offset, and a deep offset walks the index up to it.

Missing a target does not fail the process; errors do (exit 1; 130 on Ctrl-C).
See bench/README.md.

Run: ``make bench-read-api`` (= ``uv run python bench/read_api.py``)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import psycopg
from eventsourcing.persistence import Tracking
from harness import BenchError, deferred, kafka, note, postgres, run_bench
from tidemark_api_gateway.projection import COLUMNS, COUNT_KEY, BackupsView, count_moves, next_row
from tidemark_api_gateway.readmodel import SCHEMA
from tidemark_contracts import Envelope, Message
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    DestinationRef,
)
from tidemark_devstack.paths import free_port, state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_devstack.stack import Stack
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import ProjectionRunner

PREFIX = "read_api:"
TARGET_RATIO = 0.5
DEFAULT_COUNT = 100_000
T_END = datetime(2026, 11, 1, tzinfo=UTC)


# --- the read model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    org: uuid.UUID
    project: uuid.UUID
    env: uuid.UUID


def backup_events(scope: Scope, n: int, i: int) -> tuple[uuid.UUID, list[Message]]:
    """The events of the ``i``-th of ``n`` backups (the newest last): one every 5 minutes,
    a fifth of them ``full``, one in 25 failed, the newest few still pending."""
    backup_id = uuid.uuid4()
    at = T_END - timedelta(minutes=5 * (n - i))
    env = scope.env
    events: list[Message] = [
        BackupRequested(
            backup_id=backup_id,
            organization_id=scope.org,
            project_id=scope.project,
            environment_id=env,
            type="full" if i % 5 == 0 else "db",
            trigger="scheduled",
            requested_by="scheduler",
            requested_at=at,
            destinations=[DestinationRef(destination_id=uuid.uuid4(), name="disk", type="local")],
        )
    ]
    if i >= n - 3:
        return backup_id, events
    started = at + timedelta(seconds=1)
    events.append(BackupStarted(backup_id=backup_id, environment_id=env, started_at=started))
    if i % 25 == 7:
        events.append(
            BackupFailed(backup_id=backup_id, environment_id=env, error="boom", failed_at=started)
        )
    else:
        events.append(
            BackupCompleted(
                backup_id=backup_id,
                environment_id=env,
                size_bytes=1 << 20,
                checksum="sha256:" + "ab" * 32,
                compression="zstd",
                completed_at=started + timedelta(seconds=30),
                duration_ms=30_000,
            )
        )
    return backup_id, events


def fold(events: list[Message]) -> tuple[dict[str, Any], list[tuple[tuple[Any, ...], int]]]:
    """The row the projection's rule makes of ``events``, and the count moves it made."""
    row: dict[str, Any] | None = None
    moves: list[tuple[tuple[Any, ...], int]] = []
    for event in events:
        new = next_row(row, event)
        moves.extend(count_moves(row, new))
        row = new
    assert row is not None
    return row, moves


def copy_backups(
    conn: psycopg.Connection[Any], scope: Scope, n: int, live: int
) -> tuple[Counter[tuple[Any, ...]], list[tuple[uuid.UUID, list[Message]]]]:
    """COPY the oldest ``n - live`` backups' rows; return their counts and the newest
    ``live`` backups' events (for the live apply path)."""
    counts: Counter[tuple[Any, ...]] = Counter()
    later: list[tuple[uuid.UUID, list[Message]]] = []
    columns = ("id", *COLUMNS)
    statement = f"COPY {SCHEMA}.backups ({', '.join(columns)}) FROM STDIN"
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for i in range(n):
            backup_id, events = backup_events(scope, n, i)
            if i >= n - live:
                later.append((backup_id, events))
                continue
            row, moves = fold(events)
            for key, delta in moves:
                counts[key] += delta
            row["destinations"] = json.dumps(row["destinations"])
            copy.write_row([backup_id, *(row.get(c) for c in COLUMNS)])
    return counts, later


def write_counts(conn: psycopg.Connection[Any], counts: Counter[tuple[Any, ...]]) -> None:
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {SCHEMA}.backup_counts ({', '.join(COUNT_KEY)}, n) FROM STDIN") as copy,
    ):
        for key, n in counts.items():
            if n:
                copy.write_row([*key, n])


async def apply_live(url: str, batches: list[list[tuple[uuid.UUID, list[Message]]]]) -> int:
    """The newest backups through ``ProjectionRunner.apply_at``: one transaction per event,
    with a Kafka-like position, as the gateway's consumer applies them."""
    pool = connection_pool(url)
    await pool.open()
    try:
        runner = ProjectionRunner(pool, SCHEMA, BackupsView())
        offset = 0
        for batch in batches:
            for backup_id, events in batch:
                for version, event in enumerate(events, start=1):
                    offset += 1
                    envelope = Envelope.wrap(
                        event,
                        producer="bench",
                        organization_id=uuid.UUID(int=0),
                        environment_id=event.environment_id,  # type: ignore[attr-defined]
                        aggregate_id=backup_id,
                        aggregate_version=version,
                    )
                    await runner.apply_at(envelope, Tracking("bench.backup.events:0", offset))
        return offset
    finally:
        await pool.close()


def check_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The kept counts must be the rows' counts; returns the totals by status."""
    key = ", ".join(COUNT_KEY)
    kept = conn.execute(f"SELECT {key}, n FROM {SCHEMA}.backup_counts").fetchall()
    counted = conn.execute(
        f"SELECT {key}, count(*) FROM {SCHEMA}.backups GROUP BY {key}"
    ).fetchall()
    if sorted(map(tuple, kept)) != sorted(map(tuple, counted)):
        raise BenchError(f"counts differ from the rows: kept {kept}, counted {counted}")
    by_status: Counter[str] = Counter()
    for row in kept:
        by_status[row[3]] += row[5]
    return dict(by_status)


# --- load client ------------------------------------------------------------------------


@dataclass
class Measured:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(name: str, url: str, token: str, connections: int, duration: float) -> Measured:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration:.0f}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        note(f"{name}: wrk socket errors: {socket_errors.group(1)}")
    return Measured(
        name,
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(percentiles["50"]),
        _ms(percentiles["99"]),
        requests,
        int(errors.group(1)) if errors else 0,
    )


async def _httpx_load(url: str, token: str, connections: int, duration: float) -> Measured:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:
        stop = time.monotonic() + duration

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - began
    latencies.sort()
    return Measured(
        "",
        len(latencies) / elapsed,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        len(latencies),
        errors,
    )


def run_httpx(name: str, url: str, token: str, connections: int, duration: float) -> Measured:
    measured = asyncio.run(_httpx_load(url, token, connections, duration))
    measured.name = name
    return measured


# --- orchestration ----------------------------------------------------------------------


def make_token(secret: str, org_id: uuid.UUID) -> str:
    claims = {
        "sub": "bench",
        "org_id": str(org_id),
        "exp": int(time.time()) + 24 * 3600,
        "scope": "backups:read backups:write",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise BenchError(
            f"{response.request.method} {response.request.url.path}: expected {status}, "
            f"got {response.status_code} {response.text[:500]}"
        )
    return response.json()


def register(client: httpx.Client) -> tuple[str, str, str]:
    """A project with two environments through the API: the catalog as the gateway has it."""
    expect(client.post("/api/v1/secrets", json={"name": "bench-db", "value": "unused"}), 201)
    project = expect(client.post("/api/v1/projects", json={"name": "bench"}), 201)
    envs = []
    for name in ("production", "staging"):
        body = {
            "name": name,
            "database": {
                "host": "127.0.0.1",
                "port": 5432,
                "dbname": "app",
                "user": "app",
                "passwordRef": "secret:bench-db",
            },
        }
        path = f"/api/v1/projects/{project['id']}/environments"
        envs.append(expect(client.post(path, json=body), 201)["id"])
    return project["id"], envs[0], envs[1]


def wait_healthy(url: str, stack: Stack, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if stack.dead():
            raise BenchError(f"the gateway exited; see {stack.log_dir}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=3).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"the gateway did not answer /health within {timeout:.0f}s")
        time.sleep(0.3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="backups of the env")
    parser.add_argument(
        "--neighbours", type=int, default=2_000, help="backups of a second env of the project"
    )
    parser.add_argument(
        "--live", type=int, default=200, help="newest backups applied through the live path"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each one")
    parser.add_argument("--connections", type=int, default=16, help="requests in flight")
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    return parser.parse_args(argv)


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    wall_started = time.monotonic()
    root = state_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    client_kind = args.client
    if client_kind == "auto":
        client_kind = "wrk" if shutil.which("wrk") else "httpx"
    load = run_wrk if client_kind == "wrk" else run_httpx

    admin_url, _ = postgres(root, cleanup)
    bootstrap, _ = kafka(root, cleanup)

    db_name = f"tidemark_bench_read_{uuid.uuid4().hex[:8]}"
    db_url = create_database_at(admin_url, db_name)
    deferred(cleanup, f"drop database {db_name}", lambda: drop_database_at(admin_url, db_name))

    jwt_secret = secrets.token_urlsafe(32)
    stack = Stack(
        database_url=db_url,
        kafka_bootstrap=bootstrap,
        jwt_secret=jwt_secret,
        log_dir=root / "logs" / db_name,
        gateway_port=free_port(),
    )
    note(f"starting one gateway (logs in {stack.log_dir}) ...")
    stack.start(only="api-gateway")
    deferred(cleanup, "stop the gateway", stack.stop)
    wait_healthy(stack.gateway_url, stack)
    org = uuid.uuid4()
    token = make_token(jwt_secret, org)
    client = httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
    )
    cleanup.callback(client.close)
    project_id, env_id, neighbour_id = register(client)

    note(f"loading {args.count} + {args.neighbours} backups ...")
    load_started = time.monotonic()
    big = Scope(org, uuid.UUID(project_id), uuid.UUID(env_id))
    small = Scope(org, uuid.UUID(project_id), uuid.UUID(neighbour_id))
    with psycopg.connect(db_url) as conn:
        counts, later = copy_backups(conn, big, args.count, args.live)
        more, _ = copy_backups(conn, small, args.neighbours, 0)
        write_counts(conn, counts + more)
        conn.commit()
    copied = time.monotonic() - load_started
    note(f"copied in {copied:.1f}s; {len(later)} backups through the live apply path ...")
    live_started = time.monotonic()
    live_events = asyncio.run(apply_live(db_url, [later]))
    live_s = time.monotonic() - live_started
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.backups")
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.backup_counts")
        by_status = check_counts(conn)
        table_mb = conn.execute(
            f"SELECT pg_total_relation_size('{SCHEMA}.backups') / 1048576.0"
        ).fetchone()[0]  # type: ignore[index]
    note(f"read model: {by_status}, backups table {table_mb:.0f} MB with indexes")

    env_path = f"/api/v1/environments/{env_id}/backups"
    project_path = f"/api/v1/projects/{project_id}/backups"
    total = args.count + args.neighbours
    failed_db = sum(1 for i in range(args.count - 3) if i % 25 == 7 and i % 5 != 0)
    deep = max(0, args.count - 20)
    # What each endpoint must answer before it is measured (a fast wrong answer is no win).
    first = expect(client.get(env_path), 200)
    created = [item["createdAt"] for item in first["items"]]
    if (
        first["total"] != args.count
        or len(first["items"]) != 20
        or created != sorted(created, reverse=True)
    ):
        raise BenchError(f"environment page 1 is wrong: total {first['total']}")
    listed = expect(client.get(project_path), 200)
    names = {env_id: "production", neighbour_id: "staging"}
    if listed["total"] != total or any(
        item["environment"] != {"id": item["environmentId"], "name": names[item["environmentId"]]}
        for item in listed["items"]
    ):
        raise BenchError(f"project page 1 is wrong: total {listed['total']}")
    filtered_query = "?status=failed&type=db"
    filtered = expect(client.get(env_path + filtered_query), 200)
    if filtered["total"] != failed_db or {(i["status"], i["type"]) for i in filtered["items"]} != {
        ("failed", "db")
    }:
        raise BenchError(f"filtered page is wrong: total {filtered['total']}, want {failed_db}")
    deep_page = expect(client.get(f"{env_path}?offset={deep}"), 200)
    if len(deep_page["items"]) != args.count - deep:
        raise BenchError("the deep page is wrong")

    base = stack.gateway_url
    endpoints = [
        ("health", f"{base}/health"),
        ("environment_page", f"{base}{env_path}"),
        ("project_page", f"{base}{project_path}"),
        ("environment_filtered_page", f"{base}{env_path}{filtered_query}"),
        ("environment_deep_page", f"{base}{env_path}?offset={deep}"),
        ("health", f"{base}/health"),
    ]
    load_before = os.getloadavg()[0]
    results: list[Measured] = []
    for name, url in endpoints:
        if stack.dead():
            raise BenchError(f"the gateway exited; see {stack.log_dir}")
        if args.warmup > 0:
            load(name, url, token, args.connections, args.warmup)
        measured = load(name, url, token, args.connections, args.duration)
        if measured.errors:
            raise BenchError(f"{name}: {measured.errors} answers were not 200")
        note(
            f"{name}: {measured.rps:.0f} req/s, p50 {measured.p50_ms:.1f} ms, p99 "
            f"{measured.p99_ms:.1f} ms ({measured.requests} requests)"
        )
        results.append(measured)

    health = max((m for m in results if m.name == "health"), key=lambda m: m.rps)
    for m in results:
        if m.name in ("health", "environment_deep_page"):
            continue
        ratio = m.rps / health.rps
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        print(
            f"{PREFIX} {m.name}_vs_health ratio={ratio:.2f} ({m.rps:.0f} req/s p99 "
            f"{m.p99_ms:.1f} ms; health {health.rps:.0f} req/s p99 {health.p99_ms:.1f} ms; "
            f"n={total}) target>={TARGET_RATIO} {verdict}",
            flush=True,
        )
    for m in results:
        print(
            f"{PREFIX}   {m.name}: {m.rps:.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 "
            f"{m.p99_ms:.2f} ms, {m.requests} requests",
            flush=True,
        )
    deep_m = next(m for m in results if m.name == "environment_deep_page")
    print(
        f"{PREFIX}   deep page (offset={deep}) is not a target: {deep_m.rps / health.rps:.2f}"
        " of health; an offset walks the index up to it",
        flush=True,
    )
    print(
        f"{PREFIX}   read model: {total} backups {by_status}; counts match the rows; "
        f"COPY {copied:.1f}s, {live_events} live events in {live_s:.1f}s "
        f"({live_events / live_s:.0f}/s); table {table_mb:.0f} MB",
        flush=True,
    )
    print(
        f"{PREFIX}   client {client_kind}, {args.connections} connections, {args.duration:.0f}s "
        f"per endpoint; one gateway process; load average {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; whole run "
        f"{time.monotonic() - wall_started:.0f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
