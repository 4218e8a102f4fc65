"""WAL archiving end to end, on real Kafka and PostgreSQL: a schedule with WAL on an
environment with its own cluster gets a receiver (one, whatever the number of runners),
segments in the destination and a PITR coverage window; a runner killed mid-stream
leaves no gap; a receiver that stops receiving is ``stalled``; WAL off disables it."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tidemark_contracts.services import SERVICES
from tidemark_devstack.e2e import SOURCE_PASSWORD, Api, full_environment
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_devstack.stack import Stack
from tidemark_recovery.wal import parse_segment_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source_cluster() -> Iterator[SourceCluster]:
    cluster = start_source_cluster(
        password=SOURCE_PASSWORD, schema_sql="CREATE TABLE t (id serial PRIMARY KEY, v text);"
    )
    yield cluster
    remove_source_cluster(cluster)


class Archive:
    """One environment with WAL archiving on, and what to look at."""

    def __init__(self, api: Api, cluster: SourceCluster) -> None:
        self.api = api
        self.cluster = cluster
        response = full_environment(api, cluster.database_url, cluster.cluster_spec())
        assert response.status_code == 201, response.text
        self.env: dict[str, Any] = response.json()
        self.destination = api.destination("wal")
        self.configure(wal_enabled=True)

    def configure(self, *, wal_enabled: bool) -> None:
        response = self.api.put(
            f"/api/v1/environments/{self.env['id']}/backups/schedule",
            json={
                "dbFrequency": "none",
                "fullFrequency": "none",
                "destinationIds": [self.destination["id"]],
                "walEnabled": wal_enabled,
                "walRetentionDays": 7 if wal_enabled else None,
            },
        )
        assert response.status_code == 200, response.text

    def pitr(self) -> dict[str, Any]:
        response = self.api.get(f"/api/v1/environments/{self.env['id']}/backups/pitr")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(self, check: Callable[[dict[str, Any]], bool], what: str, seconds: float = 90) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            body = self.pitr()
            if check(body):
                return body
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {body}"
            time.sleep(0.2)

    @property
    def wal_directory(self) -> Path:
        return self.api.directory(self.destination) / self.env["id"] / "wal"

    def segments(self) -> list[str]:
        if not self.wal_directory.is_dir():
            return []
        return sorted(
            (p.name.removesuffix(".zst") for p in self.wal_directory.glob("*.zst")),
            key=parse_segment_name,
        )

    def slot(self) -> str:
        return f"tidemark_wal_{self.env['id'].replace('-', '')}"

    def receivers(self) -> int:
        with psycopg.connect(self.cluster.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s "
                "ON s.active_pid = r.pid WHERE r.application_name = 'pg_receivewal' "
                "AND s.slot_name = %s",
                (self.slot(),),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def write(self, rows: int = 20, switch: bool = False) -> datetime:
        """Commit rows (at or after the time returned), then switch segments if asked."""
        with psycopg.connect(self.cluster.database_url, autocommit=True) as conn:
            written = datetime.now(UTC)
            conn.execute(
                "INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, %s) i", (rows,)
            )
            if switch:
                conn.execute("SELECT pg_switch_wal()")
        return written

    def has_slot(self) -> bool:
        with psycopg.connect(self.cluster.database_url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot(),)
            ).fetchall()
        return bool(found)

    def switch_off(self) -> None:
        """WAL off; returns once the runner stopped the receiver and dropped the slot
        (the endpoint says ``disabled`` at once: the schedule has WAL off)."""
        self.configure(wal_enabled=False)
        assert self.pitr()["walArchivingStatus"] == "disabled"
        deadline = time.monotonic() + 60
        while self.receivers() or self.has_slot():
            assert time.monotonic() < deadline, "the receiver was not stopped"
            time.sleep(0.2)


def contiguous(segments: list[str]) -> bool:
    numbers = [parse_segment_name(s) for s in segments]
    return all(b == (a[0], a[1] + 1) for a, b in itertools.pairwise(numbers))


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_wal_archiving_reports_active_stores_segments_and_opens_a_coverage_window(
    api: Api, source_cluster: SourceCluster
) -> None:
    archive = Archive(api, source_cluster)
    body = archive.wait(lambda b: b["walArchivingStatus"] == "active", "active")
    assert body["walEnabled"] is True
    assert body["walRetentionDays"] == 7
    assert body["coverageStart"] is None  # no full backup yet
    response = api.post(
        f"/api/v1/environments/{archive.env['id']}/backups",
        json={"type": "full", "destinationIds": [archive.destination["id"]]},
    )
    assert response.status_code == 202, response.text
    backup = api.wait_for(response.json()["id"], timeout=180)
    assert backup["status"] == "completed", backup
    # A write after the backup; the runner forces the switch (its open segment ages).
    written = archive.write()
    body = archive.wait(
        lambda b: b["coverageEnd"] is not None and parse(b["coverageEnd"]) >= written,
        "a coverage window reaching the write",
    )
    assert parse(body["coverageStart"]) == parse(backup["completedAt"])
    assert body["windows"] == [{"start": body["coverageStart"], "end": body["coverageEnd"]}]
    assert body["lastArchivedAt"] is not None
    assert body["lagSeconds"] is not None
    assert body["lagSeconds"] >= 0
    assert archive.segments()
    assert contiguous(archive.segments())
    assert archive.receivers() == 1
    archive.switch_off()


def test_a_runner_killed_mid_stream_leaves_no_gap(
    api: Api, stack: Stack, source_cluster: SourceCluster
) -> None:
    archive = Archive(api, source_cluster)
    archive.wait(lambda b: b["walArchivingStatus"] == "active", "active")
    archive.write(switch=True)
    deadline = time.monotonic() + 60
    while len(archive.segments()) < 1:
        assert time.monotonic() < deadline, "no segment archived"
        time.sleep(0.2)
    stack.signal("backup-runner", signal.SIGKILL)
    for _ in range(3):
        archive.write(switch=True)
    stack.start(only="backup-runner")
    stack.wait_ready(timeout=90)
    archive.write(switch=True)
    # Five segments were switched out (one before the kill, three while the runner was down,
    # one after): wait for all of them. (A wait on lastArchivedAt passing the last write's
    # time was met, on a loaded machine, by the fourth segment's late archiving.)
    deadline = time.monotonic() + 120
    while len(segments := archive.segments()) < 5:
        assert time.monotonic() < deadline, f"the segments written while down: {segments}"
        time.sleep(0.5)
    assert contiguous(segments), segments
    assert len(archive.pitr()["windows"]) <= 1
    archive.switch_off()


def test_two_runner_instances_run_one_receiver(
    api: Api, stack: Stack, source_cluster: SourceCluster
) -> None:
    archive = Archive(api, source_cluster)
    stack.start(only="backup-runner", instance=1)
    try:
        stack.wait_ready(timeout=90)
        archive.wait(lambda b: b["walArchivingStatus"] == "active", "active")
        for _ in range(10):
            archive.write(switch=True)
            assert archive.receivers() <= 1
            time.sleep(0.5)
        assert archive.receivers() == 1
        assert contiguous(archive.segments())
        archive.switch_off()
    finally:
        stack.stop(only="backup-runner", instance=1)
        for spec in SERVICES:
            if spec.name == "backup-runner":
                stack.services.pop((spec.name, 1), None)


def receiver_process(slot: str) -> int:
    """The pid of the pg_receivewal streaming from ``slot`` (on this machine)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_receivewal") and f"--slot={slot}".encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no pg_receivewal on slot {slot}")


