"""Many SSE clients following one running backup on ONE gateway process.

``--clients`` (2,000) concurrent connections to ``GET /api/v1/backups/{id}/progress``
from this one process (asyncio, raw sockets: an HTTP/1.1 request, then the chunked
event stream read as it comes). Progress ticks are injected by publishing real
``BackupProgress`` envelopes to ``backup.progress`` at ``--rate`` per second for
``--duration`` seconds, as the backup-runner would (keyed by environment). The backup
itself is a row of the gateway's read model in status ``running``, written directly (no
runner runs it).

Figures, one summary line each (``sse_fanout: …``):

- ``delay``: p50 and p99 of the delivery delay of every (client, tick) pair: the
  bench's monotonic clock just before the tick is handed to the producer, to the moment
  a client has read the event (producer ack, Kafka, the gateway's tail, fan-out, HTTP).
  Target p99 <= 250 ms.
- ``complete``: how many clients received every published tick, in order, each once
  (target: all).
- ``rss``: the gateway's resident memory before the clients connect, at its peak while
  they are connected, and per client.
- ``baseline``: the same measurement with ONE client in the same run, and the ratio
  p99(N clients) / p99(1 client).

Everything runs on this machine: PostgreSQL and Kafka from ``DATABASE_URL`` /
``KAFKA_BOOTSTRAP_SERVERS`` when set, else local ones under ``.state/bench``; the gateway
alone (``tidemark_devstack.stack.Stack``, only ``api-gateway``, expecting no other
service) on a fresh database. Missing a target does not fail the process; errors do
(exit 1; 130 on Ctrl-C). See bench/README.md.

Run: ``uv run python bench/sse_fanout.py --clients 2000``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from aiokafka import AIOKafkaProducer
from harness import BenchError, deferred, kafka, note, postgres, run_bench
from tidemark_contracts import BACKUP_PROGRESS, Envelope, utc_now
from tidemark_contracts.backup import BackupProgress
from tidemark_devstack.e2e import make_token
from tidemark_devstack.paths import free_port, state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_devstack.stack import Stack

PREFIX = "sse_fanout:"
P99_TARGET_MS = 250.0
DEFAULT_CLIENTS = 2000
CONNECT_BATCH = 100
FIRST_EVENT_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 30.0


def raise_file_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (the gateway, started after
    this, inherits it); refuse to run when even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise BenchError(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} needed")
    return target


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --- the clients ------------------------------------------------------------------------


@dataclass
class Client:
    """One SSE connection: when each progress event (by id) arrived."""

    received: list[tuple[int, float]] = field(default_factory=list)
    first_event: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    ended: bool = False


async def follow(client: Client, host: str, port: int, path: str, token: str) -> None:
    """Read one stream until the connection ends or the task is cancelled."""
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise BenchError(f"answer {status!r}")
        headers = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" not in headers.lower():
            raise BenchError("the stream is not chunked")
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                client.ended = True
                return
            chunk = await reader.readexactly(size + 2)
            now = time.monotonic()
            if chunk.startswith(b":"):
                continue  # heartbeat
            if not client.first_event.is_set():
                client.first_event.set()  # the current state, before any tick
                continue
            # Events "id: N\r\nevent: progress\r\ndata: …\r\n\r\n", one or several
            # per chunk (ticks waiting together go out in one write).
            for event in chunk.split(b"\r\n\r\n"):
                if event.startswith(b"id: ") and b"\r\nevent: progress\r\n" in event:
                    client.received.append((int(event[4 : event.index(b"\r\n")]), now))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        client.error = repr(exc)
        client.first_event.set()
    finally:
        if writer is not None:
            writer.close()


@dataclass
class Phase:
    clients: int
    delays_ms: list[float]
    complete: int
    published: int
    errors: list[str]
    rss_before: int
    rss_peak: int
    connect_seconds: float
    # CPU seconds while ticks flowed (publishing to drained): the gateway's, this bench's.
    gateway_cpu: float
    bench_cpu: float
    seconds: float


async def run_phase(
    *,
    clients: int,
    gateway: str,
    gateway_pid: int,
    path: str,
    token: str,
    bootstrap: str,
    org_id: uuid.UUID,
    backup_id: uuid.UUID,
    environment_id: uuid.UUID,
    rate: float,
    duration: float,
) -> Phase:
    host, port = gateway.removeprefix("http://").split(":")
    rss_before = rss_bytes(gateway_pid)
    followers = [Client() for _ in range(clients)]
    tasks: list[asyncio.Task[None]] = []
    connect_started = time.monotonic()
    for start in range(0, clients, CONNECT_BATCH):
        batch = followers[start : start + CONNECT_BATCH]
        tasks += [asyncio.create_task(follow(c, host, int(port), path, token)) for c in batch]
        async with asyncio.timeout(FIRST_EVENT_TIMEOUT_S):
            await asyncio.gather(*(c.first_event.wait() for c in batch))
    connect_seconds = time.monotonic() - connect_started
    errors = [c.error for c in followers if c.error]
    if errors:
        raise BenchError(f"{len(errors)} client(s) failed to connect, e.g. {errors[0]}")
    note(f"{clients} client(s) connected in {connect_seconds:.1f}s")

    peak = [rss_bytes(gateway_pid)]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.25):
            with contextlib.suppress(Exception):
                peak[0] = max(peak[0], rss_bytes(gateway_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    cpu_before = (cpu_seconds(gateway_pid), own_cpu_seconds(), time.monotonic())
    sent_at: dict[int, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        count = max(1, int(rate * duration))
        interval = 1.0 / rate
        next_at = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            tick = BackupProgress(
                backup_id=backup_id,
                environment_id=environment_id,
                status="running",
                phase="dumping",
                percent=round(100.0 * i / count, 1),
                bytes_done=i * 1_000_000,
                bytes_total=count * 1_000_000,
                at=utc_now(),
            )
            envelope = Envelope.wrap(
                tick,
                producer="bench",
                organization_id=org_id,
                environment_id=environment_id,
            )
            started = time.monotonic()
            metadata = await producer.send_and_wait(
                BACKUP_PROGRESS.name, envelope.to_bytes(), key=envelope.key
            )
            sent_at[metadata.offset + 1] = started
    finally:
        await producer.stop()

    wanted = sorted(sent_at)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(c.received and c.received[-1][0] >= wanted[-1] for c in followers):
            break
        await asyncio.sleep(0.1)
    gateway_cpu = cpu_seconds(gateway_pid) - cpu_before[0]
    bench_cpu = own_cpu_seconds() - cpu_before[1]
    seconds = time.monotonic() - cpu_before[2]
    stop_sampling.set()
    sampler.join(timeout=2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    delays: list[float] = []
    complete = 0
    for c in followers:
        ids = [i for i, _ in c.received]
        if ids == wanted:
            complete += 1
        delays += [(at - sent_at[i]) * 1000 for i, at in c.received if i in sent_at]
    return Phase(
        clients,
        delays,
        complete,
        len(wanted),
        [c.error for c in followers if c.error],
        rss_before,
        peak[0],
        connect_seconds,
        gateway_cpu,
        bench_cpu,
        seconds,
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


# --- set-up -----------------------------------------------------------------------------


def insert_running_backup(control_url: str, org_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """A backup in the gateway's read model, ``running`` (the gateway made the table)."""
    backup_id, environment_id = uuid.uuid4(), uuid.uuid4()
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(control_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO gateway.backups (id, organization_id, project_id, "
                    "environment_id, type, trigger, status, created_at, started_at) "
                    "VALUES (%s, %s, %s, %s, 'db', 'manual', 'running', now(), now())",
                    (backup_id, org_id, uuid.uuid4(), environment_id),
                )
            return backup_id, environment_id
        except psycopg.errors.UndefinedTable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_streaming(gateway: str, path: str, token: str) -> None:
    """Until the gateway's progress tail follows Kafka (its stream answers 200)."""
    deadline = time.monotonic() + 120
    while True:
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "GET", f"{gateway}{path}", headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            if response.status_code == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"the progress stream still answers {response.status_code}")
        time.sleep(0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--rate", type=float, default=5.0, help="ticks per second (default 5)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of ticks per phase (default 20)"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--clients >= 1, --rate > 0, --duration > 0")
    return args


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    limit = raise_file_limit(2 * args.clients + 500)
    note(f"RLIMIT_NOFILE {limit}")
    root = state_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)

    admin_url, _ = postgres(root, cleanup)
    bootstrap, _ = kafka(root, cleanup)

    control_db = f"tidemark_bench_sse_{uuid.uuid4().hex[:8]}"
    control_url = create_database_at(admin_url, control_db)
    deferred(
        cleanup, f"drop database {control_db}", lambda: drop_database_at(admin_url, control_db)
    )
    jwt_secret = secrets.token_urlsafe(32)
    stack = Stack(
        database_url=control_url,
        kafka_bootstrap=bootstrap,
        jwt_secret=jwt_secret,
        log_dir=root / "logs" / control_db,
        gateway_port=free_port(),
        extra_env={"TIDEMARK_API_GATEWAY_EXPECTED_SERVICES": "[]"},
    )
    note(f"starting the gateway alone (logs in {stack.log_dir}) ...")
    stack.start(only="api-gateway")
    deferred(cleanup, "stop the gateway", stack.stop)
    stack.wait_ready(timeout=180)
    gateway = stack.gateway_url
    gateway_pid = stack.service("api-gateway").process.pid

    org_id = uuid.uuid4()
    token = make_token(org_id, secret=jwt_secret, expires_in=24 * 3600)
    backup_id, environment_id = insert_running_backup(control_url, org_id)
    path = f"/api/v1/backups/{backup_id}/progress"
    wait_streaming(gateway, path, token)
    note(f"gateway {gateway} (pid {gateway_pid}) streams backup {backup_id}")

    phases = {}
    for clients in (1, args.clients):
        note(f"phase: {clients} client(s), {args.rate}/s ticks for {args.duration}s")
        phases[clients] = asyncio.run(
            run_phase(
                clients=clients,
                gateway=gateway,
                gateway_pid=gateway_pid,
                path=path,
                token=token,
                bootstrap=bootstrap,
                org_id=org_id,
                backup_id=backup_id,
                environment_id=environment_id,
                rate=args.rate,
                duration=args.duration,
            )
        )
    report(phases[1], phases[args.clients], args)


