"""A backup-runner that dies mid-backup: the backup ends failed, nothing partial remains."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest
from tidemark_devstack.e2e import Api
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


def test_a_backup_interrupted_by_a_runner_crash_fails_and_leaves_no_artifact(
    api: Api, stack: Stack, source_database: str, tmp_path: Path
) -> None:
    environment = api.environment(source_database)
    api.destination(tmp_path)
    # Hold a lock that pg_dump must wait for, so the backup is surely mid-flight.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        backup_id = api.request_backup(environment["id"]).json()["id"]
        api.wait_for(backup_id, statuses=("running",), timeout=60)
        time.sleep(0.5)  # pg_dump is connected and waiting for the lock
        stack.signal("backup-runner", signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()
    stack.start(only="backup-runner")
    stack.wait_ready(timeout=90)
    backup = api.wait_for(backup_id, timeout=60)
    assert backup["status"] == "failed"
    assert "stopped while this backup was running" in backup["error"]
    # Neither a partial file nor anything else of the interrupted backup remains.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    # The runner works again afterwards.
    again = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert again["status"] == "completed", again
