"""`tidemark projections rebuild` against the whole running system: after backups, a
failure and its alert, a deletion, a schedule and a restore, every read model equals its
rebuild from the event stores; a row altered by hand is the one difference reported, and
`--swap` repairs it while the gateway goes on answering reads and projecting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tidemark_devstack.e2e import Api

pytestmark = pytest.mark.integration


def rebuild(database_url: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "DATABASE_URL": database_url, "TIDEMARK_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tidemark_cli", "projections", "rebuild", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, document


def differences(document: dict[str, Any]) -> list[tuple[str, str, str, str, list[str]]]:
    return sorted(
        (m["name"], d["table"], d["side"], json.dumps(d["key"], sort_keys=True), d["columns"])
        for m in document["readModels"]
        for d in m["differences"]
    )


def rebuild_until(
    database_url: str,
    tmp_path: Path,
    expected: list[tuple[str, str, str, str, list[str]]],
    timeout: float = 120.0,
    baseline: list[tuple[str, str, str, str, list[str]]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Rebuild until the differences are ``expected`` (besides those of ``baseline``, which
    may also have gone): consumers still applying the last events (the alerts of a
    failure, a webhook's delivery) show as differences a moment."""
    allowed = {repr(d) for d in baseline or []}
    wanted = sorted(repr(d) for d in expected)
    deadline = time.monotonic() + timeout
    while True:
        code, document = rebuild(database_url, tmp_path)
        if sorted(r for d in differences(document) if (r := repr(d)) not in allowed) == wanted:
            return code, document
        assert time.monotonic() < deadline, differences(document)
        time.sleep(2)


def test_rebuild_equals_every_live_read_model_and_swap_repairs_a_row_while_reads_go_on(
    api: Api,
    source_database: str,
    target_database: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    # Earlier modules on this database publish events of their own straight to Kafka (a
    # phantom backup's progress, the alerts bench's failures, dead letters): the read-model
    # rows they leave have no stored event, so they differ before this test does anything.
    # This test's work must add no difference to them; the swap then repairs them all.
    _, before = rebuild(database_url, tmp_path)
    baseline = differences(before)
    destination = api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    broken = api.environment(source_database, password_ref=api.secret("bad", "wrong-pw"))
    # Backups, one of them deleted; a failure and the alert it raises, marked read.
    done = []
    for _ in range(3):
        accepted = api.request_backup(source["id"])
        assert accepted.status_code == 202, accepted.text
        done.append(api.wait_for(accepted.json()["id"], timeout=120))
    assert {b["status"] for b in done} == {"completed"}
    failing = api.request_backup(broken["id"])
    assert api.wait_for(failing.json()["id"], timeout=120)["status"] == "failed"
    assert api.delete(f"/api/v1/backups/{done[0]['id']}").status_code == 202
    api.wait_for(done[0]["id"], ("deleted",), timeout=120)
    deadline = time.monotonic() + 60
    while not (alerts := api.get("/api/v1/backups/alerts").json()["items"]):
        assert time.monotonic() < deadline, "no alert of the failed backup"
        time.sleep(0.5)
    assert api.post(f"/api/v1/backups/alerts/{alerts[0]['id']}/read").status_code == 200
    schedule = api.put(
        f"/api/v1/environments/{source['id']}/backups/schedule",
        json={"destinationIds": [destination["id"]]},
    )
    assert schedule.status_code == 200, schedule.text
    restore = api.post(
        f"/api/v1/backups/{done[1]['id']}/restore",
        json={"targetType": "other", "targetEnvironmentId": target["id"]},
    )
    assert restore.status_code == 202, restore.text
    deadline = time.monotonic() + 180
    while api.get(f"/api/v1/restores/{restore.json()['id']}").json()["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, "the restore did not end"
        time.sleep(0.5)
    api.wait_for(restore.json()["safetyBackupId"], timeout=120)

    code, document = rebuild_until(database_url, tmp_path, [], baseline=baseline)
    assert code == (0 if not differences(document) else 1)
    assert document["eventsRead"] > 0
    assert {m["name"] for m in document["readModels"]} >= {
        "gateway-backups",
        "gateway-catalog",
        "gateway-schedules",
        "gateway-restores",
        "gateway-alerts",
        "scheduler-backups",
        "restore-runner-backups",
        "alerts-webhook-alerts",
    }

    # One row of the gateway's backups altered by hand: exactly that row is reported.
    altered = done[2]["id"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE gateway.backups SET label = 'tampered' WHERE id = %s", (altered,))
    expected = [("gateway-backups", "backups", "differs", json.dumps({"id": altered}), ["label"])]
    code, document = rebuild_until(database_url, tmp_path, expected, baseline=baseline)
    assert code == 1
    assert document["equal"] is False

    # The swap while a reader lists the environment's backups in a loop.
    statuses: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            response = api.get(f"/api/v1/environments/{source['id']}/backups?limit=100")
            statuses.append(response.status_code)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        time.sleep(0.5)
        code, swapped = rebuild(database_url, tmp_path, "--swap")
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join()
    assert code == 0, swapped
    assert swapped["swapped"] is True
    assert len(statuses) > 2
    assert set(statuses) == {200}
    assert api.get(f"/api/v1/backups/{altered}").json()["label"] is None
    code, document = rebuild_until(database_url, tmp_path, [])
    assert code == 0

    # The live projection goes on after the swap: a new backup is seen through.
    after = api.request_backup(source["id"])
    assert after.status_code == 202, after.text
    assert api.wait_for(after.json()["id"], timeout=120)["status"] == "completed"
    listed = api.get(f"/api/v1/environments/{source['id']}/backups?limit=100").json()
    assert after.json()["id"] in {b["id"] for b in listed["items"]}
    code, document = rebuild_until(database_url, tmp_path, [])
    assert code == 0
