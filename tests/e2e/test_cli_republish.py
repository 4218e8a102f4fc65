"""`tidemark events republish` against the running system, with the subscriber example of
docs/examples/backup_subscriber.py following backup.events (real Kafka and PostgreSQL).

Real backups are made (completed, failed, deleted); the example, in a fresh consumer
group, handles each stored backup event once. Re-publishing the history (from a time, and
from a store position) changes neither the example's effect nor any service: the backups,
alerts, schedule and retention stay as they were, and the gateway's read model rows of
this organization are equal before and after.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from tidemark_cli.sources import BY_STORE
from tidemark_contracts import BACKUP_EVENTS
from tidemark_devstack.e2e import SOURCE_PASSWORD, SOURCE_SCHEMA, Api, make_token, topic_records
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "backup_subscriber.py"
STORE = "backup_runner"
ALERTS = "/api/v1/backups/alerts"
WRONG_PASSWORD = "not-the-password"


# -- the history ------------------------------------------------------------------------


@dataclass
class History:
    api: Api
    environments: list[dict[str, Any]]
    backups: dict[str, str]  # id -> final status
    # The stored events of these backups as backup.events carries them, in store order:
    # (position, time, messageId)
    events: list[tuple[int, datetime, str]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [str(self.api.org_id), *(str(e["id"]) for e in self.environments), *self.backups]

    @property
    def message_ids(self) -> set[str]:
        return {m for _, _, m in self.events}


def stored_backup_events(
    database_url: str, backup_ids: set[str]
) -> list[tuple[int, datetime, str]]:
    """The backup-runner store's events of ``backup_ids`` that its relay puts on
    backup.events, as (position, time, messageId)."""
    app = BY_STORE[STORE].open(database_url)
    try:
        found = []
        start = 1
        while batch := app.recorder.select_notifications(start=start, limit=1000):
            for notification in batch:
                if str(notification.originator_id) not in backup_ids:
                    continue
                event = app.mapper.to_domain_event(notification)
                mapped = app.to_envelope(event)
                if mapped is not None and mapped[0].name == BACKUP_EVENTS.name:
                    found.append((notification.id, event.timestamp, str(mapped[1].message_id)))
            start = batch[-1].id + 1
        return found
    finally:
        app.close()


def finished(api: Api, env: dict[str, Any]) -> str:
    accepted = api.request_backup(env["id"])
    assert accepted.status_code == 202, accepted.text
    backup_id: str = accepted.json()["id"]
    api.wait_for(backup_id, timeout=120)
    return backup_id


@pytest.fixture(scope="module")
def history(stack: Stack) -> Iterator[History]:
    """Two completed backups (one deleted), a failed one and a schedule, of one organization
    (module-wide: both tests read the same history)."""
    org = uuid.uuid4()
    name = f"src_{uuid.uuid4().hex[:8]}"
    url = create_database_at(stack.database_url, name, SOURCE_PASSWORD)
    client = httpx.Client(
        base_url=stack.gateway_url,
        headers={"Authorization": f"Bearer {make_token(org)}"},
        timeout=30.0,
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SOURCE_SCHEMA)
        yield make_history(stack, Api(client, org, stack.destination_root), url)
    finally:
        client.close()
        drop_database_at(stack.database_url, name, drop_role=True)


def make_history(stack: Stack, api: Api, url: str) -> History:
    api.destination()
    good = api.environment(url)
    broken = api.environment(url, password_ref=api.secret("wrong-password", WRONG_PASSWORD))
    schedule = api.put(
        f"/api/v1/environments/{good['id']}/backups/schedule",
        json={
            "destinationIds": [api.destination("scheduled", is_default=False)["id"]],
            "dbFrequency": "monthly",
            "retainMonthly": 1,
        },
    )
    assert schedule.status_code == 200, schedule.text

    kept, deleted = finished(api, good), finished(api, good)
    failed = finished(api, broken)
    response = api.delete(f"/api/v1/backups/{deleted}")
    assert response.status_code == 202, response.text
    api.wait_for(deleted, ("deleted",), timeout=120)
    backups = {
        b: api.wait_for(b, ("completed", "failed", "deleted"))["status"]
        for b in (kept, deleted, failed)
    }
    assert backups == {kept: "completed", deleted: "deleted", failed: "failed"}
    # The alert of the failed backup is there before anything is compared.
    deadline = time.monotonic() + 60
    while not [a for a in api.get(ALERTS).json()["items"] if a["backupId"] == failed]:
        assert time.monotonic() < deadline, "no alert for the failed backup"
        time.sleep(0.3)

    found = History(api, [good, broken], backups)
    found.events = stored_backup_events(stack.database_url, set(backups))
    kinds = Counter(mid for _, _, mid in found.events)
    assert len(kinds) == len(found.events)  # one messageId per stored event
    assert len(found.events) >= 3 + 3 + 2 + 2  # requested, started, ..., deletion
    return found


# -- the subscriber example --------------------------------------------------------------


@dataclass
class Subscriber:
    group: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def steps(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def wait_assigned(self, timeout: float = 300) -> None:
        """Until the group gave it partitions: a positive signal, not a pause."""
        deadline = time.monotonic() + timeout
        while not any(s["step"] == "assigned" and s["partitions"] for s in self.steps()):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no assignment: {self.log.read_text()}"
            time.sleep(0.2)
        assigned = [s for s in self.steps() if s["step"] == "assigned"][-1]["partitions"]
        assert assigned == list(range(BACKUP_EVENTS.partitions))

    def wait_caught_up(self, bootstrap: str, timeout: float = 300) -> None:
        """Until its group committed, on every partition, the end offset backup.events has
        now: everything written so far was handled or skipped."""
        ends = asyncio.run(end_offsets(bootstrap))
        deadline = time.monotonic() + timeout
        while True:
            committed = asyncio.run(committed_offsets(bootstrap, self.group))
            if all(committed.get(tp, -1) >= end for tp, end in ends.items()):
                return
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"behind: {committed} < {ends}"
            time.sleep(0.3)

    def seen(self, message_ids: set[str]) -> Counter[tuple[str, str]]:
        """How often it handled or skipped each of ``message_ids``: (step, messageId)."""
        return Counter(
            (s["step"], s["messageId"]) for s in self.steps() if s.get("messageId") in message_ids
        )

    def ledger(self, backup_ids: list[str]) -> dict[str, tuple[str, int]]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT backup_id::text, status, events FROM backup_subscriber.backups "
                "WHERE backup_id = ANY(%s::uuid[])",
                (backup_ids,),
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def handled_ids(self, message_ids: set[str]) -> list[str]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT message_id::text FROM backup_subscriber.handled_messages "
                "WHERE message_id = ANY(%s::uuid[])",
                (list(message_ids),),
            ).fetchall()
        return sorted(r[0] for r in rows)


async def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(BACKUP_EVENTS.name, p) for p in range(BACKUP_EVENTS.partitions)
        ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


@pytest.fixture
def subscriber(
    stack: Stack, create_database: Callable[..., str], tmp_path: Path
) -> Iterator[Callable[[], Subscriber]]:
    started: list[Subscriber] = []

    def start() -> Subscriber:
        group = f"example-{uuid.uuid4().hex[:8]}"  # fresh: it reads the topic from its start
        url = create_database("subscriber")
        log = tmp_path / f"{group}.jsonl"
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--group", group],
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
                "DATABASE_URL": url,
            },
            stdout=log.open("wb"),
            stderr=(tmp_path / f"{group}.err").open("wb"),
        )
        running = Subscriber(group, url, process, log)
        started.append(running)
        return running

    yield start
    for running in started:
        running.process.terminate()
        try:
            assert running.process.wait(timeout=30) == 0
        finally:
            if running.process.poll() is None:
                running.process.kill()


def republish(stack: Stack, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidemark_cli",
            "events",
            "republish",
            "--topic",
            BACKUP_EVENTS.name,
            *args,
            "--json",
        ],
        env={
            **os.environ,
            "DATABASE_URL": stack.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "TIDEMARK_STATE_DIR": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    return body


# -- what the services show ----------------------------------------------------------------


def services_view(stack: Stack, history: History) -> dict[str, Any]:
    """Everything this organization can see, and the gateway's read-model rows that name
    it, its environments or its backups; the stored events of its backups and schedule."""
    api = history.api
    seen: dict[str, Any] = {}
    for env in history.environments:
        listing = api.get(f"/api/v1/environments/{env['id']}/backups", params={"limit": 100})
        seen[f"backups {env['id']}"] = listing.json()
        schedule = api.get(f"/api/v1/environments/{env['id']}/backups/schedule")
        seen[f"schedule {env['id']}"] = (schedule.status_code, schedule.json())
    for backup_id in history.backups:
        seen[f"backup {backup_id}"] = api.get(f"/api/v1/backups/{backup_id}").json()
    seen["alerts"] = api.get(ALERTS, params={"limit": 100}).json()
    seen["alerts count"] = api.get(f"{ALERTS}/count").json()
    with psycopg.connect(stack.database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('gateway', 'scheduler', 'restore_runner', 'alerts') "
            "AND table_type = 'BASE TABLE' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            if table == "projection_positions":
                continue  # consumer offsets: they move on with every record, by design
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows = [r[0] for r in conn.execute(query)]
            seen[f"{schema}.{table}"] = sorted(
                row for row in rows if any(i in row for i in history.ids)
            )
        # The stored events that name them (UUIDs are stored as hex): retention's
        # decisions, the backups' own events, alerts.
        patterns = [f"%{uuid.UUID(i).hex}%" for i in history.ids]
        for store, table in events_tables(stack.database_url).items():
            query = sql.SQL(
                "SELECT count(*) FROM {}.{} WHERE convert_from(state, 'UTF8') LIKE ANY(%s)"
            ).format(sql.Identifier(store), sql.Identifier(table))
            seen[f"{store} events"] = conn.execute(query, (patterns,)).fetchone()
    return seen


def events_tables(database_url: str) -> dict[str, str]:
    """The events table of the scheduler's, the backup-runner's and the alerts' stores
    (eventsourcing names it after the application: ``<name>_events``)."""
    tables = {}
    for store in ("scheduler_store", STORE, "alerts"):
        app = BY_STORE[store].open(database_url)
        try:
            tables[store] = str(app.recorder.events_table_name)
        finally:
            app.close()
    return tables


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == before[key], key


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.timeout(1200)
def test_the_example_handles_each_event_once_and_a_republish_changes_nothing(
    stack: Stack, history: History, subscriber: Callable[[], Subscriber]
) -> None:
    example = subscriber()
    example.wait_assigned()
    example.wait_caught_up(stack.kafka_bootstrap)
    mine = history.message_ids
    assert example.handled_ids(mine) == sorted(mine)
    assert example.seen(mine) == Counter({("handled", m): 1 for m in mine})
    ledger = example.ledger(list(history.backups))
    assert {b: status for b, (status, _) in ledger.items()} == history.backups
    assert sum(events for _, events in ledger.values()) == len(mine)
    before = services_view(stack, history)

    first_time = min(at for _, at, _ in history.events)
    by_time = republish(stack, "--from", first_time.isoformat())
    assert by_time["dryRun"] is False
    assert list(by_time["stores"]) == [STORE]
    assert by_time["published"] >= len(mine)
    assert by_time["stores"][STORE]["firstPosition"] == history.events[0][0]

    first_position = history.events[0][0]
    by_position = republish(stack, "--from", f"{STORE}:{first_position}")
    assert by_position["published"] >= len(mine)
    assert by_position["stores"][STORE]["firstPosition"] == first_position

    example.wait_caught_up(stack.kafka_bootstrap)
    # Every event arrived three times (more after a rebalance): handled once, then skipped.
    seen = example.seen(mine)
    for message_id in mine:
        assert seen[("handled", message_id)] == 1, message_id
        assert seen[("skipped", message_id)] >= 2, message_id
    assert example.ledger(list(history.backups)) == ledger
    assert example.handled_ids(mine) == sorted(mine)

    # The services absorbed the same: let them read to the end, then compare.
    wait_services_caught_up(stack)
    assert_unchanged(before, services_view(stack, history))


def wait_services_caught_up(stack: Stack, timeout: float = 300) -> None:
    """Until every service group that follows backup.events committed its end offsets."""
    ends = asyncio.run(end_offsets(stack.kafka_bootstrap))
    groups = asyncio.run(backup_event_groups(stack.kafka_bootstrap))
    assert groups, "no service follows backup.events"
    deadline = time.monotonic() + timeout
    for group in groups:
        while True:
            committed = asyncio.run(committed_offsets(stack.kafka_bootstrap, group))
            if all(committed.get(tp, -1) >= end for tp, end in ends.items()):
                break
            assert time.monotonic() < deadline, f"{group} behind: {committed} < {ends}"
            time.sleep(0.3)


async def backup_event_groups(bootstrap: str) -> list[str]:
    """The services' consumer groups that commit offsets on backup.events (not examples)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups()]
        following = []
        for group in groups:
            if group.startswith(("example-", "tidemark-dlq")):
                continue
            offsets = await admin.list_consumer_group_offsets(group)
            if any(tp.topic == BACKUP_EVENTS.name for tp in offsets):
                following.append(group)
        return following
    finally:
        await admin.close()


