"""How soon does a failed backup become a listed alert and a delivered webhook, at scale?

``--failures`` (10,000) failing backups across ``--environments`` (1,000) environments,
registered through the API in ``--projects`` projects of one organization, with one webhook
(every ``backup_failed`` change) to a receiver on loopback that checks each signature.

The failures are produced, not run: 10,000 real backups failing one after the other in the
backup-runner would take far too long on 2 cores. For each failing backup the bench
produces to ``backup.events`` what the runner's relay would (the ``backup.BackupRequested``
then the ``backup.BackupFailed`` contract events, keyed by environment), round-robin over
the environments, as fast as the producer goes (a burst). So this measures the alerts path
from the ``Failed`` event on (alerts service, ``alert.events``, the gateway's projection and
API, the webhook deliverer), not the runner.

Figures, one summary line each (``alerts: …``), over every failure:

- ``listed``: p50/p99 from the moment the bench hands the ``BackupFailed`` to its producer
  to the first ``GET /api/v1/backups/alerts`` (every page, polled in a loop) that shows it:
  the k-th failure of an environment is shown when that environment's alert shows
  ``occurrences >= k`` (one alert per environment: the first failure raises it, the others
  repeat it).
- ``webhook``: p50/p99 from the same moment to the receiver having read the delivery of
  that change (``alert.raised``, or ``alert.repeated`` with ``occurrences = k``).
- ``baseline``: p50/p99 of a plain Kafka produce → consume (aiokafka, the same producer
  settings) of the same events in the same run, to a topic of the bench's own.
- ``ratio`` lines: each figure over the baseline.

Everything runs on this machine: PostgreSQL and Kafka from ``DATABASE_URL`` /
``KAFKA_BOOTSTRAP_SERVERS`` when set, else local ones under ``.state/bench``; the gateway
and the alerts service (``tidemark_devstack.stack.Stack``; nothing else consumes
``backup.events``) on a fresh database. A failure that never shows within ``--timeout``
is counted as missing (printed); errors fail the process (exit 1; 130 on Ctrl-C).

Run: ``uv run python bench/alerts.py`` (``--environments 20 --failures 200`` for a small run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from harness import BenchError, deferred, kafka, note, postgres, run_bench
from tidemark_contracts import BACKUP_EVENTS, Envelope
from tidemark_contracts.backup import BackupFailed, BackupRequested, DestinationRef
from tidemark_contracts.webhooks import (
    SIGNATURE_HEADER,
    SignatureError,
    WebhookPayload,
    verify_signature,
)
from tidemark_devstack.e2e import make_token
from tidemark_devstack.paths import free_port, state_dir
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_devstack.stack import Stack

PREFIX = "alerts:"
ALERTS = "/api/v1/backups/alerts"
PAGE = 100  # the list's maximum limit
SIGNING_SECRET = "bench-alerts-signing-secret-0123456789"
FAILURE_MESSAGE = "bench: the backup failed (produced by bench/alerts.py)"
Change = tuple[str, int]  # (environment id, k): the k-th failure of that environment


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the webhook receiver ---------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver on loopback: notes when each change of a ``backup_failed``
    alert arrived (its first arrival), checking every signature."""

    received: dict[Change, float] = field(default_factory=dict)
    requests: int = 0
    bad_signatures: int = 0
    duplicates: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.monotonic()
                receiver.record(at, self.headers.get(SIGNATURE_HEADER), body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, at: float, signature: str | None, body: bytes) -> None:
        try:
            verify_signature(SIGNING_SECRET, signature, body)
            payload = WebhookPayload.model_validate_json(body)
        except (SignatureError, ValueError):
            with self.lock:
                self.requests += 1
                self.bad_signatures += 1
            return
        change: Change | None = None
        if payload.type in ("alert.raised", "alert.repeated"):
            change = (str(payload.alert.environment_id), payload.alert.occurrences)
        with self.lock:
            self.requests += 1
            if change is None:
                return
            if change in self.received:
                self.duplicates += 1
            else:
                self.received[change] = at

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/tidemark"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the alerts list, polled ------------------------------------------------------------


