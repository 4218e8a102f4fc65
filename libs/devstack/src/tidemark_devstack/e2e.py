"""Helpers for driving a running Tidemark over HTTP: tokens, a client, data fingerprints."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_contracts import BACKUP_COMMANDS, Envelope, utc_now
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget, RequestBackup

JWT_SECRET = "e2e-secret-that-is-long-enough-for-hs256-0123456789"
SOURCE_PASSWORD = "s3cret-source-Pa55word"
SOURCE_SECRET = "source-password"
SOURCE_PASSWORD_REF = f"secret:{SOURCE_SECRET}"
TERMINAL = ("completed", "failed")
# What a test token may do unless a test says otherwise: the gateway grants nothing to a
# token without a scope claim.
FULL_SCOPE = "backups:read backups:write"


def make_token(
    org_id: uuid.UUID | str,
    *,
    sub: str = "e2e-user",
    expires_in: int = 3600,
    secret: str = JWT_SECRET,
    scope: str | None = FULL_SCOPE,
    **claims: Any,
) -> str:
    """An HS256 token for ``org_id``; ``scope=None`` mints one without a scope claim."""
    payload: dict[str, Any] = {
        "sub": sub,
        "org_id": str(org_id),
        "exp": int(time.time()) + expires_in,
    }
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def backup_request(
    *,
    organization_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    environment_id: uuid.UUID | None = None,
    database: DatabaseTarget | None = None,
    destinations: list[DestinationTarget] | None = None,
    requested_by: str = "t",
) -> RequestBackup:
    """A valid ``db`` backup request, for tests: new ids and a local destination unless
    given. Nothing is reachable through its defaults (its destination's path is absolute,
    which runners refuse)."""
    return RequestBackup(
        backup_id=uuid.uuid4(),
        organization_id=organization_id or uuid.uuid4(),
        project_id=project_id or uuid.uuid4(),
        environment_id=environment_id or uuid.uuid4(),
        type="db",
        trigger="manual",
        requested_by=requested_by,
        requested_at=utc_now(),
        database=database or DatabaseTarget(host="127.0.0.1", port=1, dbname="d", user="u"),
        destinations=destinations
        or [DestinationTarget.of(uuid.uuid4(), "n", "local", {"path": "/nonexistent"})],
    )


@dataclass
class Api:
    """An HTTP client of one organization, with the few steps every test repeats."""

    client: httpx.Client
    org_id: uuid.UUID
    destination_root: Path | None = None
    """The stack's root of local destinations, when the test can see it."""

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.delete(path, **kwargs)

    def project(self, name: str | None = None) -> dict[str, Any]:
        response = self.post("/api/v1/projects", json={"name": name or f"p-{uuid.uuid4().hex[:8]}"})
        assert response.status_code == 201, response.text
        resource: dict[str, Any] = response.json()
        return resource

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.put(path, **kwargs)

    def secret(self, name: str, value: str) -> str:
        """Store (or replace) the organization's secret ``name``; returns its reference."""
        response = self.post("/api/v1/secrets", json={"name": name, "value": value})
        if response.status_code == 409:
            response = self.put(f"/api/v1/secrets/{name}", json={"value": value})
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 201, response.text
        return f"secret:{name}"

    def environment(
        self, database_url: str, password_ref: str | None = SOURCE_PASSWORD_REF
    ) -> dict[str, Any]:
        """A new project with one environment on ``database_url``; by default its password
        is the organization's stored secret ``source-password`` (stored here)."""
        if password_ref == SOURCE_PASSWORD_REF:
            self.secret(SOURCE_SECRET, SOURCE_PASSWORD)
        project = self.project()
        info = conninfo_to_dict(database_url)
        body = {
            "name": "production",
            "database": {
                "host": info["host"],
                "port": int(str(info["port"])),
                "dbname": info["dbname"],
                "user": info["user"],
                "passwordRef": password_ref,
            },
        }
        response = self.post(f"/api/v1/projects/{project['id']}/environments", json=body)
        assert response.status_code == 201, response.text
        resource: dict[str, Any] = response.json()
        return resource

    def destination(self, path: str = "backups", *, is_default: bool = True) -> dict[str, Any]:
        """Register a local destination at ``path`` (relative to the organization's
        directory under the stack's destination root)."""
        body = {
            "name": f"local-{uuid.uuid4().hex[:8]}",
            "type": "local",
            "config": {"path": path},
            "isDefault": is_default,
        }
        response = self.post("/api/v1/destinations", json=body)
        assert response.status_code == 201, response.text
        resource: dict[str, Any] = response.json()
        return resource

    @property
    def organization_directory(self) -> Path:
        """``<root>/<organization id>``: every local destination of this organization."""
        assert self.destination_root is not None, "the stack has no destination root"
        return self.destination_root / str(self.org_id)

    def directory(self, destination: dict[str, Any]) -> Path:
        """Where the runner writes the local ``destination`` (as the API returned it)."""
        return self.organization_directory / str(destination["config"]["path"])

    def request_backup(self, env_id: str, **body: Any) -> httpx.Response:
        return self.post(f"/api/v1/environments/{env_id}/backups", json={"type": "db", **body})

    def completed_backup(
        self, environment: dict[str, Any], timeout: float = 120.0, **body: Any
    ) -> dict[str, Any]:
        """A backup of ``environment`` requested and waited for: it must complete."""
        accepted = self.request_backup(environment["id"], **body)
        assert accepted.status_code == 202, accepted.text
        backup = self.wait_for(accepted.json()["id"], timeout=timeout)
        assert backup["status"] == "completed", backup
        return backup

    def backup_command(
        self, environment: dict[str, Any], destination: dict[str, Any]
    ) -> RequestBackup:
        """The command the gateway would issue for a ``db`` backup of ``environment`` into
        ``destination`` (both as the API returned them), for tests that go around it."""
        return backup_request(
            organization_id=self.org_id,
            project_id=uuid.UUID(environment["projectId"]),
            environment_id=uuid.UUID(environment["id"]),
            database=DatabaseTarget.model_validate(environment["database"]),
            destinations=[
                DestinationTarget.of(
                    destination["id"],
                    destination["name"],
                    destination["type"],
                    destination["config"],
                )
            ],
            requested_by="e2e",
        )

    def wait_for(
        self,
        backup_id: str,
        statuses: tuple[str, ...] = TERMINAL,
        timeout: float = 90.0,
        *,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """Poll until the backup reaches one of ``statuses``. With ``missing_ok`` a 404 means
        "not projected yet" (a command that did not come through this gateway)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.get(f"/api/v1/backups/{backup_id}")
            if missing_ok and response.status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            assert response.status_code == 200, response.text
            backup: dict[str, Any] = response.json()
            if backup["status"] in statuses:
                return backup
            assert time.monotonic() < deadline, f"backup still {backup['status']}: {backup}"
            time.sleep(0.2)


SOURCE_SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, created_at timestamptz);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total numeric(12, 2) NOT NULL,
    note text
);
INSERT INTO customers
    SELECT g, 'user' || g || '@example.com', '2026-01-01'::timestamptz + g * interval '1 minute'
    FROM generate_series(1, 2000) g;
INSERT INTO orders
    SELECT g, 1 + g % 2000, (g * 7.31)::numeric(12, 2), repeat(md5(g::text), 1 + g % 5)
    FROM generate_series(1, 10000) g;
"""


def table_fingerprints(url: str) -> dict[str, tuple[int, str]]:
    """Row count and a digest of all rows, per table: equal fingerprints, equal data."""
    fingerprints = {}
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(table))
            rows = conn.execute(query).fetchall()
            digest = hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()
            fingerprints[table] = (len(rows), digest)
    return fingerprints


