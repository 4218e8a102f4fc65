"""A backup-runner that dies mid-backup: after its lease expires the backup is run again."""

from __future__ import annotations

import hashlib
import signal
import time

import psycopg
import pytest
from tidemark_devstack.e2e import Api
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


def test_a_backup_interrupted_by_a_runner_crash_is_run_again_and_leaves_no_partial_file(
    api: Api, stack: Stack, source_database: str
) -> None:
    environment = api.environment(source_database)
    api.destination()
    # Hold a lock that pg_dump must wait for, so the backup is surely mid-flight.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        backup_id = api.request_backup(environment["id"]).json()["id"]
        api.wait_for(backup_id, statuses=("running",), timeout=60)
        deadline = time.monotonic() + 30
        while not list(api.organization_directory.rglob(".*.partial")):
            assert time.monotonic() < deadline, "pg_dump never started writing"
            time.sleep(0.1)
        stack.signal("backup-runner", signal.SIGKILL)
    finally:
        blocker.rollback()
        blocker.close()
    stack.start(only="backup-runner")
    stack.wait_ready(timeout=90)
    backup = api.wait_for(backup_id, timeout=90)
    assert backup["status"] == "completed", backup
    # The interrupted attempt's partial file is gone; only the complete artifact remains.
    files = [p for p in api.organization_directory.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{backup_id}.db.pgdump.zst"]
    assert backup["checksum"] == "sha256:" + hashlib.sha256(files[0].read_bytes()).hexdigest()