class Poller:
    """Reads every page of the organization's alerts in a loop, noting when each
    environment's alert first showed each occurrence count."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.listed: dict[Change, float] = {}
        self.cycles: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="poller")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def poll_once(self) -> None:
        started = time.monotonic()
        offset, total = 0, None
        while total is None or offset < total:
            response = self.client.get(
                ALERTS, params={"include_dismissed": "true", "limit": PAGE, "offset": offset}
            )
            if response.status_code != 200:
                self.errors += 1
                return
            body = response.json()
            at = time.monotonic()
            for alert in body["items"]:
                if alert["kind"] != "backup_failed" or alert["environmentId"] is None:
                    continue
                for k in range(1, int(alert["occurrences"]) + 1):
                    self.listed.setdefault((alert["environmentId"], k), at)
            total = int(body["total"])
            offset += PAGE
        self.cycles.append(time.monotonic() - started)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(0.2)


# -- producing the failures -------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    change: Change
    requested: Envelope
    failed: Envelope


def failures(
    organization: uuid.UUID,
    environments: list[dict[str, Any]],
    destination: DestinationRef,
    count: int,
) -> list[Failure]:
    """``count`` failing backups, round-robin over ``environments``."""
    made = []
    for n in range(count):
        environment = environments[n % len(environments)]
        env_id = uuid.UUID(environment["id"])
        backup_id = uuid.uuid4()
        now = datetime.now(UTC)
        requested = BackupRequested(
            backup_id=backup_id,
            organization_id=organization,
            project_id=uuid.UUID(environment["projectId"]),
            environment_id=env_id,
            type="db",
            trigger="manual",
            requested_by="bench",
            requested_at=now,
            destinations=[destination],
        )
        failed = BackupFailed(
            backup_id=backup_id, environment_id=env_id, error=FAILURE_MESSAGE, failed_at=now
        )
        wrap = {
            "producer": "backup-runner",
            "organization_id": organization,
            "environment_id": env_id,
            "aggregate_id": backup_id,
        }
        made.append(
            Failure(
                (str(env_id), n // len(environments) + 1),
                Envelope.wrap(requested, aggregate_version=1, **wrap),
                Envelope.wrap(failed, aggregate_version=2, **wrap),
            )
        )
    return made


def producer(bootstrap: str) -> AIOKafkaProducer:
    # The platform's producer settings: idempotent, every replica acknowledges.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )


async def produce(
    bootstrap: str, topic: str, batch: list[Failure], failures_only: bool = False
) -> dict[Change, float]:
    """Send every failure (its Requested first, unless ``failures_only``); the time each
    ``BackupFailed`` was handed to the producer."""
    sent: dict[Change, float] = {}
    kafka_producer = producer(bootstrap)
    await kafka_producer.start()
    try:
        pending = []
        for failure in batch:
            if not failures_only:
                pending.append(
                    await kafka_producer.send(
                        topic, failure.requested.to_bytes(), key=failure.requested.key
                    )
                )
            sent[failure.change] = time.monotonic()
            pending.append(
                await kafka_producer.send(topic, failure.failed.to_bytes(), key=failure.failed.key)
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await kafka_producer.stop()
    return sent


async def baseline(bootstrap: str, batch: list[Failure], wait_seconds: float) -> list[float]:
    """Plain Kafka: the same events produced to a new topic of the bench's own, read by a
    plain consumer; the delay of every ``BackupFailed``, produce to consume."""
    topic = f"bench.alerts.baseline.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=BACKUP_EVENTS.partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    by_id = {f.failed.message_id: f.change for f in batch}
    consumed: dict[Change, float] = {}
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=topic
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise BenchError("the baseline consumer got no partitions")
            await consumer.getmany(timeout_ms=200)

        async def consume() -> None:
            while len(consumed) < len(batch):
                records = await consumer.getmany(timeout_ms=500)
                at = time.monotonic()
                for items in records.values():
                    for record in items:
                        envelope = Envelope.from_bytes(record.value or b"")
                        change = by_id.get(envelope.message_id)
                        if change is not None:
                            consumed.setdefault(change, at)

        reader = asyncio.create_task(consume())
        sent = await produce(bootstrap, topic, batch)
        try:
            await asyncio.wait_for(reader, wait_seconds)
        except TimeoutError as exc:
            raise BenchError(f"the baseline consumer read {len(consumed)} of {len(batch)}") from exc
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()
    return [consumed[c] - sent[c] for c in sent]


# -- the measurement --------------------------------------------------------------------


@dataclass
class Result:
    failures: int
    environments: int
    listed: list[float]
    delivered: list[float]
    baseline: list[float]
    missing_listed: int
    missing_delivered: int
    bad_signatures: int
    duplicate_deliveries: int
    webhook_requests: int
    produce_seconds: float
    setup_seconds: float
    poll_cycle_p50: float
    poll_errors: int


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise BenchError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def register(
    client: httpx.Client, environments: int, projects: int, receiver: Receiver
) -> tuple[list[dict[str, Any]], dict[str, Any], DestinationRef]:
    """Through the API: the webhook, a destination, the projects and ``environments`` + 1
    environments (the last one is the probe's)."""
    for name, value in (("bench-db", "unused-password"), ("bench-hook", SIGNING_SECRET)):
        expect(client.post("/api/v1/secrets", json={"name": name, "value": value}), 201)
    expect(
        client.post(
            "/api/v1/webhooks",
            json={
                "url": receiver.url,
                "signingSecretRef": "secret:bench-hook",
                "kinds": ["backup_failed"],
            },
        ),
        201,
    )
    destination = expect(
        client.post(
            "/api/v1/destinations",
            json={"name": "bench", "type": "local", "config": {"path": "bench"}, "isDefault": True},
        ),
        201,
    )
    project_ids = [
        expect(client.post("/api/v1/projects", json={"name": f"bench-{n}"}), 201)["id"]
        for n in range(projects)
    ]

    def environment(n: int) -> dict[str, Any]:
        body = {
            "name": f"env-{n}",
            "database": {
                "host": "db.bench.invalid",
                "port": 5432,
                "dbname": f"shop_{n}",
                "user": "backup",
                "passwordRef": "secret:bench-db",
            },
        }
        project = project_ids[n % len(project_ids)]
        return expect(client.post(f"/api/v1/projects/{project}/environments", json=body), 201)

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(environment, range(environments + 1)))
    ref = DestinationRef(
        destination_id=uuid.UUID(destination["id"]), name=destination["name"], type="local"
    )
    return made[:-1], made[-1], ref