async def publish(bootstrap: str, envelope: Envelope, topic: str = BACKUP_COMMANDS.name) -> None:
    """Write one envelope to ``topic`` as an outside client would (not through a service)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, envelope.to_bytes(), key=envelope.key)
    finally:
        await producer.stop()


def dead_letters_counted(metrics: str, reason: str) -> float:
    """How many backup commands the runner parked for ``reason``, from its ``/metrics``."""
    labels = f'reason="{reason}",service="backup-runner",topic="backup.commands"'
    for line in metrics.splitlines():
        if line.startswith(f"tidemark_dead_letters_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def send_backup_command(
    bootstrap: str, command: RequestBackup, correlation_id: uuid.UUID | None = None
) -> Envelope:
    """Put ``command`` on backup.commands around the gateway, in its organization's name
    (any client of Kafka could); returns the envelope sent."""
    envelope = Envelope.wrap(
        command,
        producer="e2e",
        organization_id=command.organization_id,
        environment_id=command.environment_id,
        correlation_id=correlation_id,
    )
    asyncio.run(publish(bootstrap, envelope))
    return envelope


async def topic_records(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``, read to the end offsets it had when the call began.

    Reading to known end offsets (not "until nothing came for a while") is what makes
    "this message is not there" a positive statement.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Without names: asking for a missing topic by name would create it.
        described = [t for t in await admin.describe_topics() if t["topic"] == topic]
    finally:
        await admin.close()
    if not described:
        return []
    partitions = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


def full_environment(
    api: Api,
    database_url: str,
    cluster: dict[str, Any] | None,
    *,
    files_path: str | None = None,
    password_ref: str | None = SOURCE_PASSWORD_REF,
) -> httpx.Response:
    """Register (in a new project) an environment on ``database_url`` with its own
    ``cluster`` and ``files_path`` (relative to the organization's directory under the
    runners' files root): what a ``full`` backup needs. Returns the gateway's answer."""
    if password_ref == SOURCE_PASSWORD_REF:
        api.secret(SOURCE_SECRET, SOURCE_PASSWORD)
    project = api.project()
    info = conninfo_to_dict(database_url)
    body: dict[str, Any] = {
        "name": "production",
        "database": {
            "host": info["host"],
            "port": int(str(info["port"])),
            "dbname": info["dbname"],
            "user": info["user"],
            "passwordRef": password_ref,
        },
        "cluster": cluster,
        "filesPath": files_path,
    }
    return api.post(f"/api/v1/projects/{project['id']}/environments", json=body)
