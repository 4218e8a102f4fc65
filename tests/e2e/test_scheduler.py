"""Two scheduler instances on real Kafka and PostgreSQL firing the same every-minute
schedules, one killed (SIGKILL) and restarted mid-run: every fire time is requested
exactly once, as the scheduler's and the backup-runner's event stores show.

The ConfigureSchedule commands are published to ``schedule.commands`` by the test itself
(the gateway's PUT endpoint is another branch's), as the gateway's outbox would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from tidemark_contracts import SCHEDULE_COMMANDS, Envelope
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_devstack.e2e import Api, publish
from tidemark_devstack.stack import Stack, log_name
from tidemark_schedules import ids

pytestmark = pytest.mark.integration

SCHEDULER = "scheduler"
ENVIRONMENTS = 6
EVERY_MINUTE = "* * * * *"


@pytest.fixture
def two_schedulers(stack: Stack) -> Iterator[Stack]:
    stack.start(only=SCHEDULER, instance=1)
    stack.wait_ready(timeout=120)
    yield stack
    stack.stop(only=SCHEDULER, instance=1)
    stack.services.pop((SCHEDULER, 1), None)
    if (SCHEDULER, 0) in stack.dead():
        stack.start(only=SCHEDULER, instance=0)
    stack.wait_ready(timeout=120)


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
        command,
        producer="e2e",
        organization_id=api.org_id,
        environment_id=command.environment_id,
    )
    asyncio.run(publish(bootstrap, envelope, SCHEDULE_COMMANDS.name))


def fired_by(stack: Stack, instance: int, schedules: set[str]) -> list[dict[str, Any]]:
    """The ``schedule_fired`` log lines of one scheduler instance for ``schedules``."""
    path = stack.log_dir / log_name((SCHEDULER, instance))
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "schedule_fired" and record.get("schedule_id") in schedules:
            lines.append(record)
    return lines


def stored_events(
    database_url: str, table: str, topic_suffix: str
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT originator_id, state FROM {table} WHERE topic LIKE %s",
            ("%" + topic_suffix,),
        ).fetchall()
    return [(row[0], json.loads(bytes(row[1]))) for row in rows]


def utc_of(value: Any) -> datetime:
    """A datetime as eventsourcing stores it (``{"_type_": ..., "_data_": iso}``)."""
    raw = value["_data_"] if isinstance(value, dict) else value
    return datetime.fromisoformat(raw).astimezone(UTC)


def uuid_of(value: Any) -> uuid.UUID:
    return uuid.UUID(str(value["_data_"] if isinstance(value, dict) else value))


def test_two_schedulers_one_killed_request_every_fire_time_exactly_once(
    two_schedulers: Stack,
    api: Api,
    source_database: str,
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    stack = two_schedulers
    destination = api.destination(f"scheduled-{uuid.uuid4().hex[:6]}")
    environments = [api.environment(source_database) for _ in range(ENVIRONMENTS)]
    env_ids = {uuid.UUID(e["id"]) for e in environments}
    schedules = {str(ids.schedule_id(e)) for e in env_ids}
    configured_at = datetime.now(UTC)
    for environment in environments:
        configure(
            kafka_bootstrap,
            api,
            environment,
            destination,
            1,
            dbFrequency="custom",
            dbCron=EVERY_MINUTE,
        )
    try:
        # Wait for the first fires, and kill an instance that was firing them.
        deadline = time.monotonic() + 150
        firing: list[int] = []
        while not firing:
            assert time.monotonic() < deadline, "no scheduler fired within 150 s"
            time.sleep(2)
            firing = [n for n in (0, 1) if fired_by(stack, n, schedules)]
        victim = firing[0]
        before_kill = len(fired_by(stack, victim, schedules))
        assert before_kill >= 1
        stack.signal(SCHEDULER, signal.SIGKILL, instance=victim)
        killed_at = datetime.now(UTC)
        # Dead across at least one fire time: the survivor takes its partitions over.
        time.sleep(75)
        stack.start(only=SCHEDULER, instance=victim)
        stack.wait_ready(timeout=120)
        # Let the restarted instance take part in fires again.
        time.sleep(70)
        ended_at = datetime.now(UTC)
    finally:
        for revision_two in environments:
            configure(kafka_bootstrap, api, revision_two, destination, 2, enabled=False)

    # Every fire time from the first after the configuration to shortly before the end.
    first = (configured_at + timedelta(minutes=1)).replace(second=0, microsecond=0)
    cutoff = ended_at - timedelta(seconds=20)
    expected: list[datetime] = []
    at = first
    while at <= cutoff:
        expected.append(at)
        at += timedelta(minutes=1)
    assert len(expected) >= 3
    assert any(killed_at < t for t in expected), "no fire time while an instance was down"

    fired: list[tuple[uuid.UUID, datetime, uuid.UUID]] = []
    deadline = time.monotonic() + 30
    while True:
        fired = [
            (schedule, utc_of(state["scheduled_for"]), uuid_of(state["backup_id"]))
            for schedule, state in stored_events(
                database_url, "scheduler_store.scheduler_events", "Schedule.Fired"
            )
            if str(schedule) in schedules
        ]
        counts = Counter((schedule, at) for schedule, at, _ in fired)
        if all(counts[(uuid.UUID(s), t)] for s in schedules for t in expected):
            break
        missing = [(s, t) for s in schedules for t in expected if not counts[(uuid.UUID(s), t)]]
        assert time.monotonic() < deadline, f"fire times never fired: {missing}"
        time.sleep(1)
    assert [key for key, n in counts.items() if n > 1] == [], "a fire time fired twice"
    missed = [
        state
        for schedule, state in stored_events(
            database_url, "scheduler_store.scheduler_events", "Schedule.Missed"
        )
        if str(schedule) in schedules
    ]
    assert missed == []
    for schedule, at, backup_id in fired:
        assert backup_id == ids.scheduled_backup_id(schedule, "db", at)

    # The runner recorded one scheduled backup per fire, none besides.
    fired_ids = {backup_id for _, _, backup_id in fired}
    deadline = time.monotonic() + 60
    while True:
        requested = [
            (backup_id, state)
            for backup_id, state in stored_events(
                database_url, "backup_runner.backup_runner_events", "Backup.Requested"
            )
            if uuid.UUID(
                str(
                    state["environment_id"]["_data_"]
                    if isinstance(state["environment_id"], dict)
                    else state["environment_id"]
                )
            )
            in env_ids
        ]
        if {b for b, _ in requested} >= fired_ids:
            break
        assert time.monotonic() < deadline, "the runner never recorded some scheduled backups"
        time.sleep(1)
    assert sorted(b for b, _ in requested) == sorted(fired_ids)
    assert {s["trigger"] for _, s in requested} == {"scheduled"}
    assert {s["requested_by"] for _, s in requested} == {"scheduler"}
