"""Two instances of every service on real Kafka and PostgreSQL: one owner per backup, one
relay leader per log, and work that survives the death of the instance doing it."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import zstandard
from psycopg.conninfo import conninfo_to_dict
from tidemark_api_gateway.outbox import LOG_NAME as OUTBOX_LOG
from tidemark_contracts import BACKUP_COMMANDS, BACKUP_EVENTS, Envelope
from tidemark_devstack.e2e import Api, table_fingerprints, topic_records
from tidemark_devstack.stack import RunningService, Stack
from tidemark_platform.consumer import decode_envelope
from tidemark_platform.leadership import lock_key

pytestmark = pytest.mark.integration

RUNNER = "backup-runner"
RUNNER_LOG = "backup_runner:relay:kafka"
INSTANCES = 2


def pg_restore_binary() -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_restore"))
    return str(candidates[-1]) if candidates else "pg_restore"


def runners(stack: Stack) -> list[RunningService]:
    return [s for s in stack.instances(RUNNER) if s.process.poll() is None]


def every_runner_running(stack: Stack) -> None:
    for instance in range(INSTANCES):
        stack.start(only=RUNNER, instance=instance)
    stack.wait_ready(timeout=120)


def instance_ids(stack: Stack) -> dict[uuid.UUID, RunningService]:
    """The runners by the instance id they own work under (from their /health)."""
    found = {}
    for service in runners(stack):
        health = httpx.get(f"{service.url}/health", timeout=5).json()
        found[uuid.UUID(health["instance"])] = service
    return found


def work_row(database_url: str, backup_id: str) -> dict[str, Any] | None:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT * FROM backup_runner.work WHERE backup_id = %s", (backup_id,)
        ).fetchone()


def work_attempts(database_url: str, backup_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT * FROM backup_runner.work_attempts WHERE backup_id = %s ORDER BY attempt",
            (backup_id,),
        ).fetchall()


@dataclass
class DumpWatch:
    """Samples pg_stat_activity for the dumps of one backup, all the while a test runs."""

    admin_url: str
    dbname: str
    backup_id: str
    seen: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sessions(self, conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
        return conn.execute(
            "SELECT pid, application_name, state, wait_event_type, query "
            "FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
            (self.dbname, f"tidemark-backup {self.backup_id} %"),
        ).fetchall()

    def start(self) -> None:
        def sample() -> None:
            with psycopg.connect(
                self.admin_url, autocommit=True, row_factory=psycopg.rows.dict_row
            ) as conn:
                while not self._stop.wait(0.05):
                    self.seen.append((time.monotonic(), self.sessions(conn)))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def most_at_once(self) -> int:
        return max((len(sessions) for _, sessions in self.seen), default=0)

    def attempts_seen(self) -> set[str]:
        return {s["application_name"].rsplit(" ", 1)[-1] for _, ss in self.seen for s in ss}


def test_a_runner_killed_mid_dump_loses_its_backup_to_the_other_which_completes_it(
    two_of_everything: Stack,
    api: Api,
    source_database: str,
    database_url: str,
    create_database: Callable[..., str],
    tmp_path: Path,
) -> None:
    stack = two_of_everything
    every_runner_running(stack)
    by_instance = instance_ids(stack)
    assert len(by_instance) == INSTANCES
    environment = api.environment(source_database)
    api.destination()
    source_dbname = str(conninfo_to_dict(source_database)["dbname"])
    # A lock pg_dump must wait for: the dump is held in the middle, connected and with its
    # partial file open, for as long as the test keeps it.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    watch: DumpWatch | None = None
    try:
        backup_id = api.request_backup(environment["id"]).json()["id"]
        watch = DumpWatch(database_url, source_dbname, backup_id)
        watch.start()
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
                dumping = watch.sessions(conn)
            partials = list(api.organization_directory.rglob(".*.partial"))
            if dumping and dumping[0]["wait_event_type"] == "Lock" and partials:
                break
            assert time.monotonic() < deadline, f"pg_dump never got stuck: {dumping}"
            time.sleep(0.1)
        # Mid-dump, really: pg_dump's session waits for the table lock on the source...
        [session] = dumping
        assert session["application_name"] == f"tidemark-backup {backup_id} 1"
        assert "LOCK TABLE" in session["query"]
        row = work_row(database_url, backup_id)
        assert row is not None
        assert (row["state"], row["attempts"]) == ("running", 1)
        owner_id: uuid.UUID = row["owner"]
        owner = by_instance[owner_id]
        # ...and the partial file of exactly that owner's attempt exists.
        [partial] = partials
        assert partial.name.endswith(f".{owner_id.hex}-1.partial")
        api.wait_for(backup_id, statuses=("running",), timeout=30)
        stack.signal(RUNNER, signal.SIGKILL, instance=owner.instance)
        with psycopg.connect(database_url) as conn:
            killed_at: datetime = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        # The dead dump's session stays: a server does not notice a vanished client while
        # the session waits for a lock. Keep the lock until the second attempt waits on it
        # too, so the test sees whether the two ever overlap.
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
                dumping = watch.sessions(conn)
            names = [d["application_name"] for d in dumping]
            if f"tidemark-backup {backup_id} 2" in names:
                break
            assert time.monotonic() < deadline, f"no second attempt: {dumping}"
            time.sleep(0.1)
        assert names == [f"tidemark-backup {backup_id} 2"], "the first attempt's session ended"
    finally:
        blocker.rollback()
        blocker.close()
    try:
        backup = api.wait_for(backup_id, timeout=120)
    finally:
        if watch is not None:
            watch.stop()
    assert backup["status"] == "completed", backup
    survivor = next(s for s in runners(stack) if s.instance != owner.instance)
    [survivor_id] = [i for i, s in by_instance.items() if s is survivor]

    # The other instance took it over as attempt 2, once the dead owner's lease ran out.
    row = work_row(database_url, backup_id)
    assert row is not None
    assert (row["state"], row["attempts"], row["owner"]) == ("finished", 2, survivor_id)
    first, second = work_attempts(database_url, backup_id)
    assert (first["attempt"], first["owner"], first["outcome"]) == (1, owner_id, "lease expired")
    assert (second["attempt"], second["owner"], second["outcome"]) == (2, survivor_id, "completed")
    # Never two at once: the first attempt ended (its lease expired, after the kill)
    # before the second began, and the server never had two dumps of it at a time.
    assert first["started_at"] < killed_at <= first["ended_at"] <= second["started_at"]
    assert second["ended_at"] is not None
    assert watch.attempts_seen() == {"1", "2"}, "the sampler saw both attempts' dumps"
    assert watch.most_at_once() == 1

    # One artifact, the second attempt's, whose bytes are what the backup says.
    files = [p for p in api.organization_directory.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{backup_id}.db.pgdump.zst"], files
    data = files[0].read_bytes()
    assert backup["checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert backup["sizeBytes"] == len(data)
    [stored] = backup["destinations"]
    assert (stored["status"], stored["location"]) == (
        "uploaded",
        str(files[0].relative_to(api.organization_directory / "backups")),
    )

    # And it restores to the source's rows.
    dump = tmp_path / f"{backup_id}.pgdump"
    dump.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    scratch = create_database("scratch")
    password = str(conninfo_to_dict(scratch).get("password", ""))
    subprocess.run(
        [pg_restore_binary(), "--no-owner", "--exit-on-error", f"--dbname={scratch}", str(dump)],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": password},
    )
    assert table_fingerprints(scratch) == table_fingerprints(source_database)


# -- one relay leader per log ------------------------------------------------------------------


def relay_leader(stack: Stack, database_url: str) -> RunningService | None:
    """The runner instance whose session holds the log's leadership lock."""
    classid, objid = lock_key(RUNNER_LOG)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid::int = %s AND l.objid::int = %s",
            (classid, objid),
        ).fetchall()
    if not rows:
        return None
    [(application_name,)] = rows
    pid = int(application_name.split()[1])
    return next(s for s in runners(stack) if s.process.pid == pid)