def wait_for(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def measure(
    gateway_url: str,
    token: str,
    bootstrap: str,
    *,
    environments: int,
    failures_count: int,
    projects: int,
    timeout: float,
) -> Result:
    """The whole measurement against a running gateway and alerts service, in the
    organization of ``token`` (which must have no alerts yet)."""
    started = time.monotonic()
    receiver = Receiver()
    client = httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0
    )
    try:
        envs, probe_env, destination = register(client, environments, projects, receiver)
        organization = uuid.UUID(envs[0]["organizationId"])
        note(
            f"registered {len(envs)} environments in {projects} project(s), webhook {receiver.url}"
        )

        # The probe: one failure of an environment of its own, registered last, listed and
        # delivered before anything is measured (the catalog has reached the alerts
        # service, the webhook is known, whatever the topics held before is consumed).
        [probe] = failures(organization, [probe_env], destination, 1)
        asyncio.run(produce(bootstrap, BACKUP_EVENTS.name, [probe]))
        poller = Poller(client)
        wait_for(
            "the probe's alert",
            lambda: (poller.poll_once(), probe.change in poller.listed)[1],
            timeout,
        )
        wait_for("the probe's webhook", lambda: probe.change in receiver.received, timeout)
        poller.listed.clear()
        setup_seconds = time.monotonic() - started
        note(f"probe listed and delivered; setup took {setup_seconds:.1f}s")

        batch = failures(organization, envs, destination, failures_count)
        note(f"baseline: {len(batch)} failures through plain Kafka")
        base = asyncio.run(
            baseline(bootstrap, failures(organization, envs, destination, len(batch)), timeout)
        )

        note(f"measured run: {len(batch)} failures to {BACKUP_EVENTS.name}")
        poller.start()
        produce_started = time.monotonic()
        sent = asyncio.run(produce(bootstrap, BACKUP_EVENTS.name, batch))
        produce_seconds = time.monotonic() - produce_started
        note(f"produced in {produce_seconds:.1f}s; waiting for the alerts and webhooks")
        deadline = time.monotonic() + timeout
        last_note = 0.0
        while time.monotonic() < deadline:
            listed = sum(1 for c in sent if c in poller.listed)
            with receiver.lock:
                delivered = sum(1 for c in sent if c in receiver.received)
            if listed == len(sent) and delivered == len(sent):
                break
            if time.monotonic() - last_note > 10:
                note(f"listed {listed}/{len(sent)}, delivered {delivered}/{len(sent)}")
                last_note = time.monotonic()
            time.sleep(0.5)
        poller.stop()
        with receiver.lock:
            received = dict(receiver.received)
        return Result(
            failures=len(sent),
            environments=len(envs),
            listed=[poller.listed[c] - t for c, t in sent.items() if c in poller.listed],
            delivered=[received[c] - t for c, t in sent.items() if c in received],
            baseline=base,
            missing_listed=sum(1 for c in sent if c not in poller.listed),
            missing_delivered=sum(1 for c in sent if c not in received),
            bad_signatures=receiver.bad_signatures,
            duplicate_deliveries=receiver.duplicates,
            webhook_requests=receiver.requests,
            produce_seconds=produce_seconds,
            setup_seconds=setup_seconds,
            poll_cycle_p50=percentile(poller.cycles, 0.5),
            poll_errors=poller.errors,
        )
    finally:
        client.close()
        receiver.close()