def report(base: Phase, many: Phase, args: argparse.Namespace) -> None:
    p50, p99 = percentile(many.delays_ms, 0.50), percentile(many.delays_ms, 0.99)
    b50, b99 = percentile(base.delays_ms, 0.50), percentile(base.delays_ms, 0.99)
    verdict = "PASS" if p99 <= P99_TARGET_MS else "FAIL"
    print(
        f"{PREFIX} delay p50={p50:.1f}ms p99={p99:.1f}ms (clients={many.clients}, "
        f"ticks={many.published}, rate={args.rate:g}/s, samples={len(many.delays_ms)}) "
        f"target p99<={P99_TARGET_MS:.0f}ms {verdict}",
        flush=True,
    )
    verdict = "PASS" if many.complete == many.clients else "FAIL"
    print(
        f"{PREFIX} complete={many.complete}/{many.clients} clients got every tick "
        f"({many.published}) once and in order target=all {verdict}",
        flush=True,
    )
    per_client = (many.rss_peak - many.rss_before) / many.clients
    print(
        f"{PREFIX} rss gateway peak={many.rss_peak / 2**20:.1f}MiB "
        f"(before clients {many.rss_before / 2**20:.1f}MiB, "
        f"{per_client / 1024:.1f}KiB per client)",
        flush=True,
    )
    print(
        f"{PREFIX} baseline 1 client p50={b50:.1f}ms p99={b99:.1f}ms; "
        f"ratio p99({many.clients})/p99(1)={p99 / b99:.2f} "
        f"complete={base.complete}/1",
        flush=True,
    )
    print(
        f"  connect: {many.clients} clients in {many.connect_seconds:.1f}s; "
        f"max delay {max(many.delays_ms, default=float('nan')):.1f}ms; "
        f"load average {os.getloadavg()[0]:.2f}; errors {len(many.errors)}",
        flush=True,
    )
    for phase in (base, many):
        print(
            f"  cpu with {phase.clients} client(s): gateway {phase.gateway_cpu:.1f}s, "
            f"bench clients {phase.bench_cpu:.1f}s over {phase.seconds:.1f}s of ticks",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
