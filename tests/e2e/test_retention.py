"""A schedule on the running services, in real time, through the gateway: a custom
every-minute cron fires real backups (``trigger: scheduled``), pausing stops them,
unpausing resumes them; the retention preview names what a retention setting would
delete, and the scheduler's enforcement then deletes exactly that through the normal
deletion path (the backup-runner removes the artifact at the scheduler's request, the
gateway shows ``deleted``); the manual backup and the newest scheduled one stay."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import pytest
from tidemark_devstack.e2e import Api
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration

T = TypeVar("T")
SETTLED = ("completed", "failed", "deleted")


def backups_of(api: Api, environment: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/environments/{environment['id']}/backups", params={"limit": 100})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def scheduled_of(api: Api, environment: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in backups_of(api, environment) if b["trigger"] == "scheduled"]


def put_schedule(api: Api, environment: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    response = api.put(f"/api/v1/environments/{environment['id']}/backups/schedule", json=body)
    assert response.status_code == 200, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def eventually(check: Callable[[], T | None], timeout: float, what: Callable[[], Any]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what()
        time.sleep(1)


def mid_minute() -> None:
    """Wait until the wall clock is 5 to 35 s into a minute: the next fire is at least 25 s away."""
    while not 5 <= datetime.now(UTC).second <= 35:
        time.sleep(0.5)


def stored(database_url: str, table: str, topic_suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """(aggregate id, state) of the stored events whose topic ends in ``topic_suffix``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT originator_id::text, state FROM {table} WHERE topic LIKE %s",
            ("%" + topic_suffix,),
        ).fetchall()
    return [(row[0], json.loads(bytes(row[1]))) for row in rows]


def id_of(value: Any) -> str:
    """An id as eventsourcing stores it (``{"_type_": "uuid_hex", "_data_": hex}``)."""
    return str(uuid.UUID(str(value["_data_"] if isinstance(value, dict) else value)))