def leader_gauges(stack: Stack) -> list[float]:
    values = []
    for service in runners(stack):
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith(f'tidemark_relay_leader{{log="{RUNNER_LOG}"}}')
            ),
            None,
        )
        values.append(float(line.split()[-1]) if line else 0.0)
    return values


async def on_topic(topic: str, bootstrap: str, backup_ids: set[str]) -> dict[str, list[Envelope]]:
    """Every envelope about the given backups on ``topic``, read to its end offsets (records
    that are no envelope, parked there by the dead-letter tests, are skipped)."""
    found: dict[str, list[Envelope]] = {b: [] for b in backup_ids}
    for record in await topic_records(bootstrap, topic):
        envelope = decode_envelope(record.value)
        if envelope is not None and str(envelope.aggregate_id) in found:
            found[str(envelope.aggregate_id)].append(envelope)
    return found


def relay_caught_up(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT max(notification_id) FROM backup_runner.backup_runner_events), "
            "(SELECT max(notification_id) FROM backup_runner.backup_runner_tracking "
            "WHERE application_name = 'relay:kafka')"
        ).fetchone()
    assert row is not None
    return row[0] == row[1]


def assert_published_once_per_version(bootstrap: str, backup_ids: set[str]) -> None:
    events = asyncio.run(on_topic(BACKUP_EVENTS.name, bootstrap, backup_ids))
    for backup_id, envelopes in events.items():
        seen = [e.aggregate_version for e in envelopes]
        assert seen, f"nothing of {backup_id} on {BACKUP_EVENTS.name}"
        assert seen == list(range(1, len(seen) + 1)), f"{backup_id}: versions {seen}"