def report_lines(result: Result) -> list[str]:
    def pair(values: list[float]) -> tuple[float, float]:
        return percentile(values, 0.5), percentile(values, 0.99)

    l50, l99 = pair(result.listed)
    w50, w99 = pair(result.delivered)
    b50, b99 = pair(result.baseline)
    return [
        f"{PREFIX} listed p50={l50:.3f}s p99={l99:.3f}s (failures={result.failures}, "
        f"environments={result.environments}, listed={len(result.listed)}/{result.failures}, "
        f"poll cycle p50={result.poll_cycle_p50:.3f}s)",
        f"{PREFIX} webhook p50={w50:.3f}s p99={w99:.3f}s "
        f"(delivered={len(result.delivered)}/{result.failures}, "
        f"bad signatures={result.bad_signatures}, duplicates={result.duplicate_deliveries})",
        f"{PREFIX} baseline kafka produce->consume p50={b50 * 1000:.1f}ms "
        f"p99={b99 * 1000:.1f}ms (events={len(result.baseline)})",
        f"{PREFIX} ratio listed/baseline p50={l50 / b50:.1f} p99={l99 / b99:.1f}",
        f"{PREFIX} ratio webhook/baseline p50={w50 / b50:.1f} p99={w99 / b99:.1f}",
        f"  produced {result.failures} failures (x2 events) in {result.produce_seconds:.1f}s; "
        f"setup {result.setup_seconds:.1f}s; missing listed={result.missing_listed} "
        f"delivered={result.missing_delivered}; webhook requests {result.webhook_requests}; "
        f"poll errors {result.poll_errors}; load average {os.getloadavg()[0]:.2f}",
    ]


# -- running it on its own --------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--environments", type=int, default=1000)
    parser.add_argument("--failures", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds to wait for every alert"
    )
    args = parser.parse_args(argv)
    if args.environments < 1 or args.failures < 1 or args.projects < 1:
        parser.error("--environments, --failures and --projects must be >= 1")
    return args


@contextlib.contextmanager
def running_stack(cleanup: contextlib.ExitStack) -> Iterator[tuple[Stack, str]]:
    root = state_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    admin_url, _ = postgres(root, cleanup)
    bootstrap, _ = kafka(root, cleanup)
    control_db = f"tidemark_bench_alerts_{uuid.uuid4().hex[:8]}"
    control_url = create_database_at(admin_url, control_db)
    deferred(
        cleanup, f"drop database {control_db}", lambda: drop_database_at(admin_url, control_db)
    )
    stack = Stack(
        database_url=control_url,
        kafka_bootstrap=bootstrap,
        jwt_secret=secrets.token_urlsafe(32),
        log_dir=root / "logs" / control_db,
        gateway_port=free_port(),
        extra_env={
            "TIDEMARK_API_GATEWAY_EXPECTED_SERVICES": '["alerts"]',
            "TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS": "127.0.0.1",
        },
    )
    note(f"starting the gateway and the alerts service (logs in {stack.log_dir}) ...")
    stack.start(only="api-gateway")
    stack.start(only="alerts")
    deferred(cleanup, "stop the services", stack.stop)
    stack.wait_ready(timeout=180)
    yield stack, bootstrap


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    with running_stack(cleanup) as (stack, bootstrap):
        token = make_token(uuid.uuid4(), secret=stack.jwt_secret, expires_in=24 * 3600)
        result = measure(
            stack.gateway_url,
            token,
            bootstrap,
            environments=args.environments,
            failures_count=args.failures,
            projects=args.projects,
            timeout=args.timeout,
        )
    for line in report_lines(result):
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
