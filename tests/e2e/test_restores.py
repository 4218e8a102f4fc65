"""Restores end to end: HTTP → outbox → Kafka → restore-runner (safety backup, verified
download, pg_restore into a new database, swap) → events → read model, on real Kafka and
PostgreSQL; and what a corrupted artifact, a killed runner and a busy target do."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from tidemark_devstack.e2e import Api, table_fingerprints
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


def request_restore(api: Api, backup_id: str, **body: Any) -> httpx.Response:
    return api.post(f"/api/v1/backups/{backup_id}/restore", json=body)


def wait_restore(api: Api, restore_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/api/v1/restores/{restore_id}")
        assert response.status_code == 200, response.text
        restore: dict[str, Any] = response.json()
        if restore["status"] in ("completed", "failed"):
            return restore
        assert time.monotonic() < deadline, f"restore still {restore['status']}: {restore}"
        time.sleep(0.3)


def databases_like(database_url: str, pattern: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,)
        ).fetchall()
    return [r[0] for r in rows]


def test_a_db_restore_into_another_environment_reproduces_the_source_and_can_be_undone(
    api: Api, source_database: str, target_database: str
) -> None:
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    before = table_fingerprints(target_database)

    accepted = request_restore(
        api,
        backup["id"],
        targetType="other",
        targetEnvironmentId=target["id"],
        backupId=backup["id"],
    )
    assert accepted.status_code == 202, accepted.text
    pending = accepted.json()
    assert pending["status"] == "pending"
    assert accepted.headers["location"] == f"/api/v1/restores/{pending['id']}"
    assert pending["sourceEnvironmentId"] == source["id"]
    assert pending["targetEnvironmentId"] == target["id"]
    assert pending["restoreType"] == "db"
    assert pending["baseBackupId"] == backup["id"]
    assert pending["safetyBackupId"]

    restore = wait_restore(api, pending["id"])
    assert restore["status"] == "completed", restore
    assert restore["error"] is None
    assert restore["startedAt"]
    assert restore["durationMs"] >= 0
    assert table_fingerprints(target_database) == table_fingerprints(source_database)

    # The safety backup is the target's old state, and restoring it undoes the restore.
    safety = api.wait_for(pending["safetyBackupId"])
    assert safety["status"] == "completed"
    assert safety["environmentId"] == target["id"]
    assert safety["label"] == f"safety backup before restore {pending['id']}"
    undo = request_restore(api, safety["id"], targetType="same", createSafetyBackup=False)
    assert undo.status_code == 202, undo.text
    assert undo.json()["safetyBackupId"] is None
    assert wait_restore(api, undo.json()["id"])["status"] == "completed"
    assert table_fingerprints(target_database) == before

    # The log of each side lists the restores that touched it, newest first.
    target_log = api.get(f"/api/v1/environments/{target['id']}/restore-logs").json()
    assert [r["id"] for r in target_log["items"]] == [undo.json()["id"], pending["id"]]
    assert target_log["total"] == 2
    assert target_log["limit"] == 20
    source_log = api.get(f"/api/v1/environments/{source['id']}/restore-logs?limit=500").json()
    assert [r["id"] for r in source_log["items"]] == [pending["id"]]
    assert source_log["limit"] == 100
    assert databases_like(target_database, "%\\_tm%\\_%") == []


def test_restore_validation_answers(
    api: Api, api_for: Callable[..., Api], source_database: str, target_database: str
) -> None:
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    bid = backup["id"]
    foreign = api_for()
    foreign.destination()
    foreign_env = foreign.environment(target_database)

    def status(response: httpx.Response) -> int:
        return response.status_code

    assert (
        status(request_restore(api, bid, targetType="other", targetEnvironmentId=foreign_env["id"]))
        == 404
    )
    assert (
        status(request_restore(api, bid, targetType="other", targetEnvironmentId=str(uuid.uuid4())))
        == 404
    )
    assert status(request_restore(foreign, bid, targetType="same")) == 404
    assert status(request_restore(api, str(uuid.uuid4()), targetType="same")) == 404
    new = request_restore(api, bid, targetType="new", newEnvironmentName="x")
    assert status(new) == 422
    assert new.json()["errors"][0]["field"] == "targetType"
    assert status(request_restore(api, bid, targetType="other")) == 422
    mismatch = request_restore(api, bid, targetType="same", backupId=str(uuid.uuid4()))
    assert status(mismatch) == 422
    assert mismatch.json()["errors"][0]["field"] == "backupId"
    assert status(request_restore(api, bid, targetType="same", color="blue")) == 422
    assert status(request_restore(api, bid, targetType="sideways")) == 422
    pitr = request_restore(api, bid, targetType="same", pitrTimestamp="2026-01-01T00:00:00Z")
    assert status(pitr) == 422
    assert "coverage" in pitr.json()["detail"]
    # A backup that has not completed cannot be restored.
    running = api.request_backup(source["id"]).json()
    early = request_restore(
        api, running["id"], targetType="other", targetEnvironmentId=target["id"]
    )
    if early.status_code != 202:  # the backup may already have completed (fast runner)
        assert status(early) == 422
        assert "only a completed backup" in early.json()["detail"]
    api.wait_for(running["id"])
    # Nothing of the refused requests was recorded.
    assert api.get(f"/api/v1/environments/{target['id']}/restore-logs").json()["total"] == (
        1 if early.status_code == 202 else 0
    )


def test_two_concurrent_restores_into_one_target_one_is_409(
    api: Api, source_database: str, target_database: str
) -> None:
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def post() -> None:
        barrier.wait()
        answers.append(
            request_restore(api, backup["id"], targetType="other", targetEnvironmentId=target["id"])
        )

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    accepted = next(a for a in answers if a.status_code == 202).json()
    assert wait_restore(api, accepted["id"])["status"] == "completed"
    # Once it ended, the target takes the next restore.
    again = request_restore(
        api,
        backup["id"],
        targetType="other",
        targetEnvironmentId=target["id"],
        createSafetyBackup=False,
    )
    assert again.status_code == 202, again.text
    wait_restore(api, again.json()["id"])


def test_a_corrupted_artifact_fails_the_restore_before_the_target_is_touched(
    api: Api, source_database: str, target_database: str
) -> None:
    destination = api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    artifact = api.directory(destination) / backup["destinations"][0]["location"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    before = table_fingerprints(target_database)

    accepted = request_restore(
        api,
        backup["id"],
        targetType="other",
        targetEnvironmentId=target["id"],
        createSafetyBackup=False,
    )
    assert accepted.status_code == 202, accepted.text
    restore = wait_restore(api, accepted.json()["id"])
    assert restore["status"] == "failed"
    assert "checksum" in restore["error"]
    assert destination["name"] in restore["error"]
    assert str(api.destination_root) not in restore["error"]
    assert table_fingerprints(target_database) == before
    assert databases_like(target_database, "%\\_tmr\\_%") == []


SLOW_TABLE = """
CREATE FUNCTION slowly(bigint) RETURNS boolean LANGUAGE sql
    AS 'SELECT pg_catalog.pg_sleep(0.01) IS NOT NULL';