def assert_each_command_published_once(bootstrap: str, backup_ids: set[str]) -> None:
    commands = asyncio.run(on_topic(BACKUP_COMMANDS.name, bootstrap, backup_ids))
    for backup_id, envelopes in commands.items():
        assert len(envelopes) == 1, f"{backup_id}: {len(envelopes)} commands"


def outbox_relays(database_url: str) -> int:
    """How many sessions hold the gateway outbox's leadership lock."""
    classid, objid = lock_key(OUTBOX_LOG)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::int = %s AND objid::int = %s",
            (classid, objid),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_one_runner_relays_and_leadership_moves_when_the_leader_dies(
    two_of_everything: Stack,
    api: Api,
    source_database: str,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    stack = two_of_everything
    every_runner_running(stack)
    environment = api.environment(source_database)
    api.destination()
    before = [api.request_backup(environment["id"]).json()["id"] for _ in range(3)]
    for backup_id in before:
        assert api.wait_for(backup_id, timeout=120)["status"] == "completed"
    deadline = time.monotonic() + 30
    while not relay_caught_up(database_url):
        assert time.monotonic() < deadline, "the relay did not catch up"
        time.sleep(0.2)
    # Both runners relay the same log; exactly one leads it, and each event went out once.
    leader = relay_leader(stack, database_url)
    assert leader is not None
    assert sorted(leader_gauges(stack)) == [0.0, 1.0]
    assert_published_once_per_version(kafka_bootstrap, set(before))
    # The two gateways' outbox has one relay too: each command went out once.
    assert len(stack.instances("api-gateway")) == INSTANCES
    assert outbox_relays(database_url) == 1
    assert_each_command_published_once(kafka_bootstrap, set(before))

    stack.signal(RUNNER, signal.SIGKILL, instance=leader.instance)
    after = api.request_backup(environment["id"]).json()["id"]
    assert api.wait_for(after, timeout=120)["status"] == "completed"
    new_leader = relay_leader(stack, database_url)
    assert new_leader is not None
    assert new_leader.instance != leader.instance
    assert leader_gauges(stack) == [1.0]
    assert_published_once_per_version(kafka_bootstrap, {*before, after})
