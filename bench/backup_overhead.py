"""How much slower is a Tidemark ``db`` backup than a plain ``pg_dump | zstd``?

Generates a PostgreSQL database of a few hundred MB, starts Tidemark (every service, as
child processes), then alternates, for ``--rounds`` rounds::

    pg_dump -Fc | zstd            (baseline "pgdump_Fc_zstd")
    Tidemark db backup            (POST .../backups, 202 ... completed)
    pg_dump -Fc --compress=0 | zstd  (baseline "pgdump_Z0_zstd": Tidemark's work minus Tidemark)
    Tidemark db backup
    pg_dump -Fc --compress=0 > /dev/null  (diagnostic: the dump alone)

and prints the ratio of the medians, Tidemark over each baseline. The first summary line
says PASS/FAIL against the target (1.15); missing the target does not fail the process,
errors do (exit 1; 130 on Ctrl-C). See bench/README.md.

Run: ``uv run python bench/backup_overhead.py --rounds 3``
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import re
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import jwt
import psycopg
import zstandard
from harness import BenchError, deferred, kafka, note, postgres, run_bench
from tidemark_devstack.kafka import LocalKafka
from tidemark_devstack.paths import free_port, state_dir
from tidemark_devstack.postgres import LocalPostgres, create_database_at, drop_database_at
from tidemark_devstack.stack import Stack

PREFIX = "backup_overhead:"
TARGET_RATIO = 1.15
BENCH_DB = "tidemark_bench_data"
# Bumped whenever the generated schema or data changes, so a kept database is rebuilt.
GENERATOR_VERSION = 1
# ~300 MB on disk (pg_database_size) with PostgreSQL 15: about 182 bytes per order row,
# indexes and the customers table included.
DEFAULT_ORDER_ROWS = 1_650_000
MIN_FREE_BYTES = 5 * 2**30
BACKUP_TIMEOUT_S = 1800.0
SETTLE_S = 0.3
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 2**20

FC_ZSTD = "pgdump_Fc_zstd"
Z0_ZSTD = "pgdump_Z0_zstd"
Z0_NULL = "pgdump_Z0_devnull"
TIDEMARK = "tidemark"
# The `full` figure: Tidemark's full backup against pg_basebackup | zstd of the same cluster.
BB_ZSTD = "pg_basebackup_zstd"
TIDEMARK_FULL = "tidemark_full"


def mib(n: float) -> str:
    return f"{n / MIB:.1f}MB"


# --- the database under test ----------------------------------------------------------


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    dbname: str
    user: str
    password: str

    @classmethod
    def from_url(cls, url: str) -> Database:
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            dbname=unquote(parts.path.lstrip("/")),
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
        )

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
            autocommit=True,
        )

    def pg_dump_args(self) -> list[str]:
        return [
            "--no-password",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--username={self.user}",
            f"--dbname={self.dbname}",
        ]

    def env(self) -> dict[str, str]:
        """The environment for pg_dump: as the backup-runner builds it (no PG* leaks in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGCONNECT_TIMEOUT="10", PGAPPNAME="tidemark-bench", PGPASSWORD=self.password)
        return env


# Vocabulary for the free-text columns (compresses like real notes, unlike md5 noise).
_WORDS = (  # noqa: SIM905
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray "
    "yankee zulu invoice shipment refund pending delivered warehouse customer "
    "priority express standard returned damaged replacement discount coupon gift "
    "wrap fragile handle care morning evening weekend holiday"
).split()


def _word() -> str:
    array = "ARRAY[" + ",".join(f"'{w}'" for w in _WORDS) + "]"
    return f"({array})[1 + floor(random() * {len(_WORDS)})::int]"


