"""`projections rebuild` on a real PostgreSQL: real event stores (the gateway's catalog and
the backup-runner's), every read model of the registry kept live from them as its
consumer would (each store event applied with its own position), then rebuilt, compared
and swapped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication
from tidemark_api_gateway.domain import Destination, Environment, Project
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.main import SCHEMA as RUNNER_SCHEMA
from tidemark_cli.readmodels import READ_MODELS
from tidemark_cli.rebuild import ModelReport, Rebuild, RebuildReport, rebuild_read_models
from tidemark_contracts import Envelope
from tidemark_contracts.backup import (
    BackupRequested,
    DatabaseTarget,
    DeleteBackup,
    DestinationRef,
    DestinationTarget,
    RequestBackup,
)
from tidemark_devstack.e2e import backup_request
from tidemark_platform.database import Pool, connection_pool
from tidemark_platform.projection import ProjectionRunner

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """The stores, and every read model kept live from them."""

    url: str
    pool: Pool
    catalog: CatalogApplication
    runner: BackupRunnerApplication
    organization_id: uuid.UUID = field(default_factory=uuid.uuid4)
    project_id: uuid.UUID = field(default_factory=uuid.uuid4)
    environment_id: uuid.UUID = field(default_factory=uuid.uuid4)
    destination_id: uuid.UUID = field(default_factory=uuid.uuid4)
    views: list[ProjectionRunner] = field(default_factory=list)
    delivered: dict[str, int] = field(default_factory=dict)  # store -> position
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> "Kafka offset"

    async def deliver(self) -> None:
        """What the relays and the consumers do: every new stored event to every read model
        following its topic, with a position of its own."""
        for store, app in ((CATALOG_SCHEMA, self.catalog), (RUNNER_SCHEMA, self.runner)):
            start = self.delivered.get(store, 0) + 1
            for notification in app.recorder.select_notifications(start=start, limit=10_000):
                self.delivered[store] = notification.id
                mapped = app.to_envelope(app.mapper.to_domain_event(notification))
                if mapped is None:
                    continue
                topic, envelope = mapped
                offset = self.offsets[topic.name] = self.offsets.get(topic.name, 0) + 1
                for view in self.views:
                    if view.projection.topic is topic:
                        await view.apply_at(envelope, Tracking(f"{topic.name}:0", offset))

    def register_catalog(self) -> None:
        self.catalog.register(
            Project(
                project_id=self.project_id,
                organization_id=self.organization_id,
                name="shop",
                registered_at=T0,
            ),
            Environment(
                environment_id=self.environment_id,
                organization_id=self.organization_id,
                project_id=self.project_id,
                name="prod",
                database={"host": "127.0.0.1", "port": 5432, "dbname": "d", "user": "u"},
                cluster=None,
                files_path=None,
                registered_at=T0,
            ),
            Destination(
                destination_id=self.destination_id,
                organization_id=self.organization_id,
                name="local",
                type="local",
                config={"path": "/nonexistent"},
                is_default=True,
                registered_at=T0,
            ),
        )

    def request(self) -> RequestBackup:
        command = backup_request(
            organization_id=self.organization_id,
            project_id=self.project_id,
            environment_id=self.environment_id,
            database=DatabaseTarget(host="127.0.0.1", port=5432, dbname="d", user="u"),
            destinations=[
                DestinationTarget.of(self.destination_id, "local", "local", {"path": "/x"})
            ],
        )
        offset = self.offsets["backup.commands"] = self.offsets.get("backup.commands", 0) + 1
        assert self.runner.request_backup(command, Tracking("backup.commands:0", offset))
        return command

    def complete(self, backup_id: uuid.UUID, size: int = 10) -> None:
        backup = self.runner.get_backup(backup_id)
        backup.start(T0, None)
        backup.record_upload(str(self.destination_id), "/x/a", size, T0)
        backup.complete(size, "sha256:" + "0" * 64, "zstd", T0)
        self.runner.save(backup)

    def fail(self, backup_id: uuid.UUID) -> None:
        backup = self.runner.get_backup(backup_id)
        backup.start(T0, None)
        backup.fail("pg_dump: connection refused", T0)
        self.runner.save(backup)

    def delete(self, command: RequestBackup) -> None:
        offset = self.offsets["backup.commands"] = self.offsets["backup.commands"] + 1
        outcome = self.runner.request_deletion(
            DeleteBackup(
                backup_id=command.backup_id,
                organization_id=command.organization_id,
                environment_id=command.environment_id,
                requested_by="t",
                requested_at=T0,
            ),
            Tracking("backup.commands:0", offset),
        )
        assert outcome == "accepted"

    def history(self, backups: int = 6) -> list[RequestBackup]:
        """A catalog and ``backups`` backups: completed, failed, one deletion requested."""
        self.register_catalog()
        commands = [self.request() for _ in range(backups)]
        for i, command in enumerate(commands):
            if i % 3 == 1:
                self.fail(command.backup_id)
            else:
                self.complete(command.backup_id, size=10 + i)
        self.delete(commands[0])
        return commands

    async def execute(self, query: str, *params: Any) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return cursor.rowcount

    async def fetch(self, query: str, *params: Any) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()


@pytest.fixture
async def world(create_database: Callable[..., str]) -> AsyncIterator[World]:
    url = create_database("rebuild")
    pool = connection_pool(url, min_size=1, max_size=4)
    await pool.open()
    catalog = CatalogApplication.on_postgres(url, CATALOG_SCHEMA)
    runner = BackupRunnerApplication.on_postgres(url, RUNNER_SCHEMA)
    w = World(url, pool, catalog, runner)
    w.views = [ProjectionRunner(pool, m.schema, m.projection()) for m in READ_MODELS]
    async with pool.connection() as conn:
        for view in w.views:
            await view.migrate(conn)
    yield w
    catalog.close()
    runner.close()
    await pool.close()


def by_name(report: RebuildReport) -> dict[str, ModelReport]:
    return {m.model.name: m for m in report.models}


def summary(report: RebuildReport) -> list[tuple[str, str, str, dict[str, Any], list[str]]]:
    return [
        (m.model.name, d.table, d.side, d.key, d.columns)
        for m in report.models
        for d in m.differences
    ]


async def test_every_read_model_kept_from_the_stores_equals_its_rebuild(world: World) -> None:
    world.history()
    await world.deliver()
    report = await rebuild_read_models(world.url)
    assert summary(report) == []
    assert report.equal
    assert report.repaired
    assert not report.swapped
    assert {m.model.name for m in report.models} == {m.name for m in READ_MODELS}
    # Catalog: 3 registrations (and their name claims), backups: 6 + 13 + 1 events.
    assert report.events_read >= 23
    # The rebuild's own schemas are dropped afterwards.
    rows = await world.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%%__rebuilt'")
    assert rows == []
    # It rebuilt something real: the gateway's view holds the six backups.
    assert len(await world.fetch("SELECT id FROM gateway.backups")) == 6


async def test_a_live_row_altered_by_hand_is_reported_alone_and_the_swap_repairs_it(
    world: World,
) -> None:
    commands = world.history()
    await world.deliver()
    altered = commands[2].backup_id
    assert await world.execute(
        "UPDATE gateway.backups SET status = 'failed', size_bytes = 1 WHERE id = %s", altered
    )
    assert await world.execute(
        "DELETE FROM restore_runner.backups WHERE id = %s", commands[3].backup_id
    )
    assert await world.execute(
        "UPDATE scheduler.projects SET name = 'renamed' WHERE id = %s", world.project_id
    )

    report = await rebuild_read_models(world.url)
    key = {"id": str(altered)}
    assert sorted(summary(report), key=str) == sorted(
        [
            ("gateway-backups", "backups", "differs", key, ["size_bytes", "status"]),
            (
                "restore-runner-backups",
                "backups",
                "rebuilt-only",
                {"id": str(commands[3].backup_id)},
                ["environment_id", "error", "id", "status"],
            ),
            (
                "scheduler-catalog",
                "projects",
                "differs",
                {"id": str(world.project_id)},
                ["name"],
            ),
        ],
        key=str,
    )
    assert not report.repaired
    differing = by_name(report)["gateway-backups"].differences[0]
    assert differing.live is not None
    assert differing.rebuilt is not None
    assert (differing.live["status"], differing.rebuilt["status"]) == ("failed", "completed")

    swapped = await rebuild_read_models(world.url, swap=True)
    assert swapped.swapped
    assert swapped.repaired
    assert {m.model.name for m in swapped.models if m.swapped} == {
        "gateway-backups",
        "restore-runner-backups",
        "scheduler-catalog",
    }
    after = await rebuild_read_models(world.url)
    assert summary(after) == []
    assert after.equal
    row = (
        await world.fetch("SELECT status, size_bytes FROM gateway.backups WHERE id = %s", altered)
    )[0]
    assert row == {"status": "completed", "size_bytes": 12}


async def test_only_names_read_models_and_an_unknown_name_is_refused(world: World) -> None:
    world.history(3)
    await world.deliver()
    await world.execute("UPDATE scheduler.projects SET name = 'renamed'")
    report = await rebuild_read_models(world.url, ["gateway-backups", "gateway-catalog"])
    assert [m.model.name for m in report.models] == ["gateway-catalog", "gateway-backups"]
    assert report.equal  # the altered scheduler view was not rebuilt
    # A read model whose projection reads a neighbour's table (the webhooks) alone.
    alone = await rebuild_read_models(world.url, ["alerts-webhook-alerts"])
    assert [m.model.name for m in alone.models] == ["alerts-webhook-alerts"]
    assert alone.equal
    from tidemark_cli.errors import CliError

    with pytest.raises(CliError) as raised:
        await rebuild_read_models(world.url, ["gateway-bakcups"])
    assert raised.value.code == 2
    assert "gateway-bakcups" in raised.value.message


async def test_events_the_live_projection_applies_during_the_rebuild_survive_the_swap(
    world: World,
) -> None:
    commands = world.history()
    await world.deliver()
    await world.execute(
        "UPDATE gateway.backups SET label = 'tampered' WHERE id = %s", commands[4].backup_id
    )
    async with Rebuild(world.url) as rebuild:
        await rebuild.read()
        # While the rebuilt tables wait for the swap: a new backup, a deletion, both
        # recorded and applied live; and one recorded but not yet applied live (lag).
        late = world.request()
        world.complete(late.backup_id, size=99)
        world.delete(commands[2])
        await world.deliver()
        lagging = world.request()
        await rebuild.swap()
        report = rebuild.report()
    # Inside the swap only the tampered row and the lagging backup (ahead of the live
    # consumer) differed: the catch-up had the events applied live meanwhile. The other
    # views of backups were equal before the swap, so were left to their consumers.
    count_key = {
        "organization_id": str(world.organization_id),
        "project_id": str(world.project_id),
        "environment_id": str(world.environment_id),
        "status": "pending",
        "type": "db",
    }
    assert sorted(((m, t, s, k) for m, t, s, k, _ in summary(report)), key=str) == sorted(
        [
            ("gateway-backups", "backups", "differs", {"id": str(commands[4].backup_id)}),
            ("gateway-backups", "backups", "rebuilt-only", {"id": str(lagging.backup_id)}),
            ("gateway-backups", "backup_counts", "rebuilt-only", count_key),
        ],
        key=str,
    )
    assert [m.model.name for m in report.models if m.swapped] == ["gateway-backups"]
    live = {
        r["id"]: r["status"] for r in await world.fetch("SELECT id, status FROM gateway.backups")
    }
    assert live[late.backup_id] == "completed"
    assert live[commands[2].backup_id] == "deleting"
    assert live[lagging.backup_id] == "pending"  # the swap brought it in from the store
    # The lagging event now reaches the live consumer: its version guard says applied.
    before = await world.fetch("SELECT * FROM gateway.backups ORDER BY id")
    await world.deliver()
    assert await world.fetch("SELECT * FROM gateway.backups ORDER BY id") == before
    # Later events apply exactly once on the swapped tables.
    world.complete(lagging.backup_id, size=7)
    await world.deliver()
    rows = await world.fetch(
        "SELECT status, size_bytes FROM gateway.backups WHERE id = %s", lagging.backup_id
    )
    assert rows == [{"status": "completed", "size_bytes": 7}]
    counts = await world.fetch("SELECT status, n FROM gateway.backup_counts ORDER BY status")
    assert sum(r["n"] for r in counts) == len(commands) + 2
    final = await rebuild_read_models(world.url)
    assert summary(final) == []
    assert final.equal


async def test_the_gateways_rows_written_ahead_of_their_event_are_not_yet_recorded(
    world: World,
) -> None:
    commands = world.history()
    await world.deliver()
    # What the gateway writes with a RequestBackup: the pending row, unversioned.
    backups = next(v for v in world.views if v.projection.name == "gateway-backups")
    backup_id = uuid.uuid4()
    pending = Envelope.wrap(
        BackupRequested(
            backup_id=backup_id,
            organization_id=world.organization_id,
            project_id=world.project_id,
            environment_id=world.environment_id,
            type="db",
            trigger="manual",
            label=None,
            requested_by="t",
            requested_at=T0,
            destinations=[
                DestinationRef(destination_id=world.destination_id, name="local", type="local")
            ],
        ),
        producer="api-gateway",
        organization_id=world.organization_id,
        environment_id=world.environment_id,
        aggregate_id=backup_id,
    )
    assert await backups.apply_now(pending)
    # A real difference beside it is still one.
    await world.execute(
        "UPDATE gateway.backups SET label = 'tampered' WHERE id = %s", commands[1].backup_id
    )
    report = await rebuild_read_models(world.url, ["gateway-backups"])
    (model,) = report.models
    assert [(d.table, d.side, d.key) for d in model.differences] == [
        ("backups", "differs", {"id": str(commands[1].backup_id)})
    ]
    ahead = sorted((d.table, d.side) for d in model.not_yet_recorded)
    assert ahead == [("backup_counts", "live-only"), ("backups", "live-only")]
    assert not report.repaired

    swapped = await rebuild_read_models(world.url, ["gateway-backups"], swap=True)
    assert swapped.repaired
    rows = await world.fetch("SELECT status FROM gateway.backups WHERE id = %s", backup_id)
    assert rows == [{"status": "pending"}]  # the swap kept it
    label = await world.fetch(
        "SELECT label FROM gateway.backups WHERE id = %s", commands[1].backup_id
    )
    assert label == [{"label": None}]
    only_ahead = await rebuild_read_models(world.url, ["gateway-backups"])
    assert only_ahead.repaired
    assert only_ahead.models[0].differences == []
    assert len(only_ahead.models[0].not_yet_recorded) == 2


async def test_a_second_rebuild_at_the_same_time_is_refused(world: World) -> None:
    from tidemark_cli.errors import CliError

    async with Rebuild(world.url):
        with pytest.raises(CliError, match="another rebuild is running"):
            await rebuild_read_models(world.url)


def run_cli(url: str | None, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDEMARK_STATE_DIR": str(tmp_path), "COLUMNS": "200"}
    env.pop("DATABASE_URL", None)
    if url is not None:
        env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "tidemark_cli", "projections", "rebuild", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_the_command_exits_0_when_equal_and_1_naming_the_altered_row(
    world: World, tmp_path: Path
) -> None:
    commands = world.history(3)
    await world.deliver()
    equal = await asyncio.to_thread(run_cli, world.url, "--json", tmp_path=tmp_path)
    assert equal.returncode == 0, equal.stderr
    document = json.loads(equal.stdout)
    assert document["equal"] is True
    assert document["eventsRead"] > 0

    await world.execute('UPDATE gateway.destinations SET config = \'{"path": "/elsewhere"}\'')
    await world.execute(
        "UPDATE gateway.backups SET error = 'x' WHERE id = %s", commands[0].backup_id
    )
    found = await asyncio.to_thread(run_cli, world.url, "--json", tmp_path=tmp_path)
    assert found.returncode == 1, found.stderr
    document = json.loads(found.stdout)
    differences = [
        (m["name"], d["table"], d["key"], d["columns"], d["live"])
        for m in document["readModels"]
        for d in m["differences"]
    ]
    assert sorted(differences, key=str) == sorted(
        [
            (
                "gateway-catalog",
                "destinations",
                {"id": str(world.destination_id)},
                ["config"],
                {"config": "<withheld>"},  # a destination's config is never printed
            ),
            (
                "gateway-backups",
                "backups",
                {"id": str(commands[0].backup_id)},
                ["error"],
                {"error": "x"},
            ),
        ],
        key=str,
    )
    # The table, for people: the swap's differences, each named, and the rate on stderr.
    swapped = await asyncio.to_thread(run_cli, world.url, "--swap", tmp_path=tmp_path)
    assert swapped.returncode == 0, swapped.stderr
    assert swapped.stdout.count("1 different row, swapped") == 2
    assert str(commands[0].backup_id) in swapped.stdout
    assert "events/s" in swapped.stderr
    again = await asyncio.to_thread(run_cli, world.url, "--json", tmp_path=tmp_path)
    assert again.returncode == 0
    assert json.loads(again.stdout)["equal"] is True


async def test_the_command_refuses_an_unknown_read_model_and_hides_an_unreachable_password(
    world: World, tmp_path: Path
) -> None:
    unknown = await asyncio.to_thread(run_cli, world.url, "--only", "nope", tmp_path=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "tidemark: no read model named 'nope'"
    unreachable = await asyncio.to_thread(
        run_cli, "postgresql://nobody:secret-pw@127.0.0.1:1/none", tmp_path=tmp_path
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("tidemark: database:")
    assert "secret-pw" not in unreachable.stderr
    assert unreachable.stdout == ""
