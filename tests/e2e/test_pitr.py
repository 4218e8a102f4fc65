"""Point-in-time recovery over HTTP, on real Kafka and PostgreSQL: WAL archived from an
environment's own cluster, the coverage endpoint, and a restore to a time between two
commits that yields exactly the rows committed up to it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from tidemark_devstack.e2e import SOURCE_PASSWORD, Api, full_environment
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration

SCHEMA = "CREATE TABLE ledger (id int PRIMARY KEY, note text NOT NULL);"


@pytest.fixture
def cluster() -> Iterator[SourceCluster]:
    made = start_source_cluster(password=SOURCE_PASSWORD, schema_sql=SCHEMA)
    yield made
    remove_source_cluster(made)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def wait_until(what: str, check: Any, timeout: float = 120.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def commit_row(url: str, row_id: int) -> tuple[datetime, datetime]:
    """Insert one row in its own transaction: the server's clock just before it began and
    just after it committed (the commit's own time lies between)."""
    with psycopg.connect(url, autocommit=True) as conn:
        (before,) = conn.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
        conn.execute("INSERT INTO ledger VALUES (%s, %s)", (row_id, f"row {row_id}"))
        (after,) = conn.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
    return before, after


def rows(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")]


def switch_wal(cluster: SourceCluster) -> None:
    admin = cluster.postgres.running_url()
    assert admin is not None
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")


@dataclass
class Archived:
    """An environment whose WAL is archived, with a full backup, rows 1, 2 and 3 committed
    after it, and a time between the commits of 2 and 3 that the coverage reaches."""

    env_id: str
    base: dict[str, Any]
    target: datetime
    coverage: dict[str, Any]


def archived_environment(api: Api, cluster: SourceCluster) -> Archived:
    response = full_environment(api, cluster.database_url, cluster.cluster_spec())
    assert response.status_code == 201, response.text
    env_id = response.json()["id"]
    destination = api.destination(f"pitr-{env_id[:8]}")
    schedule = api.put(
        f"/api/v1/environments/{env_id}/backups/schedule",
        json={
            "enabled": True,
            "dbFrequency": "none",
            "fullFrequency": "none",
            "destinationIds": [destination["id"]],
            "walEnabled": True,
            "walRetentionDays": 7,
        },
    )
    assert schedule.status_code == 200, schedule.text

    def pitr() -> dict[str, Any]:
        answer = api.get(f"/api/v1/environments/{env_id}/backups/pitr")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    wait_until("WAL archiving to be active", lambda: pitr()["walArchivingStatus"] == "active")
    assert pitr()["walEnabled"] is True

    full = api.post(
        f"/api/v1/environments/{env_id}/backups",
        json={"type": "full", "destinationIds": [destination["id"]]},
    )
    assert full.status_code == 202, full.text
    base = api.wait_for(full.json()["id"], timeout=180)
    assert base["status"] == "completed", base["error"]

    commit_row(cluster.database_url, 1)
    time.sleep(1.2)
    _, after_t2 = commit_row(cluster.database_url, 2)
    time.sleep(1.2)
    before_t3, _ = commit_row(cluster.database_url, 3)
    assert after_t2 < before_t3
    target = after_t2 + (before_t3 - after_t2) / 2
    # A few more segments after the target, so the replay has something to do.
    for _ in range(6):
        switch_wal(cluster)

    def covered() -> dict[str, Any] | None:
        body = pitr()
        start, end = body["coverageStart"], body["coverageEnd"]
        return body if start and end and parse(start) <= target <= parse(end) else None

    coverage = wait_until("the coverage to reach past t2", covered, timeout=120)
    assert parse(coverage["coverageStart"]) >= parse(base["completedAt"]) - timedelta(seconds=1)
    assert coverage["lastArchivedAt"]
    return Archived(env_id, base, target, coverage)


def request_pitr(api: Api, archived: Archived, at: datetime) -> Any:
    return api.post(
        f"/api/v1/backups/{archived.base['id']}/restore",
        json={
            "targetType": "same",
            "pitrTimestamp": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "createSafetyBackup": False,
        },
    )


def restore_of(api: Api, restore_id: str) -> dict[str, Any]:
    answer = api.get(f"/api/v1/restores/{restore_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def finished(api: Api, restore_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = restore_of(api, restore_id)
        return body if body["status"] in ("completed", "failed") else None

    done: dict[str, Any] = wait_until("the restore to finish", check, timeout=300, every=1.0)
    return done


@pytest.mark.timeout(600)
def test_a_restore_to_a_time_between_two_commits_yields_exactly_the_rows_up_to_it(
    stack: Stack, api: Api, cluster: SourceCluster
) -> None:
    archived = archived_environment(api, cluster)

    # Outside the coverage: 422 with the coverage in the detail, nothing queued.
    before = parse(archived.coverage["coverageStart"]) - timedelta(hours=1)
    refused = request_pitr(api, archived, before)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")

    accepted = request_pitr(api, archived, archived.target)
    assert accepted.status_code == 202, accepted.text
    restore = accepted.json()
    assert restore["status"] == "pending"
    assert restore["pitrTimestamp"]

    done = finished(api, restore["id"])
    assert done["status"] == "completed", done["error"]
    assert rows(cluster.database_url) == [1, 2]
    with psycopg.connect(cluster.database_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


@pytest.mark.timeout(600)
def test_a_restore_runner_killed_during_wal_replay_leaves_the_target_as_it_was(
    stack: Stack, api: Api, cluster: SourceCluster
) -> None:
    archived = archived_environment(api, cluster)
    accepted = request_pitr(api, archived, archived.target)
    assert accepted.status_code == 202, accepted.text
    restore_id = accepted.json()["id"]
    data = cluster.postgres.data_dir
    server_log = data.with_name(data.name + ".tidemark-server.log")

    def replaying() -> bool:
        # The restored data directory is in place, in recovery, and the server has already
        # taken archived segments from the restore-runner: replay is under way.
        return (
            (data / "recovery.signal").exists()
            and data.with_name(data.name + ".tidemark-old").exists()
            and server_log.exists()
            and "restored log file" in server_log.read_text(errors="replace")
        )

    wait_until("WAL replay to be under way", replaying, timeout=180, every=0.1)
    assert restore_of(api, restore_id)["status"] == "running"
    stack.signal("restore-runner", signal.SIGKILL)
    stack.start(only="restore-runner")
    stack.wait_ready(timeout=90)

    done = finished(api, restore_id)
    assert done["status"] == "failed", done
    # Killed once the server took segments: noted as starting or replaying.
    assert done["error"].startswith(
        (
            "the restore-runner stopped during replaying",
            "the restore-runner stopped during starting",
        )
    ), done["error"]
    assert done["error"].endswith("the target was rolled back"), done["error"]
    # The target as it was: every row, out of recovery, nothing left beside it.
    assert rows(cluster.database_url) == [1, 2, 3]
    with psycopg.connect(cluster.database_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert not (data / "recovery.signal").exists()
    assert not data.with_name(data.name + ".tidemark-old").exists()