@pytest.mark.timeout(900)
def test_a_fresh_group_receives_every_republished_message_and_takes_effect_once(
    stack: Stack, history: History, subscriber: Callable[[], Subscriber]
) -> None:
    mine = history.message_ids
    copies_before = Counter(
        str(json.loads(r.value)["messageId"])
        for r in asyncio.run(topic_records(stack.kafka_bootstrap, BACKUP_EVENTS.name))
    )
    published = republish(stack, "--from", f"{STORE}:{history.events[0][0]}")
    assert published["published"] >= len(mine)
    copies = Counter(
        str(json.loads(r.value)["messageId"])
        for r in asyncio.run(topic_records(stack.kafka_bootstrap, BACKUP_EVENTS.name))
    )
    for message_id in mine:
        assert copies[message_id] == copies_before[message_id] + 1, message_id

    fresh = subscriber()
    fresh.wait_assigned()
    fresh.wait_caught_up(stack.kafka_bootstrap)
    seen = fresh.seen(mine)
    for message_id in mine:
        # It received every copy Kafka holds, the re-published one included (a rebalance
        # may deliver one again), and handled the first.
        assert seen[("handled", message_id)] == 1, message_id
        assert seen[("skipped", message_id)] >= copies[message_id] - 1, message_id
    assert fresh.handled_ids(mine) == sorted(mine)
    assert sum(events for _, events in fresh.ledger(list(history.backups)).values()) == len(mine)
