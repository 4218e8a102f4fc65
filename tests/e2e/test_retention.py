"""Retention on the running services: an every-minute schedule fires real backups, and
after each scheduled completion the scheduler expires what its retention no longer keeps
and deletes it through the normal deletion path (the backup-runner removes the artifact,
the gateway shows ``deleted``); a manual backup and the newest scheduled one stay.

The ConfigureSchedule commands are published to ``schedule.commands`` by the test itself,
as the gateway's outbox would (the gateway's PUT endpoint is another branch's).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from tidemark_contracts import SCHEDULE_COMMANDS, Envelope
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_devstack.e2e import Api, publish
from tidemark_devstack.stack import Stack
from tidemark_schedules import ids

pytestmark = pytest.mark.integration


def configure(
    bootstrap: str,
    api: Api,
    environment: dict[str, Any],
    destination: dict[str, Any],
    revision: int,
    **settings: Any,
) -> None:
    now = datetime.now(UTC)
    command = ConfigureSchedule(
        schedule_id=ids.schedule_id(uuid.UUID(environment["id"])),
        organization_id=api.org_id,
        project_id=uuid.UUID(environment["projectId"]),
        environment_id=uuid.UUID(environment["id"]),
        revision=revision,
        settings=ScheduleSettings.model_validate(
            {"destinationIds": [destination["id"]], **settings}
        ),
        requested_by="e2e",
        created_at=now,
        updated_at=now,
    )
    envelope = Envelope.wrap(
        command, producer="e2e", organization_id=api.org_id, environment_id=command.environment_id
    )
    asyncio.run(publish(bootstrap, envelope, SCHEDULE_COMMANDS.name))


def backups_of(api: Api, environment: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/environments/{environment['id']}/backups", params={"limit": 100})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def stored(database_url: str, table: str, topic_suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """(aggregate id, state) of the stored events whose topic ends in ``topic_suffix``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT originator_id::text, state FROM {table} WHERE topic LIKE %s",
            ("%" + topic_suffix,),
        ).fetchall()
    return [(row[0], json.loads(bytes(row[1]))) for row in rows]


def id_of(value: Any) -> str:
    """An id as eventsourcing stores it (``{"_type_": "uuid_hex", "_data_": hex}``), as
    the API writes it."""
    return str(uuid.UUID(str(value["_data_"] if isinstance(value, dict) else value)))


def test_an_every_minute_schedule_keeps_only_what_retention_keeps(
    stack: Stack,
    api: Api,
    source_database: str,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    destination = api.destination(f"retained-{uuid.uuid4().hex[:6]}")
    environment = api.environment(source_database)
    response = api.request_backup(environment["id"], destinationIds=[destination["id"]])
    assert response.status_code == 202, response.text
    manual = api.wait_for(response.json()["id"])
    assert manual["status"] == "completed"

    # retainHourly=1: of the scheduled backups only the newest (of the newest hour) stays.
    schedule = {"dbFrequency": "custom", "dbCron": "* * * * *", "retainHourly": 1}
    configure(kafka_bootstrap, api, environment, destination, 1, **schedule)
    try:
        deadline = time.monotonic() + 330
        while True:
            assert time.monotonic() < deadline, backups_of(api, environment)
            scheduled = [b for b in backups_of(api, environment) if b["trigger"] == "scheduled"]
            if sum(b["status"] == "deleted" for b in scheduled) >= 2:
                break
            time.sleep(3)
    finally:
        configure(kafka_bootstrap, api, environment, destination, 2, enabled=False, **schedule)

    # Disabled: what was already requested finishes, and retention catches up with it.
    deadline = time.monotonic() + 120
    while True:
        everything = backups_of(api, environment)
        scheduled = [b for b in everything if b["trigger"] == "scheduled"]
        unsettled = [b for b in scheduled if b["status"] in ("pending", "running", "deleting")]
        completed = [b for b in scheduled if b["status"] == "completed"]
        if not unsettled and len(completed) == 1:
            break
        assert time.monotonic() < deadline, everything
        time.sleep(2)
    assert len(scheduled) >= 3
    assert [b["status"] for b in scheduled if b["status"] not in ("completed", "deleted")] == []
    newest = max((b for b in scheduled if b["status"] != "failed"), key=lambda b: b["createdAt"])
    assert completed == [newest]
    deleted = {b["id"] for b in scheduled if b["status"] == "deleted"}
    # The manual backup stays, though older than every scheduled one.
    assert api.wait_for(manual["id"])["status"] == "completed"
    assert manual["id"] not in deleted

    # Each deletion was decided once by retention (BackupExpired naming its rule) and went
    # through the runner's deletion path as the scheduler's request.
    expired = [
        state
        for _, state in stored(database_url, "scheduler_store.scheduler_events", "Schedule.Expired")
        if id_of(state["backup_id"]) in {b["id"] for b in scheduled}
    ]
    assert sorted(id_of(e["backup_id"]) for e in expired) == sorted(deleted)
    assert all(e["rule"] for e in expired)
    deletions = {
        backup_id: state["requested_by"]
        for backup_id, state in stored(
            database_url, "backup_runner.backup_runner_events", "DeletionRequested"
        )
        if backup_id in deleted
    }
    assert deletions == dict.fromkeys(deleted, "scheduler:retention")
    # No artifact of a deleted backup is left; the kept ones' are there.
    artifacts = {p.name.split(".", 1)[0] for p in api.organization_directory.rglob("*.pgdump.zst")}
    assert not deleted & artifacts
    assert {newest["id"], manual["id"]} <= artifacts