CREATE TABLE slow (id bigint PRIMARY KEY CHECK (public.slowly(id)));
INSERT INTO slow SELECT g FROM generate_series(1, 3000) g;
"""


def test_a_restore_runner_killed_during_pg_restore_leaves_the_target_as_it_was(
    api: Api,
    stack: Stack,
    source_database: str,
    target_database: str,
    database_url: str,
) -> None:
    # Every restored row of ``slow`` passes a CHECK that sleeps 10 ms: pg_restore runs
    # for half a minute, long enough to be caught in the act.
    with psycopg.connect(source_database, autocommit=True) as conn:
        conn.execute(SLOW_TABLE)
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    before = table_fingerprints(target_database)
    accepted = request_restore(
        api,
        backup["id"],
        targetType="other",
        targetEnvironmentId=target["id"],
        createSafetyBackup=False,
    )
    assert accepted.status_code == 202, accepted.text
    restore_id = accepted.json()["id"]
    deadline = time.monotonic() + 90
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            running = conn.execute(
                "SELECT datname FROM pg_stat_activity WHERE application_name = %s",
                (f"tidemark-restore {restore_id}",),
            ).fetchall()
            if running and databases_like(database_url, "%\\_tmr\\_%"):
                break
            assert time.monotonic() < deadline, "pg_restore never started"
            time.sleep(0.1)
    [(scratch,)] = running
    assert "_tmr_" in scratch
    stack.signal("restore-runner", signal.SIGKILL)
    stack.start(only="restore-runner")
    stack.wait_ready(timeout=90)
    restore = wait_restore(api, restore_id, timeout=120)
    assert restore["status"] == "failed", restore
    assert restore["error"] == (
        "the restore-runner stopped during restoring; the target was left as it was"
    )
    assert table_fingerprints(target_database) == before
    assert databases_like(database_url, f"{scratch}") == []


def test_the_restore_progress_stream_shows_running_ticks_and_ends_completed(
    api: Api, stack: Stack, source_database: str, target_database: str
) -> None:
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    accepted = request_restore(
        api, backup["id"], targetType="other", targetEnvironmentId=target["id"]
    )
    assert accepted.status_code == 202, accepted.text
    restore_id = accepted.json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    url = f"{stack.gateway_url}/api/v1/backups/{backup['id']}/restore/progress"
    with httpx.stream("GET", url, headers=dict(api.client.headers), timeout=120) as response:
        assert response.status_code == 200
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
    names = [n for n, _ in events]
    assert names[-1] == "completed", events
    assert events[-1][1]["id"] == restore_id
    assert events[-1][1]["status"] == "completed"
    running = [d for n, d in events if n == "progress" and d["status"] == "running"]
    assert running, events
    assert {d["restoreId"] for d in running} == {restore_id}
    assert any(
        d["phase"] in ("waiting_for_safety_backup", "downloading", "restoring") for d in running
    )


def test_a_failed_safety_backup_fails_the_restore_before_the_target_is_touched(
    api: Api, source_database: str, target_database: str
) -> None:
    api.destination()
    source = api.environment(source_database)
    # The target's password is wrong: its safety backup (pg_dump) fails.
    target = api.environment(target_database, password_ref=api.secret("wrong", "not-it-9"))
    backup = api.completed_backup(source)
    before = table_fingerprints(target_database)
    accepted = request_restore(
        api, backup["id"], targetType="other", targetEnvironmentId=target["id"]
    )
    assert accepted.status_code == 202, accepted.text
    restore = wait_restore(api, accepted.json()["id"])
    assert restore["status"] == "failed"
    assert restore["error"].startswith("the safety backup of the target failed")
    assert restore["error"].endswith("the target was not touched")
    assert api.wait_for(restore["safetyBackupId"])["status"] == "failed"
    assert table_fingerprints(target_database) == before
