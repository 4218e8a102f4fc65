"""Deleting backups, destinations that hold them, and the manual trigger's body, over HTTP on
the real stack (Kafka, PostgreSQL, every service)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import DeleteBackup
from tidemark_devstack.e2e import Api, publish
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration

RUNNER = "backup-runner"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def artifact(api: Api, destination: dict[str, Any], backup: dict[str, Any]) -> Path:
    [stored] = [d for d in backup["destinations"] if d["destinationId"] == destination["id"]]
    return api.directory(destination) / stored["location"]


def delete(api: Api, backup_id: str) -> dict[str, Any]:
    response = api.delete(f"/api/v1/backups/{backup_id}")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/backups/{backup_id}"
    body: dict[str, Any] = response.json()
    return body


@contextmanager
def dump_blocked(database_url: str) -> Iterator[None]:
    """pg_dump of the source waits for a lock held meanwhile: its backups stay running."""
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


@contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """Nothing in ``directory`` can be removed, not even by root (which ignores permissions,
    not the immutable attribute): a destination that cannot be cleaned."""
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_completed_backup_is_deleted_from_disk_and_keeps_its_row(
    api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination("kept")
    backup = api.completed_backup(environment, label="before the upgrade")
    file = artifact(api, destination, backup)
    assert file.is_file()

    deleting = delete(api, backup["id"])
    assert deleting["status"] == "deleting"
    assert deleting["label"] == "before the upgrade"
    # Readable at once.
    assert api.get(f"/api/v1/backups/{backup['id']}").json()["status"] in ("deleting", "deleted")

    deleted = api.wait_for(backup["id"], statuses=("deleted",), timeout=60)
    assert not file.exists()
    assert [p for p in api.organization_directory.rglob("*") if p.is_file()] == []
    assert deleted["error"] is None
    assert deleted["checksum"] == backup["checksum"], "the row keeps the backup's history"
    assert [d["status"] for d in deleted["destinations"]] == ["deleted"]
    listed = api.get(f"/api/v1/environments/{environment['id']}/backups?status=deleted").json()
    assert [b["id"] for b in listed["items"]] == [backup["id"]]

    # Repeated: 202 again, and nothing changes.
    again = delete(api, backup["id"])
    assert again["status"] == "deleted"
    time.sleep(1)
    assert api.get(f"/api/v1/backups/{backup['id']}").json() == deleted


def test_an_unknown_or_foreign_backup_is_not_found(
    api: Api, api_for: Any, source_database: str
) -> None:
    problem(api.delete(f"/api/v1/backups/{uuid.uuid4()}"), 404)
    environment = api.environment(source_database)
    api.destination()
    backup = api.completed_backup(environment)
    stranger = api_for()
    problem(stranger.delete(f"/api/v1/backups/{backup['id']}"), 404)
    assert api.get(f"/api/v1/backups/{backup['id']}").json()["status"] == "completed"


def consumed_commands(stack: Stack) -> float:
    """How many backup commands the runner has handled, from its /metrics."""
    metrics = httpx.get(f"{stack.service(RUNNER).url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tidemark_messages_consumed_total{")
        and 'topic="backup.commands"' in line
        and 'outcome="handled"' in line
    )


def test_a_pending_or_running_backup_is_not_deleted(
    api: Api, stack: Stack, source_database: str, kafka_bootstrap: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    with dump_blocked(source_database):
        # The runner takes two backups at a time: the third waits, pending.
        ids = [api.request_backup(environment["id"]).json()["id"] for _ in range(3)]
        running = ids[:2]
        for backup_id in running:
            api.wait_for(backup_id, statuses=("running",), timeout=60)
        pending = ids[2]
        assert api.get(f"/api/v1/backups/{pending}").json()["status"] == "pending"
        for backup_id, status in [(running[0], "running"), (pending, "pending")]:
            refused = problem(api.delete(f"/api/v1/backups/{backup_id}"), 409)
            assert f"the backup is {status}" in refused["detail"]
            assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == status
        # Nor can their destination go while they would write to it.
        problem(api.delete(f"/api/v1/destinations/{destination['id']}"), 409)

        # Around the gateway (a read model that lagged, say): the runner's aggregate refuses.
        before = consumed_commands(stack)
        command = DeleteBackup(
            backup_id=uuid.UUID(running[1]),
            organization_id=api.org_id,
            environment_id=uuid.UUID(environment["id"]),
            requested_by="e2e",
            requested_at=utc_now(),
        )
        envelope = Envelope.wrap(
            command,
            producer="e2e",
            organization_id=api.org_id,
            environment_id=command.environment_id,
            aggregate_id=command.backup_id,
        )
        asyncio.run(publish(kafka_bootstrap, envelope))
        deadline = time.monotonic() + 30
        while consumed_commands(stack) <= before:
            assert time.monotonic() < deadline, "the runner never handled the command"
            time.sleep(0.2)
    backups = [api.wait_for(backup_id, timeout=120) for backup_id in ids]
    assert [b["status"] for b in backups] == ["completed"] * 3
    assert all(artifact(api, destination, b).is_file() for b in backups)
    # Ended, they can be deleted.
    assert delete(api, ids[1])["status"] == "deleting"
    api.wait_for(ids[1], statuses=("deleted",), timeout=60)
    assert not artifact(api, destination, backups[1]).exists()


def cleanup_state(database_url: str, backup_id: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT state FROM backup_runner.deletions WHERE backup_id = %s", (backup_id,)
        ).fetchone()
    return row[0] if row else None


def test_a_destination_that_cannot_be_cleaned_shows_the_error_and_is_cleaned_after_repair(
    api: Api, source_database: str, database_url: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    backup = api.completed_backup(environment)
    file = artifact(api, destination, backup)
    with immutable(file.parent):
        assert delete(api, backup["id"])["status"] == "deleting"
        deadline = time.monotonic() + 60
        while True:
            shown = api.get(f"/api/v1/backups/{backup['id']}").json()
            if shown["error"] is not None and cleanup_state(database_url, backup["id"]) == (
                "gave_up"
            ):
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert shown["status"] == "deleting"
        name = destination["name"]
        assert shown["error"].startswith(f"destination {name!r}: removing the artifact failed")
        assert "Operation not permitted" in shown["error"]
        assert str(api.destination_root) not in shown["error"], "no path of the runner's"
        assert file.is_file()
    # Repaired; the runner gave up, so nothing happens until the deletion is asked again.
    time.sleep(1.5)
    assert api.get(f"/api/v1/backups/{backup['id']}").json()["status"] == "deleting"
    assert file.is_file()
    assert delete(api, backup["id"])["status"] == "deleting"
    deleted = api.wait_for(backup["id"], statuses=("deleted",), timeout=60)
    assert deleted["error"] is None
    assert not file.exists()


def test_a_destination_holding_backups_is_deleted_only_once_they_are(
    api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    completed = api.completed_backup(environment)
    # A failed backup into it counts too (whatever it may hold).
    wrong = api.secret("wrong", "not-the-password")
    broken = api.environment(source_database, password_ref=wrong)
    failed = api.wait_for(api.request_backup(broken["id"]).json()["id"])
    assert failed["status"] == "failed", failed

    path = f"/api/v1/destinations/{destination['id']}"
    refused = problem(api.delete(path), 409)
    assert "holds 2 backup(s) that are not deleted" in refused["detail"]
    assert api.get(path).status_code == 200

    delete(api, completed["id"])
    api.wait_for(completed["id"], statuses=("deleted",), timeout=60)
    assert "holds 1 backup(s)" in problem(api.delete(path), 409)["detail"]
    delete(api, failed["id"])
    api.wait_for(failed["id"], statuses=("deleted",), timeout=60)
    assert api.delete(path).status_code == 204
    problem(api.get(path), 404)
    # And nothing goes into it any more.
    problem(api.request_backup(environment["id"], destinationIds=[destination["id"]]), 422)


def test_the_manual_trigger_body(api: Api, api_for: Any, source_database: str) -> None:
    environment = api.environment(source_database)
    path = f"/api/v1/environments/{environment['id']}/backups"
    chosen = api.destination("chosen", is_default=False)
    other = api.destination("other", is_default=False)

    # No destination named, none by default (and no schedule): 422.
    none = problem(api.post(path, json={"type": "db"}), 422)
    assert none["errors"][0]["field"] == "destinationIds"
    # The source document's shorthand names one destination.
    accepted = api.post(path, json={"type": "db", "destinationId": chosen["id"], "label": "x1"})
    assert accepted.status_code == 202, accepted.text
    assert [d["destinationId"] for d in accepted.json()["destinations"]] == [chosen["id"]]
    # Both ways at once, an empty list, an unknown or foreign id: 422, nothing requested.
    both = {"type": "db", "destinationId": chosen["id"], "destinationIds": [other["id"]]}
    assert "not both" in problem(api.post(path, json=both), 422)["detail"]
    problem(api.post(path, json={"type": "db", "destinationIds": []}), 422)
    foreign = api_for().destination("theirs")
    for unknown in (str(uuid.uuid4()), foreign["id"]):
        body = problem(api.post(path, json={"type": "db", "destinationId": unknown}), 422)
        assert body["errors"] == [{"field": "destinationIds[0]", "message": "unknown destination"}]
    problem(api.post(path, json={"type": "db", "destinationId": "not-a-uuid"}), 422)
    problem(api.post(path, json={"label": "no type", "destinationId": chosen["id"]}), 422)
    listed = api.get(path).json()
    assert listed["total"] == 1

    # Without destinations: the organization's default ones.
    default = api.destination("default", is_default=True)
    backup = api.completed_backup(environment, label="nightly by hand")
    assert [d["destinationId"] for d in backup["destinations"]] == [default["id"]]
    assert backup["label"] == "nightly by hand"
    assert backup["trigger"] == "manual"
    shown = api.wait_for(accepted.json()["id"])
    assert (shown["status"], shown["label"]) == ("completed", "x1")
    labels = {b["id"]: b["label"] for b in api.get(path).json()["items"]}
    assert labels == {backup["id"]: "nightly by hand", shown["id"]: "x1"}