def test_an_every_minute_schedule_fires_pauses_resumes_and_prunes_as_previewed(
    stack: Stack, api: Api, source_database: str, database_url: str
) -> None:
    destination = api.destination(f"scheduled-{uuid.uuid4().hex[:6]}")
    environment = api.environment(source_database)
    response = api.request_backup(environment["id"], destinationIds=[destination["id"]])
    assert response.status_code == 202, response.text
    manual = api.wait_for(response.json()["id"])
    assert manual["status"] == "completed"

    body: dict[str, Any] = {
        "dbFrequency": "custom",
        "dbCron": "* * * * *",
        "timezone": "Europe/Berlin",
        "destinationIds": [destination["id"]],
    }
    try:
        schedule = put_schedule(api, environment, body)
        first = at(schedule["nextDbBackupAt"])
        assert first.second == 0
        assert first.microsecond == 0
        assert 0 < (first - datetime.now(UTC)).total_seconds() <= 61
        assert schedule["nextFullBackupAt"] is None

        # 1. It fires real backups, one per minute, each at its minute.
        def two_completed() -> list[dict[str, Any]] | None:
            done = [b for b in scheduled_of(api, environment) if b["status"] == "completed"]
            return done if len(done) >= 2 else None

        fired = eventually(two_completed, 200, lambda: backups_of(api, environment))
        for backup in fired:
            created = at(backup["createdAt"])
            assert (created.second, created.microsecond) == (0, 0), backup
            assert created >= first, backup
            assert backup["type"] == "db", backup
        assert len({b["createdAt"] for b in fired}) == len(fired)

        # 2. Paused: nothing fires across the next minute boundary (and beyond it).
        mid_minute()
        paused = put_schedule(api, environment, {**body, "paused": True})
        paused_at = datetime.now(UTC)
        assert paused["paused"] is True
        assert paused["nextDbBackupAt"] is None
        eventually(
            lambda: all(b["status"] in SETTLED for b in scheduled_of(api, environment)),
            120,
            lambda: backups_of(api, environment),
        )
        while datetime.now(UTC).second < 25 or (datetime.now(UTC) - paused_at).seconds < 60:
            time.sleep(1)
        before = scheduled_of(api, environment)
        assert [b for b in before if at(b["createdAt"]) > paused_at] == []
        assert all(b["status"] == "completed" for b in before), before

        # 3. The preview of retainHourly=1 names what enforcement then deletes, exactly.
        preview = api.post(
            f"/api/v1/environments/{environment['id']}/backups/schedule/retention-preview",
            json={"retainHourly": 1},
        )
        assert preview.status_code == 200, preview.text
        plan = preview.json()
        to_delete = {d["backupId"] for d in plan["delete"]}
        kept = {k["backupId"]: k["reasons"] for k in plan["keep"]}
        newest = max(before, key=lambda b: b["createdAt"])
        assert to_delete == {b["id"] for b in before} - {newest["id"]}
        assert "manual" in kept[manual["id"]]
        assert "newest" in kept[newest["id"]]
        assert plan["summary"]["delete"] == len(to_delete) >= 1
        assert plan["summary"]["freedBytes"] == sum(
            b["sizeBytes"] for b in before if b["id"] in to_delete
        )
        body["retainHourly"] = 1
        put_schedule(api, environment, {**body, "paused": True})

        def deleted_as_previewed() -> bool:
            states = {b["id"]: b["status"] for b in backups_of(api, environment)}
            gone = {i for i, s in states.items() if s in ("deleting", "deleted")}
            assert gone <= to_delete, states  # never more than the preview said
            return gone == to_delete and all(states[i] == "deleted" for i in gone)

        eventually(deleted_as_previewed, 90, lambda: backups_of(api, environment))

        # 4. Unpaused: it fires again (no catch-up of the paused minutes), and retention
        # deletes the previously newest once the new one completes.
        mid_minute()
        resumed_at = datetime.now(UTC)
        resumed = put_schedule(api, environment, body)
        assert at(resumed["nextDbBackupAt"]) > resumed_at

        def resumed_and_pruned() -> dict[str, Any] | None:
            scheduled = scheduled_of(api, environment)
            after = [b for b in scheduled if at(b["createdAt"]) > resumed_at]
            live = [b for b in scheduled if b["status"] not in ("deleted",)]
            done = [b for b in after if b["status"] == "completed"]
            if done and [b["id"] for b in live] == [done[0]["id"]]:
                return done[0]
            return None

        latest = eventually(resumed_and_pruned, 150, lambda: backups_of(api, environment))
        later = scheduled_of(api, environment)
        assert [b for b in later if paused_at < at(b["createdAt"]) <= resumed_at] == []
    finally:
        put_schedule(api, environment, {**body, "enabled": False})

    # What retention deleted, it decided once (BackupExpired naming its rule) and sent
    # through the runner's deletion path as the scheduler's request; the artifacts are gone.
    everything = backups_of(api, environment)
    deleted = {b["id"] for b in everything if b["status"] == "deleted"}
    assert deleted == to_delete | {newest["id"]}
    assert api.wait_for(manual["id"])["status"] == "completed"
    expired = [
        state
        for _, state in stored(database_url, "scheduler_store.scheduler_events", "Schedule.Expired")
        if id_of(state["backup_id"]) in {b["id"] for b in everything}
    ]
    assert sorted(id_of(e["backup_id"]) for e in expired) == sorted(deleted)
    assert all("hourly" in e["rule"] for e in expired), expired
    deletions = {
        backup_id: state["requested_by"]
        for backup_id, state in stored(
            database_url, "backup_runner.backup_runner_events", "DeletionRequested"
        )
        if backup_id in deleted
    }
    assert deletions == dict.fromkeys(deleted, "scheduler:retention")
    artifacts = {p.name.split(".", 1)[0] for p in api.organization_directory.rglob("*.pgdump.zst")}
    assert not deleted & artifacts
    assert {latest["id"], manual["id"]} <= artifacts