def test_a_receiver_that_stops_receiving_while_the_database_writes_is_stalled(
    api: Api, source_cluster: SourceCluster
) -> None:
    archive = Archive(api, source_cluster)
    archive.wait(lambda b: b["walArchivingStatus"] == "active", "active")
    pid = receiver_process(archive.slot())
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        seen = None
        while seen is None:
            # Writes without switching: the runner's forced switches fill segments the
            # stopped receiver never finishes.
            archive.write()
            if archive.pitr()["walArchivingStatus"] == "stalled":
                seen = "stalled"
            assert time.monotonic() < deadline, "never stalled"
            time.sleep(0.2)
    finally:
        # Restarted by then: the stopped receiver was killed (else it goes on).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    # The runner restarts the receiver: active again, and no segment is missing.
    archive.wait(lambda b: b["walArchivingStatus"] == "active", "active again")
    archive.write(switch=True)
    assert contiguous(archive.segments())
    archive.switch_off()


def test_switching_wal_off_disables_stops_the_receiver_and_drops_its_slot(
    api: Api, source_cluster: SourceCluster
) -> None:
    archive = Archive(api, source_cluster)
    archive.wait(lambda b: b["walArchivingStatus"] == "active", "active")
    assert archive.has_slot()
    assert archive.receivers() == 1
    archive.switch_off()  # waits for both to go
    body = archive.pitr()
    assert body["walEnabled"] is False
    assert body["walArchivingStatus"] == "disabled"
    with pytest.raises(AssertionError):
        receiver_process(archive.slot())


def test_the_pitr_endpoint_is_404_for_a_foreign_or_unknown_environment(
    api: Api, api_for: Callable[..., Api], source_cluster: SourceCluster
) -> None:
    response = full_environment(api, source_cluster.database_url, source_cluster.cluster_spec())
    env_id = response.json()["id"]
    stranger = api_for()
    assert stranger.get(f"/api/v1/environments/{env_id}/backups/pitr").status_code == 404
    unknown = "00000000-0000-4000-8000-000000000000"
    assert api.get(f"/api/v1/environments/{unknown}/backups/pitr").status_code == 404
    body = api.get(f"/api/v1/environments/{env_id}/backups/pitr").json()
    assert body == {
        "walEnabled": False,
        "walArchivingStatus": "disabled",
        "coverageStart": None,
        "coverageEnd": None,
        "lastArchivedAt": None,
        "lagSeconds": None,
        "walRetentionDays": None,
        "windows": [],
    }