def _generation_sql(order_rows: int) -> list[str]:
    customers = max(1, order_rows // 10)
    note_text = " || ' ' || ".join(_word() for _ in range(6))
    return [
        "SELECT setseed(0.42)",
        """CREATE TABLE customers (
            id integer PRIMARY KEY,
            name text NOT NULL,
            email text NOT NULL,
            country char(2) NOT NULL,
            created_at timestamptz NOT NULL,
            balance numeric(12, 2) NOT NULL)""",
        f"""INSERT INTO customers
            SELECT i,
                   initcap({_word()}) || ' ' || initcap({_word()}),
                   'user' || i || '@'
                       || (ARRAY['example.com', 'mail.test', 'corp.example'])[1 + i % 3],
                   (ARRAY['US', 'DE', 'FR', 'GB', 'JP', 'BR', 'IN', 'NL'])
                       [1 + floor(random() * 8)::int],
                   timestamptz '2020-01-01' + random() * interval '1500 days',
                   round((random() * 10000)::numeric, 2)
            FROM generate_series(1, {customers}) AS i""",
        """CREATE TABLE orders (
            id bigint PRIMARY KEY,
            customer_id integer NOT NULL,
            created_at timestamptz NOT NULL,
            status text NOT NULL,
            amount numeric(12, 2) NOT NULL,
            currency char(3) NOT NULL,
            sku text NOT NULL,
            note text)""",
        f"""INSERT INTO orders
            SELECT i,
                   1 + floor(random() * {customers})::int,
                   timestamptz '2021-01-01' + i * interval '17 seconds'
                       + random() * interval '1 hour',
                   (ARRAY['new', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'])
                       [1 + floor(random() * 6)::int],
                   round((random() * 500)::numeric, 2),
                   (ARRAY['USD', 'EUR', 'GBP', 'JPY'])[1 + floor(random() * 4)::int],
                   'SKU-' || lpad(floor(random() * 100000)::int::text, 6, '0'),
                   CASE WHEN random() < 0.7 THEN {note_text} END
            FROM generate_series(1, {order_rows}) AS i""",
        "CREATE INDEX orders_customer_created ON orders (customer_id, created_at)",
        "CREATE INDEX customers_email ON customers (email)",
        "CREATE TABLE bench_meta (generator_version integer NOT NULL, order_rows bigint NOT NULL)",
        f"INSERT INTO bench_meta VALUES ({GENERATOR_VERSION}, {order_rows})",
        # Hint bits set and statistics current: the first dump must not pay for them.
        "VACUUM (ANALYZE) customers",
        "VACUUM (ANALYZE) orders",
    ]


def _is_complete(db: Database, order_rows: int) -> bool:
    try:
        with db.connect() as conn:
            row = conn.execute("SELECT generator_version, order_rows FROM bench_meta").fetchone()
    except psycopg.Error:
        return False
    return row is not None and tuple(row) == (GENERATOR_VERSION, order_rows)


def prepare_database(admin_url: str, order_rows: int, fresh: bool) -> Database:
    """The bench database (a login role of the same name owns it), generated unless kept."""
    password = secrets.token_urlsafe(18)
    # REPLICATION: the same role takes the `full` figure's base backups.
    db = Database.from_url(create_database_at(admin_url, BENCH_DB, password, replication=True))
    if not fresh and _is_complete(db, order_rows):
        note(f"reusing the generated database {BENCH_DB} ({order_rows} order rows)")
        return db
    drop_database_at(admin_url, BENCH_DB)
    db = Database.from_url(create_database_at(admin_url, BENCH_DB, password, replication=True))
    note(f"generating {BENCH_DB}: {order_rows} orders, {order_rows // 10} customers ...")
    started = time.monotonic()
    with db.connect() as conn:
        conn.execute("SET synchronous_commit = off")
        for statement in _generation_sql(order_rows):
            conn.execute(statement)
    # Flush what generation dirtied, so no checkpoint runs during the first measurement.
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("CHECKPOINT")
    note(f"generated in {time.monotonic() - started:.1f}s")
    return db


def database_size(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def server_major(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def find_pg_bin(major: int) -> Path:
    """The client bin dir matching the server's major version, else the newest installed."""
    dirs = {
        int(m.group(1)): Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (m := re.search(r"/(\d+)/bin$", d)) and (Path(d) / "pg_dump").exists()
    }
    if major in dirs:
        return dirs[major]
    newer = [v for v in dirs if v >= major]
    if newer:
        return dirs[max(newer)]
    found = shutil.which("pg_dump")
    if found:
        return Path(found).resolve().parent
    raise BenchError(f"no pg_dump for PostgreSQL {major} (looked in /usr/lib/postgresql/*/bin)")


# --- CPU accounting (evidence of where time goes) -------------------------------------


def proc_cpu(pid: int | None) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process, from /proc; zeros if unknown."""
    if pid is None:
        return 0.0, 0.0
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is fields[0]; utime, stime, cutime, cstime are 11..14.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuProbe:
    """CPU used during a run by this process's children and by the named service pids."""

    pids: dict[str, int | None]
    _start: dict[str, tuple[float, float]] = field(default_factory=dict)
    _children: float = 0.0

    def __enter__(self) -> CpuProbe:
        self._children = children_cpu()
        self._start = {name: proc_cpu(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        # A finished dump's server backend is reaped by the postmaster a moment after
        # pg_dump exits; let that happen so its CPU lands in this run, not the next.
        time.sleep(SETTLE_S)
        self.delta: dict[str, float] = {"client-children": children_cpu() - self._children}
        for name, pid in self.pids.items():
            own, reaped = proc_cpu(pid)
            own0, reaped0 = self._start[name]
            self.delta[name] = own - own0
            self.delta[f"{name}+reaped"] = reaped - reaped0


# --- the runs ---------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    seconds: float
    size_bytes: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


def run_baseline(
    kind: str, db: Database, pg_bin: Path, out_dir: Path, pids: dict[str, int | None]
) -> Run:
    pg_dump = [str(pg_bin / "pg_dump"), "-Fc"]
    if kind in (Z0_ZSTD, Z0_NULL):
        pg_dump.append("--compress=0")
    pg_dump += db.pg_dump_args()
    out = out_dir / f"{kind}-{uuid.uuid4().hex[:8]}.pgdump.zst"
    if kind == Z0_NULL:
        with CpuProbe(pids) as probe:
            started = time.perf_counter()
            result = subprocess.run(
                pg_dump,
                env=db.env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            seconds = time.perf_counter() - started
    else:
        command = f"{shlex.join(pg_dump)} | zstd -q -o {shlex.quote(str(out))}"
        with CpuProbe(pids) as probe:
            started = time.perf_counter()
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                env=db.env(),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            seconds = time.perf_counter() - started
    if result.returncode != 0:
        out.unlink(missing_ok=True)
        raise BenchError(f"{kind} exited with {result.returncode}: {result.stderr.decode()[-800:]}")
    run = Run(kind, seconds, cpu=probe.delta)
    if kind != Z0_NULL:
        run.size_bytes = out.stat().st_size
        # Tidemark fsyncs its artifact before completing; the plain pipeline does not.
        # Not part of the measured time: reported so the difference can be judged.
        fsync_started = time.perf_counter()
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        run.extra["fsync_s"] = time.perf_counter() - fsync_started
        out.unlink()
    return run


def run_basebackup_baseline(
    db: Database, pg_bin: Path, out_dir: Path, pids: dict[str, int | None]
) -> Run:
    """``pg_basebackup -Ft -X fetch -D - | zstd`` of the cluster, with the fast checkpoint
    Tidemark asks for too (``basebackup.take_full_backup``): the same work, without it."""
    out = out_dir / f"{BB_ZSTD}-{uuid.uuid4().hex[:8]}.tar.zst"
    command = [
        str(pg_bin / "pg_basebackup"),
        "-Ft",
        "-X",
        "fetch",
        "-D",
        "-",
        "--checkpoint=fast",
        # A whole cluster: no --dbname (which pg_basebackup reads as a connection string).
        *[arg for arg in db.pg_dump_args() if not arg.startswith("--dbname=")],
    ]
    pipeline = f"{shlex.join(command)} | zstd -q -o {shlex.quote(str(out))}"
    with CpuProbe(pids) as probe:
        started = time.perf_counter()
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", pipeline],
            env=db.env(),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        out.unlink(missing_ok=True)
        raise BenchError(
            f"{BB_ZSTD} exited with {result.returncode}: {result.stderr.decode()[-800:]}"
        )
    run = Run(BB_ZSTD, seconds, size_bytes=out.stat().st_size, cpu=probe.delta)
    out.unlink()
    return run


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@dataclass
class TidemarkApi:
    client: httpx.Client
    environment_id: str
    poll_interval: float
    # The same database registered with its cluster: what a `full` backup needs.
    full_environment_id: str = ""
    local_destination_id: str = ""
    # None: the organization's default destinations (the local one).
    destination_ids: list[str] | None = None

    def backup(self, pids: dict[str, int | None], type: str = "db") -> tuple[Run, dict[str, Any]]:
        """One backup; the time is completedAt minus the client's clock at the 202."""
        environment_id = self.full_environment_id if type == "full" else self.environment_id
        with CpuProbe(pids) as probe:
            posted = time.time()
            body = {"type": type}
            if self.destination_ids is not None:
                body["destinationIds"] = self.destination_ids  # type: ignore[assignment]
            response = self.client.post(f"/api/v1/environments/{environment_id}/backups", json=body)
            accepted = time.time()
            if response.status_code != 202:
                raise BenchError(f"POST backup: {response.status_code} {response.text[:500]}")
            location = response.headers["location"]
            polls = 0
            while True:
                polls += 1
                got = self.client.get(location)
                seen = time.time()
                if got.status_code != 200:
                    raise BenchError(f"GET {location}: {got.status_code} {got.text[:500]}")
                body: dict[str, Any] = got.json()
                if body["status"] == "completed":
                    break
                if body["status"] == "failed":
                    raise BenchError(f"Tidemark backup {body['id']} failed: {body.get('error')}")
                if seen - accepted > BACKUP_TIMEOUT_S:
                    raise BenchError(f"backup {body['id']} not completed after {BACKUP_TIMEOUT_S}s")
                time.sleep(self.poll_interval)
        completed = parse_time(body["completedAt"])
        started = parse_time(body["startedAt"])
        kind = TIDEMARK_FULL if type == "full" else TIDEMARK
        run = Run(kind, completed - accepted, int(body["sizeBytes"]), cpu=probe.delta)
        run.extra = {
            "post_s": accepted - posted,
            "accept_to_start_s": started - accepted,
            "duration_s": body["durationMs"] / 1000,
            "complete_to_seen_s": seen - completed,
            "observed_s": seen - accepted,
            "polls": polls,
        }
        return run, body


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def check_artifact(
    body: dict[str, Any], artifacts: Path, pg_bin: Path, scratch: Path, full: bool
) -> int | None:
    """Verify size and checksum; with ``full``, decompress and ``pg_restore --list`` it.
    ``artifacts`` is the destination's directory, which locations are relative to.

    Returns the uncompressed (pg_dump) size when ``full``. The artifact is deleted after.
    """
    locations = [d.get("location") for d in body["destinations"]]
    if len(locations) != 1 or not locations[0]:
        raise BenchError(f"expected one stored location, got {body['destinations']}")
    artifact = artifacts / locations[0]
    try:
        on_disk = artifact.stat().st_size
        if on_disk != body["sizeBytes"]:
            raise BenchError(f"{artifact}: {on_disk} bytes, the API says {body['sizeBytes']}")
        if sha256_of(artifact) != body["checksum"]:
            raise BenchError(f"{artifact}: checksum differs from the API's {body['checksum']}")
        if not full:
            return None
        raw = scratch / "tidemark-artifact.pgdump"
        try:
            with artifact.open("rb") as src, raw.open("wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            listed = subprocess.run(
                [str(pg_bin / "pg_restore"), "--list", str(raw)],
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if listed.returncode != 0:
                raise BenchError(f"pg_restore --list failed: {listed.stderr.strip()[-800:]}")
            data = [line for line in listed.stdout.splitlines() if " TABLE DATA " in line]
            for table in ("orders", "customers"):
                if not any(line.split()[-2] == table for line in data):
                    raise BenchError(f"pg_restore --list shows no TABLE DATA for {table}")
            note(
                f"artifact OK: zstd decompresses to {mib(raw.stat().st_size)}, "
                f"pg_restore --list exit 0, {len(listed.stdout.splitlines())} TOC lines, "
                f"{len(data)} TABLE DATA entries"
            )
            return raw.stat().st_size
        finally:
            raw.unlink(missing_ok=True)
    finally:
        artifact.unlink(missing_ok=True)


def check_full_artifact(body: dict[str, Any], artifacts: Path) -> None:
    """Verify size and checksum of a `full` artifact, and that it is the archive a restore
    by hand expects (pgdata/ first, manifest.json last); the artifact is deleted after."""
    locations = [d.get("location") for d in body["destinations"]]
    if len(locations) != 1 or not locations[0]:
        raise BenchError(f"expected one stored location, got {body['destinations']}")
    artifact = artifacts / locations[0]
    try:
        if artifact.stat().st_size != body["sizeBytes"]:
            raise BenchError(f"{artifact}: size differs from the API's {body['sizeBytes']}")
        if sha256_of(artifact) != body["checksum"]:
            raise BenchError(f"{artifact}: checksum differs from the API's {body['checksum']}")
        if not (body.get("walStartLsn") and body.get("walEndLsn")):
            raise BenchError(f"full backup {body['id']} has no WAL range")
    finally:
        artifact.unlink(missing_ok=True)


# --- Tidemark itself --------------------------------------------------------------------


def make_token(secret: str, org_id: uuid.UUID) -> str:
    claims = {
        "sub": "bench",
        "org_id": str(org_id),
        "exp": int(time.time()) + 24 * 3600,
        "scope": "backups:read backups:write",  # the gateway grants nothing without one
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise BenchError(
            f"{response.request.method} {response.request.url.path}: expected {status}, "
            f"got {response.status_code} {response.text[:500]}"
        )
    body: dict[str, Any] = response.json()
    return body


def register(client: httpx.Client, db: Database, artifacts: str, poll: float) -> TidemarkApi:
    """Register the environment and a default local destination at ``artifacts`` (relative
    to the organization's directory under the destination root)."""
    suffix = uuid.uuid4().hex[:8]
    secret = f"bench-db-password-{suffix}"
    expect(client.post("/api/v1/secrets", json={"name": secret, "value": db.password}), 201)
    project = expect(client.post("/api/v1/projects", json={"name": f"bench-{suffix}"}), 201)
    environment = expect(
        client.post(
            f"/api/v1/projects/{project['id']}/environments",
            json={
                "name": "bench",
                "database": {
                    "host": db.host,
                    "port": db.port,
                    "dbname": db.dbname,
                    "user": db.user,
                    "passwordRef": f"secret:{secret}",
                },
            },
        ),
        201,
    )
    cluster = {"dataDirectory": "/unused", "binDirectory": "/unused", "port": db.port}
    full_environment = expect(
        client.post(
            f"/api/v1/projects/{project['id']}/environments",
            json={
                "name": "bench-full",
                "database": environment["database"],
                # Only registered: the runner reaches the cluster over the replication
                # protocol with the database's settings, and never runs its binaries.
                "cluster": cluster,
            },
        ),
        201,
    )
    local = expect(
        client.post(
            "/api/v1/destinations",
            json={
                "name": f"bench-local-{suffix}",
                "type": "local",
                "config": {"path": artifacts},
                "isDefault": True,
            },
        ),
        201,
    )
    return TidemarkApi(
        client, environment["id"], poll, full_environment["id"], local_destination_id=local["id"]
    )


# --- the S3 figure ----------------------------------------------------------------------


def s3_bench(
    api: TidemarkApi, rounds: int, pids: dict[str, int | None], cleanup: contextlib.ExitStack
) -> None:
    """The same db backup to an S3 destination (moto's server on loopback, or
    $TIDEMARK_TEST_S3_ENDPOINT) against one to the local destination, alternating; prints
    one summary line with the ratio of the medians. moto keeps objects in memory and
    answers from Python: the figure is Tidemark's S3 path plus moto, an upper bound."""
    import boto3
    from tidemark_devstack import s3

    endpoint = os.environ.get(s3.ENDPOINT_ENV)
    access = os.environ.get(s3.ACCESS_KEY_ENV, s3.MOTO_ACCESS_KEY)
    secret = os.environ.get(s3.SECRET_KEY_ENV, s3.MOTO_SECRET_KEY)
    if not endpoint:
        server = s3.MotoServer()
        endpoint = server.start()
        deferred(cleanup, "stop moto's S3 server", server.stop)
    note(f"S3: {endpoint}")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=s3.REGION,
    )
    bucket = f"tidemark-bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    suffix = uuid.uuid4().hex[:8]
    for name, value in ((f"bench-s3-ak-{suffix}", access), (f"bench-s3-sk-{suffix}", secret)):
        expect(api.client.post("/api/v1/secrets", json={"name": name, "value": value}), 201)
    destination = expect(
        api.client.post(
            "/api/v1/destinations",
            json={
                "name": f"bench-s3-{suffix}",
                "type": "s3",
                "config": {
                    "bucket": bucket,
                    "prefix": "bench",
                    "endpointUrl": endpoint,
                    "region": s3.REGION,
                    "accessKeyRef": f"secret:bench-s3-ak-{suffix}",
                    "secretKeyRef": f"secret:bench-s3-sk-{suffix}",
                },
                "isDefault": False,
            },
        ),
        201,
    )
    to_s3 = TidemarkApi(api.client, api.environment_id, api.poll_interval)
    to_s3.destination_ids = [destination["id"]]
    to_local = TidemarkApi(api.client, api.environment_id, api.poll_interval)
    to_local.destination_ids = [api.local_destination_id]
    runs: dict[str, list[Run]] = {"s3": [], "local": []}
    for round_no in range(1, rounds + 1):
        for kind, target in (("local", to_local), ("s3", to_s3)):
            run, body = target.backup(pids)
            runs[kind].append(run)
            note(f"S3 round {round_no}/{rounds} {kind}: {run.seconds:.2f}s {mib(run.size_bytes)}")
            if kind == "s3":
                [stored] = body["destinations"]
                key = f"bench/{stored['location']}"
                digest = hashlib.sha256()
                answer = client.get_object(Bucket=bucket, Key=key)["Body"]
                while chunk := answer.read(1 << 20):
                    digest.update(chunk)
                if f"sha256:{digest.hexdigest()}" != body["checksum"]:
                    raise BenchError(f"the S3 object {key} does not match the backup's checksum")
                # moto holds objects in memory: one at a time.
                client.delete_object(Bucket=bucket, Key=key)
    s3_med, local_med = median(runs["s3"]), median(runs["local"])
    print(
        f"{PREFIX} tidemark_s3_vs_local ratio={s3_med / local_med:.2f} (s3 median "
        f"{s3_med:.2f}s, local median {local_med:.2f}s, rounds={rounds}, artifact "
        f"{mib(median(runs['s3'], 'size_bytes'))}; S3 = moto on loopback unless "
        f"{s3.ENDPOINT_ENV} is set)",
        flush=True,
    )


# --- orchestration ----------------------------------------------------------------------


def postmaster_pid(local: LocalPostgres | None) -> int | None:
    if local is None:
        return None
    try:
        return int((local.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kafka_pid(local: LocalKafka | None) -> int | None:
    if local is None:
        return None
    try:
        return int(local.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def median(runs: list[Run], attr: str = "seconds") -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def median_extra(runs: list[Run], key: str) -> float:
    return statistics.median(r.extra[key] for r in runs)


def median_cpu(runs: list[Run], key: str) -> float:
    return statistics.median(r.cpu.get(key, 0.0) for r in runs)


def report(
    results: dict[str, list[Run]],
    *,
    rounds: int,
    db_bytes: int,
    raw_dump_bytes: int | None,
    poll: float,
    warmups: list[Run],
    load: tuple[float, float],
    wall: float,
    zstd_threads: int = 1,
) -> None:
    tidemark = results[TIDEMARK]
    t_med = median(tidemark)
    db_label = f"{db_bytes / MIB:.0f}MB"
    lines = []
    for kind, label in (
        (FC_ZSTD, "tidemark_vs_pgdump_Fc_zstd"),
        (Z0_ZSTD, "tidemark_vs_pgdump_Z0_zstd"),
    ):
        b_med = median(results[kind])
        ratio = t_med / b_med
        line = (
            f"{PREFIX} {label} ratio={ratio:.2f} (tidemark median {t_med:.2f}s, "
            f"baseline median {b_med:.2f}s, rounds={rounds}, db={db_label}) "
            f"target<={TARGET_RATIO}"
        )
        if kind == FC_ZSTD:
            line += " PASS" if ratio <= TARGET_RATIO else " FAIL"
        lines.append(line)
    if results.get(TIDEMARK_FULL):
        full_med, bb_med = median(results[TIDEMARK_FULL]), median(results[BB_ZSTD])
        full_ratio = full_med / bb_med
        lines.append(
            f"{PREFIX} tidemark_full_vs_pg_basebackup_zstd ratio={full_ratio:.2f} (tidemark full "
            f"median {full_med:.2f}s, baseline median {bb_med:.2f}s, rounds={rounds}, "
            f"cluster backup sizes {mib(median(results[TIDEMARK_FULL], 'size_bytes'))} vs "
            f"{mib(median(results[BB_ZSTD], 'size_bytes'))}, compression threads: tidemark "
            f"zstd_threads={zstd_threads}, baseline zstd default -T1"
            f"{'' if zstd_threads == 1 else ' (NOT equal threads)'}) target<={TARGET_RATIO}"
            + (" PASS" if full_ratio <= TARGET_RATIO else " FAIL")
        )
    for line in lines:
        print(line, flush=True)

    observed = median_extra(tidemark, "observed_s")
    details = [
        f"tidemark runs={len(tidemark)} (two per round); time = completedAt - client clock at "
        f"the 202; each baseline runs once per round",
        f"tidemark as seen by polling every {poll * 1000:.0f} ms: median {observed:.2f}s "
        f"-> ratio {observed / median(results[FC_ZSTD]):.2f} vs Fc_zstd, "
        f"{observed / median(results[Z0_ZSTD]):.2f} vs Z0_zstd",
        "tidemark phases (medians): "
        f"POST->202 {median_extra(tidemark, 'post_s') * 1000:.0f}ms, "
        f"202->startedAt {median_extra(tidemark, 'accept_to_start_s'):.3f}s, "
        f"startedAt->completedAt (durationMs) {median_extra(tidemark, 'duration_s'):.3f}s, "
        f"completedAt->seen by poll {median_extra(tidemark, 'complete_to_seen_s'):.3f}s "
        f"({median_extra(tidemark, 'polls'):.0f} polls)",
        f"dump alone (pg_dump -Fc --compress=0 > /dev/null): median "
        f"{median(results[Z0_NULL]):.2f}s",
        "sizes (medians): "
        f"tidemark {mib(median(tidemark, 'size_bytes'))}, "
        f"pgdump_Fc_zstd {mib(median(results[FC_ZSTD], 'size_bytes'))}, "
        f"pgdump_Z0_zstd {mib(median(results[Z0_ZSTD], 'size_bytes'))}"
        + (f"; uncompressed custom dump {mib(raw_dump_bytes)}" if raw_dump_bytes else "")
        + f"; database {mib(db_bytes)}",
        "fsync of the baseline file after the run (not timed; Tidemark's time includes its "
        f"own fsync): median {median_extra(results[FC_ZSTD] + results[Z0_ZSTD], 'fsync_s'):.3f}s",
        "CPU seconds per run (medians): "
        + "; ".join(
            f"{kind}: {cpu_summary(results[kind], kind)}" for kind in (FC_ZSTD, Z0_ZSTD, TIDEMARK)
        ),
        "all runs (s): "
        + "; ".join(
            f"{kind} " + " ".join(f"{r.seconds:.2f}" for r in runs)
            for kind, runs in results.items()
        ),
    ]
    if warmups:
        details.append(
            "warm-up (not counted): " + ", ".join(f"{r.kind} {r.seconds:.2f}s" for r in warmups)
        )
    details.append(
        f"load average (1 min) before/after the measured runs: {load[0]:.2f}/{load[1]:.2f} "
        f"on {os.cpu_count()} CPUs (other work on the machine skews every figure)"
    )
    details.append(f"whole run took {wall:.0f}s")
    for line in details:
        print(f"{PREFIX}   {line}", flush=True)


def cpu_summary(runs: list[Run], kind: str) -> str:
    pg = median_cpu(runs, "postgres+reaped")
    pg_text = f", postgres backend {pg:.2f}" if pg else ""
    if kind != TIDEMARK:
        # The services sit idle meanwhile: what they burn here is their background cost.
        return (
            f"pg_dump+zstd {median_cpu(runs, 'client-children'):.2f}{pg_text} "
            f"(idle Tidemark meanwhile: runner {median_cpu(runs, 'backup-runner'):.2f}, "
            f"gateway {median_cpu(runs, 'api-gateway'):.2f}, kafka {median_cpu(runs, 'kafka'):.2f})"
        )
    return (
        f"runner python {median_cpu(runs, 'backup-runner'):.2f} "
        f"+ pg_dump {median_cpu(runs, 'backup-runner+reaped'):.2f}, "
        f"gateway {median_cpu(runs, 'api-gateway'):.2f}, "
        f"kafka {median_cpu(runs, 'kafka'):.2f}{pg_text}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ORDER_ROWS,
        help=f"order rows to generate (default {DEFAULT_ORDER_ROWS}, ~300 MB on disk)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.05, help="seconds between GETs (default 0.05)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rounds of the three first (default 1)"
    )
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help=f"keep the generated database {BENCH_DB} (and reuse it next time)",
    )
    parser.add_argument("--fresh-db", action="store_true", help="regenerate even if kept")
    parser.add_argument(
        "--no-full",
        action="store_true",
        help=f"skip the `full` figure ({TIDEMARK_FULL} vs {BB_ZSTD} of the same cluster)",
    )
    parser.add_argument(
        "--zstd-threads",
        type=int,
        default=1,
        help="the runner's zstd compression threads (default 1: the baselines' zstd default -T1; "
        "any other value is printed as unequal threads)",
    )
    parser.add_argument(
        "--s3-rounds",
        type=int,
        default=None,
        help="rounds of the S3 figure (db backup to S3 vs to local; default --rounds, 0: skip)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rows < 1000 or args.poll_interval <= 0 or args.warmup < 0:
        parser.error("--rounds >= 1, --rows >= 1000, --poll-interval > 0, --warmup >= 0")
    return args


def bench(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    wall_started = time.monotonic()
    root = state_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    note(f"free space on {root}: {free / 2**30:.1f} GiB")
    if free < MIN_FREE_BYTES:
        raise BenchError(f"less than {MIN_FREE_BYTES / 2**30:.0f} GiB free on {root}")

    admin_url, local_pg = postgres(root, cleanup)

    db = prepare_database(admin_url, args.rows, args.fresh_db)
    if not args.keep_db:
        deferred(
            cleanup,
            f"drop database {BENCH_DB}",
            lambda: drop_database_at(admin_url, BENCH_DB, drop_role=True),
        )
    db_bytes = database_size(db)
    pg_bin = find_pg_bin(server_major(db))
    note(f"database {BENCH_DB}: {mib(db_bytes)} on disk; client tools from {pg_bin}")

    bootstrap, local_kafka = kafka(root, cleanup)

    # Tidemark's own state in a database of its own, fresh for every run: nothing left
    # over from an earlier (interrupted) run can be resumed during the measurement.
    control_db = f"tidemark_bench_cp_{uuid.uuid4().hex[:8]}"
    control_url = create_database_at(admin_url, control_db)
    deferred(
        cleanup, f"drop database {control_db}", lambda: drop_database_at(admin_url, control_db)
    )

    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    deferred(cleanup, f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    # Tidemark writes to <destination root>/<organization>/<destination path>.
    org_id = uuid.uuid4()
    destinations = work / "destinations"
    artifacts = destinations / str(org_id) / "artifacts"
    baseline_dir, scratch = work / "baseline", work / "scratch"
    for directory in (artifacts, baseline_dir, scratch):
        directory.mkdir(parents=True)
    if os.stat(artifacts).st_dev != os.stat(baseline_dir).st_dev:
        raise BenchError("the baseline's and Tidemark's outputs are on different filesystems")

    jwt_secret = secrets.token_urlsafe(32)
    stack = Stack(
        database_url=control_url,
        kafka_bootstrap=bootstrap,
        jwt_secret=jwt_secret,
        log_dir=root / "logs" / work.name,
        gateway_port=free_port(),
        destination_root=destinations,
        extra_env={
            "TIDEMARK_BACKUP_RUNNER_PG_BIN_DIR": str(pg_bin),
            # One compression worker, as the baselines' zstd (its default -T1): equal threads.
            "TIDEMARK_BACKUP_RUNNER_ZSTD_THREADS": str(args.zstd_threads),
        },
    )
    note(f"starting Tidemark (logs in {stack.log_dir}) ...")
    stack.start()
    deferred(cleanup, "stop Tidemark", stack.stop)
    stack.wait_ready(timeout=180)
    note(f"Tidemark ready at {stack.gateway_url}")

    pids = {
        "backup-runner": stack.service("backup-runner").process.pid,
        "api-gateway": stack.service("api-gateway").process.pid,
        "kafka": kafka_pid(local_kafka),
        "postgres": postmaster_pid(local_pg),
    }
    token = make_token(jwt_secret, org_id)
    client = httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
    )
    cleanup.callback(client.close)
    api = register(client, db, artifacts.name, args.poll_interval)

    def tidemark_run(full_check: bool) -> tuple[Run, int | None]:
        if stack.dead():
            raise BenchError(f"Tidemark services exited: {stack.dead()}; see {stack.log_dir}")
        run, body = api.backup(pids)
        raw = check_artifact(body, artifacts, pg_bin, scratch, full_check)
        return run, raw

    warmups: list[Run] = []
    for _ in range(args.warmup):
        warmups.append(run_baseline(FC_ZSTD, db, pg_bin, baseline_dir, pids))
        warmups.append(tidemark_run(full_check=False)[0])
        warmups.append(run_baseline(Z0_ZSTD, db, pg_bin, baseline_dir, pids))
        note("warm-up: " + ", ".join(f"{r.kind} {r.seconds:.2f}s" for r in warmups[-3:]))

    load_before = os.getloadavg()[0]
    results: dict[str, list[Run]] = {FC_ZSTD: [], TIDEMARK: [], Z0_ZSTD: [], Z0_NULL: []}
    if not args.no_full:
        results.update({BB_ZSTD: [], TIDEMARK_FULL: []})
    raw_dump_bytes: int | None = None
    sequence: tuple[str, ...] = (FC_ZSTD, TIDEMARK, Z0_ZSTD, TIDEMARK, Z0_NULL)
    if not args.no_full:
        sequence += (BB_ZSTD, TIDEMARK_FULL)
    for round_no in range(1, args.rounds + 1):
        for kind in sequence:
            if kind == BB_ZSTD:
                run = run_basebackup_baseline(db, pg_bin, baseline_dir, pids)
                detail = ""
            elif kind == TIDEMARK_FULL:
                if stack.dead():
                    raise BenchError(f"Tidemark services exited: {stack.dead()}")
                run, body = api.backup(pids, "full")
                check_full_artifact(body, artifacts)
                detail = f"(backup {run.extra['duration_s']:.2f}s)"
            elif kind == TIDEMARK:
                run, raw = tidemark_run(full_check=raw_dump_bytes is None)
                raw_dump_bytes = raw_dump_bytes or raw
                x = run.extra
                detail = (
                    f"(202->start {x['accept_to_start_s']:.2f}s, dump {x['duration_s']:.2f}s, "
                    f"completed->seen {x['complete_to_seen_s']:.2f}s)"
                )
            else:
                run = run_baseline(kind, db, pg_bin, baseline_dir, pids)
                detail = ""
            results[kind].append(run)
            size = f" {mib(run.size_bytes)}" if run.size_bytes else ""
            note(f"round {round_no}/{args.rounds} {kind}: {run.seconds:.2f}s{size} {detail}")

    # The artifact is the same dump as the Z0 baseline, compressed by the same zstd level.
    tidemark_size = median(results[TIDEMARK], "size_bytes")
    baseline_size = median(results[Z0_ZSTD], "size_bytes")
    if not 0.8 <= tidemark_size / baseline_size <= 1.25:
        raise BenchError(
            f"Tidemark's artifact ({mib(tidemark_size)}) is far from the pg_dump -Z0 | zstd "
            f"file ({mib(baseline_size)}): not comparable work"
        )
    report(
        results,
        rounds=args.rounds,
        db_bytes=db_bytes,
        raw_dump_bytes=raw_dump_bytes,
        poll=args.poll_interval,
        warmups=warmups,
        load=(load_before, os.getloadavg()[0]),
        wall=time.monotonic() - wall_started,
        zstd_threads=args.zstd_threads,
    )
    s3_rounds = args.rounds if args.s3_rounds is None else args.s3_rounds
    if s3_rounds > 0:
        s3_bench(api, s3_rounds, pids, cleanup)


def main(argv: list[str] | None = None) -> int:
    return run_bench(PREFIX, bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
