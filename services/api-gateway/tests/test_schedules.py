"""The schedule endpoints on a real PostgreSQL (no Kafka: the outbox keeps what the relay
would publish): every error path of the body and the world, the transaction's row and
command, the revision guard of the projection, and a rebuild that reproduces the table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from eventsourcing.persistence import Tracking
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient
from tidemark_api_gateway import queries
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication, Gateway
from tidemark_api_gateway.auth import auth_middleware
from tidemark_api_gateway.main import api_options, api_router
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_api_gateway.requests import request_context_middleware
from tidemark_api_gateway.schedules import SchedulesView, configured_row
from tidemark_api_gateway.schemas import ScheduleIn, ScheduleOut
from tidemark_api_gateway.settings import GatewaySettings
from tidemark_contracts import SCHEDULE_COMMANDS, Envelope
from tidemark_contracts.backup import BackupCompleted, BackupRequested
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleConfigured, ScheduleSettings
from tidemark_devstack.e2e import make_token
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Pool, ProjectionRunner, compare, rebuild
from tidemark_platform.vault import KeyRing, SecretVault
from tidemark_schedules import ids
from tidemark_schedules.validation import effective_settings

pytestmark = pytest.mark.integration

SECRET = "schedule-tests-secret-of-a-sensible-length-0123"
CLUSTER = {
    "dataDirectory": "/srv/pg/data",
    "binDirectory": "/usr/lib/postgresql/15/bin",
    "port": 5433,
}


@dataclass
class Gw:
    client: AsyncTestClient[Litestar]
    pool: Pool
    schedules: ProjectionRunner
    gateway: Gateway
    org: uuid.UUID
    token: str

    def headers(self, org: uuid.UUID | None = None) -> dict[str, str]:
        token = self.token if org is None else make_token(org, secret=SECRET)
        return {"Authorization": f"Bearer {token}"}

    async def post(self, path: str, body: Any, org: uuid.UUID | None = None) -> httpx.Response:
        return await self.client.post(f"/api/v1{path}", json=body, headers=self.headers(org))

    async def put(self, path: str, body: Any, org: uuid.UUID | None = None) -> httpx.Response:
        return await self.client.put(f"/api/v1{path}", json=body, headers=self.headers(org))

    async def get(self, path: str, org: uuid.UUID | None = None) -> httpx.Response:
        return await self.client.get(f"/api/v1{path}", headers=self.headers(org))

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(f"/api/v1{path}", headers=self.headers())

    async def environment(self, *, cluster: bool = False) -> dict[str, Any]:
        await self.post("/secrets", {"name": "pw", "value": "s3cret"})
        project = await self.post("/projects", {"name": f"p-{uuid.uuid4().hex[:6]}"})
        assert project.status_code == 201, project.text
        body: dict[str, Any] = {
            "name": "production",
            "database": {"host": "db.example", "dbname": "shop", "user": "shop"}
            | {"passwordRef": "secret:pw"},
        }
        if cluster:
            body["cluster"] = CLUSTER
        created = await self.post(f"/projects/{project.json()['id']}/environments", body)
        assert created.status_code == 201, created.text
        resource: dict[str, Any] = created.json()
        return resource

    async def destination(self, *, is_default: bool = False) -> str:
        name = f"d-{uuid.uuid4().hex[:6]}"
        created = await self.post(
            "/destinations",
            {"name": name, "type": "local", "config": {"path": name}, "isDefault": is_default},
        )
        assert created.status_code == 201, created.text
        destination_id: str = created.json()["id"]
        return destination_id

    async def commands(self) -> list[ConfigureSchedule]:
        """The ConfigureSchedule commands in the outbox, oldest first (no relay runs)."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT value FROM {SCHEMA}.outbox WHERE topic = %s ORDER BY position",
                    (SCHEDULE_COMMANDS.name,),
                )
            ).fetchall()
        return [
            ConfigureSchedule.model_validate(Envelope.from_bytes(bytes(r["value"])).payload)
            for r in rows
        ]

    async def row(self, env_id: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            return await (
                await conn.execute(
                    f"SELECT * FROM {SCHEMA}.schedules WHERE environment_id = %s", (env_id,)
                )
            ).fetchone()


@pytest.fixture
async def gw(create_database: Callable[..., str]) -> AsyncIterator[Gw]:
    url = create_database("schedules")
    pool = connection_pool(url)
    await pool.open()
    catalog = CatalogApplication.on_postgres(url, CATALOG_SCHEMA)
    vault = SecretVault(url, KeyRing.parse(KeyRing.generate("k1")))
    vault.open()
    views = [ProjectionRunner(pool, SCHEMA, v) for v in (CatalogView(), BackupsView())]
    schedules = ProjectionRunner(pool, SCHEMA, SchedulesView())
    async with pool.connection() as conn:
        await migrate(conn, *views, schedules)
    gateway = Gateway(catalog, *views, lambda: None, vault, schedules_view=schedules)
    settings = GatewaySettings(database_url=url, jwt_secret=SECRET)  # type: ignore[call-arg]
    api = api_router(
        {
            "pool": Provide(lambda: pool, sync_to_thread=False),
            "gateway": Provide(lambda: gateway, sync_to_thread=False),
        }
    )
    app = Litestar(
        route_handlers=[api],
        middleware=[request_context_middleware, auth_middleware(settings)],
        **api_options(),
    )
    org = uuid.uuid4()
    try:
        async with AsyncTestClient(app) as client:
            yield Gw(client, pool, schedules, gateway, org, make_token(org, secret=SECRET))
    finally:
        vault.close()
        catalog.close()
        await pool.close()


def schedule(destinations: list[str], **fields: Any) -> dict[str, Any]:
    return {"destinationIds": destinations, **fields}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


# --- the body's own rules ---------------------------------------------------------------


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"retentionForever": True}, "retentionForever"),
    ({"dbFrequency": "custom", "dbCron": "61 * * * *"}, "dbCron"),
    ({"dbFrequency": "custom"}, "dbCron"),
    ({"dbFrequency": "daily", "dbCron": "5 4 * * *"}, "dbCron"),
    ({"dbFrequency": "none", "dbCron": "0 2 * * *"}, "dbCron"),
    ({"dbFrequency": "fortnightly"}, "dbFrequency"),
    ({"timezone": "Atlantis/Capital"}, "timezone"),
    ({"timezone": "Europe/Berlin\n"}, "timezone"),
    ({"retainDaily": -1}, "retainDaily"),
    ({"retainFullMonthly": -3}, "retainFullMonthly"),
    ({"retainWeeklyDays": -1}, "retainWeeklyDays"),
    ({"retainHourly": "5"}, "retainHourly"),
    ({"retainHourly": 2.5}, "retainHourly"),
    ({"retainMonthlyDays": 10**9}, "retainMonthlyDays"),
    ({"walEnabled": True, "walRetentionDays": 0}, "walRetentionDays"),
    ({"walEnabled": True, "walRetentionDays": 36}, "walRetentionDays"),
    ({"paused": "yes"}, "paused"),
    ({"destinationIds": []}, "destinationIds"),
    ({"destinationIds": ["not-a-uuid"]}, "destinationIds.0"),
]


@pytest.mark.parametrize(("hostile", "field"), HOSTILE)
async def test_a_hostile_field_is_422_naming_it(
    gw: Gw, hostile: dict[str, Any], field: str
) -> None:
    env = await gw.environment(cluster=True)
    destination = await gw.destination()
    response = await gw.put(
        f"/environments/{env['id']}/backups/schedule", schedule([destination], **hostile)
    )
    assert field in fields(response)
    assert await gw.row(env["id"]) is None
    assert await gw.commands() == []


async def test_a_rejected_cron_or_zone_is_never_repeated(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    response = await gw.put(
        f"/environments/{env['id']}/backups/schedule",
        schedule(
            [destination], dbFrequency="custom", dbCron="9 9 9 9 secretword", timezone="Pwn/Zone"
        ),
    )
    assert sorted(fields(response)) == ["dbCron", "timezone"]
    assert "secretword" not in response.text
    assert "Pwn/Zone" not in response.text


async def test_a_destination_of_another_organization_is_422_naming_its_index(gw: Gw) -> None:
    env = await gw.environment()
    ours = await gw.destination()
    other_org = uuid.uuid4()
    created = await gw.post(
        "/destinations",
        {"name": "theirs", "type": "local", "config": {"path": "theirs"}},
        org=other_org,
    )
    assert created.status_code == 201, created.text
    theirs = created.json()["id"]
    response = await gw.put(
        f"/environments/{env['id']}/backups/schedule",
        schedule([ours, theirs, str(uuid.uuid4())]),
    )
    body = problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["destinationIds[1]", "destinationIds[2]"]
    assert theirs not in response.text
    assert await gw.row(env["id"]) is None
    assert await gw.commands() == []


async def test_a_repeated_destination_is_422_naming_the_repetition(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    response = await gw.put(
        f"/environments/{env['id']}/backups/schedule", schedule([destination, destination])
    )
    assert fields(response) == ["destinationIds[1]"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"fullFrequency": "weekly"}, "fullFrequency"), ({"walEnabled": True}, "walEnabled")],
)
async def test_full_backups_or_wal_without_the_environments_cluster_is_422(
    gw: Gw, body: dict[str, Any], field: str
) -> None:
    env = await gw.environment(cluster=False)
    destination = await gw.destination()
    response = await gw.put(
        f"/environments/{env['id']}/backups/schedule", schedule([destination], **body)
    )
    assert fields(response) == [field]


async def test_a_foreign_or_unknown_environment_is_404_on_every_schedule_route(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    stranger = uuid.uuid4()
    for env_id, org in ((env["id"], stranger), (str(uuid.uuid4()), None)):
        path = f"/environments/{env_id}/backups/schedule"
        assert problem(await gw.get(path, org=org), 404)["detail"] == "environment not found"
        problem(await gw.put(path, schedule([destination]), org=org), 404)
        problem(await gw.post(f"{path}/retention-preview", {}, org=org), 404)
    assert await gw.commands() == []


async def test_an_environment_without_a_schedule_answers_404(gw: Gw) -> None:
    env = await gw.environment()
    body = problem(await gw.get(f"/environments/{env['id']}/backups/schedule"), 404)
    assert body["detail"] == "schedule not found"


async def test_the_preview_body_takes_retention_fields_only(gw: Gw) -> None:
    env = await gw.environment()
    path = f"/environments/{env['id']}/backups/schedule/retention-preview"
    assert fields(await gw.post(path, {"retainDaily": -1})) == ["retainDaily"]
    assert fields(await gw.post(path, {"timezone": "UTC"})) == ["timezone"]


# --- what a PUT does ----------------------------------------------------------------------


async def test_put_then_get_answers_the_effective_schedule(gw: Gw) -> None:
    env = await gw.environment(cluster=True)
    first, second = await gw.destination(), await gw.destination()
    body = schedule(
        [second, first],
        timezone="Europe/Berlin",
        dbFrequency="hourly",
        fullFrequency="custom",
        fullCron="30 1 * * 1",
        walEnabled=True,
        retainDaily=7,
        retainFullWeekly=4,
        retainHourlyDays=2,
    )
    before = datetime.now(UTC)
    put = await gw.put(f"/environments/{env['id']}/backups/schedule", body)
    assert put.status_code == 200, put.text
    got = await gw.get(f"/environments/{env['id']}/backups/schedule")
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer == put.json()
    assert set(answer) == set(ScheduleOut.model_json_schema(by_alias=True)["properties"])
    assert answer["destinationIds"] == [second, first]
    assert (answer["dbCron"], answer["fullCron"]) == ("0 * * * *", "30 1 * * 1")
    assert answer["walRetentionDays"] == 7  # the default when WAL is on
    assert (answer["retainDaily"], answer["retainFullWeekly"]) == (7, 4)
    assert answer["retainWeekly"] is None
    assert answer["environmentId"] == env["id"]
    assert answer["createdAt"] == answer["updatedAt"]
    next_db = datetime.fromisoformat(answer["nextDbBackupAt"])
    assert before < next_db <= before + timedelta(hours=1)
    assert next_db.minute == 0
    next_full = datetime.fromisoformat(answer["nextFullBackupAt"]).astimezone(
        ZoneInfo("Europe/Berlin")
    )
    assert (next_full.weekday(), next_full.hour, next_full.minute) == (0, 1, 30)


async def test_a_paused_schedule_has_no_next_backups(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    put = await gw.put(
        f"/environments/{env['id']}/backups/schedule", schedule([destination], paused=True)
    )
    assert put.status_code == 200, put.text
    assert (put.json()["nextDbBackupAt"], put.json()["nextFullBackupAt"]) == (None, None)


async def test_each_put_is_a_new_revision_committed_with_its_command(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    path = f"/environments/{env['id']}/backups/schedule"
    first = await gw.put(path, schedule([destination]))
    second = await gw.put(path, schedule([destination], dbFrequency="weekly", retainWeekly=3))
    assert first.status_code == second.status_code == 200
    assert second.json()["createdAt"] == first.json()["createdAt"]
    assert second.json()["updatedAt"] > first.json()["updatedAt"]
    commands = await gw.commands()
    assert [c.revision for c in commands] == [1, 2]
    for command in commands:
        assert command.schedule_id == ids.schedule_id(uuid.UUID(env["id"]))
        assert command.environment_id == uuid.UUID(env["id"])
        assert command.organization_id == gw.org
        assert command.project_id == uuid.UUID(env["projectId"])
        assert command.requested_by == "e2e-user"
    assert commands[1].settings.db_cron == "0 3 * * 0"
    assert commands[1].settings.retain_weekly == 3
    assert commands[1].created_at == commands[0].created_at
    row = await gw.row(env["id"])
    assert row is not None
    assert (row["revision"], row["settings"]["dbFrequency"]) == (2, "weekly")


async def test_concurrent_puts_each_get_a_revision_of_their_own(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    environment = await queries.environment(gw.pool, gw.org, uuid.UUID(env["id"]))
    assert environment is not None

    async def put(retain: int) -> ScheduleConfigured:
        settings = effective_settings(
            ScheduleSettings(destination_ids=[uuid.UUID(destination)], retain_daily=retain)
        )
        return await gw.gateway.configure_schedule(
            organization_id=gw.org,
            requested_by="alice",
            environment=environment,
            settings=settings,
            correlation_id=None,
        )

    configured = await asyncio.gather(*(put(n) for n in range(8)))
    assert sorted(c.revision for c in configured) == list(range(1, 9))
    commands = await gw.commands()
    assert [c.revision for c in commands] == list(range(1, 9))  # committed in turn
    last = max(configured, key=lambda c: c.revision)
    row = await gw.row(env["id"])
    assert row is not None
    assert (row["revision"], row["settings"]["retainDaily"]) == (8, last.settings.retain_daily)
    assert len({c.created_at for c in configured}) == 1


async def test_the_outbox_envelope_is_keyed_by_the_environment(gw: Gw) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    await gw.put(f"/environments/{env['id']}/backups/schedule", schedule([destination]))
    async with gw.pool.connection() as conn:
        [row] = await (
            await conn.execute(
                f"SELECT key, value FROM {SCHEMA}.outbox WHERE topic = %s",
                (SCHEDULE_COMMANDS.name,),
            )
        ).fetchall()
    envelope = Envelope.from_bytes(bytes(row["value"]))
    assert bytes(row["key"]) == envelope.key == env["id"].encode()
    assert envelope.message_type == ConfigureSchedule.message_type


# --- the projection ------------------------------------------------------------------------


def event_of(command: ConfigureSchedule, version: int) -> Envelope:
    """What the scheduler's relay publishes when it applies ``command``."""
    return Envelope.wrap(
        ScheduleConfigured.model_validate(command.model_dump()),
        producer="scheduler",
        organization_id=command.organization_id,
        environment_id=command.environment_id,
        aggregate_id=command.schedule_id,
        aggregate_version=version,
    )


async def test_an_older_revision_changes_nothing_and_a_rebuild_reproduces_the_table(
    gw: Gw,
) -> None:
    env = await gw.environment()
    destination = await gw.destination()
    path = f"/environments/{env['id']}/backups/schedule"
    await gw.put(path, schedule([destination]))
    await gw.put(path, schedule([destination], dbFrequency="monthly"))
    live = await gw.row(env["id"])
    revisions = await gw.commands()
    events = [event_of(c, version) for version, c in enumerate(revisions, start=1)]
    # The scheduler's events arrive after both PUTs: revision 1 is older than the row.
    for offset, envelope in enumerate(events):
        assert await gw.schedules.apply_at(envelope, Tracking("schedule.events:0", offset))
        assert await gw.row(env["id"]) == live
    async with gw.pool.connection() as conn:
        assert await rebuild(conn, SchedulesView(), "rebuilt_schedules", events) == 2
        assert await compare(conn, SchedulesView(), SCHEMA, "rebuilt_schedules") == []


async def test_versions_with_gaps_are_applied_in_order_of_revision(gw: Gw) -> None:
    """The scheduler's relay sends some of the Schedule aggregate's versions to
    backup.commands (the RequestBackup and DeleteBackup it issues): schedule.events sees
    versions 1, 2, 5, ... of one aggregate, live and in a rebuild."""
    env = await gw.environment()
    destination = await gw.destination()
    path = f"/environments/{env['id']}/backups/schedule"
    for frequency in ("daily", "weekly", "monthly"):
        assert (
            await gw.put(path, schedule([destination], dbFrequency=frequency))
        ).status_code == 200
    live = await gw.row(env["id"])
    events = [event_of(c, v) for c, v in zip(await gw.commands(), (1, 2, 5), strict=True)]
    async with gw.pool.connection() as conn:
        await conn.execute(f"DELETE FROM {SCHEMA}.schedules")  # as if written by events only
    for offset, envelope in enumerate(events):
        assert await gw.schedules.apply_at(envelope, Tracking("schedule.events:0", offset))
    assert await gw.row(env["id"]) == live
    assert not await gw.schedules.apply_at(events[2], Tracking("schedule.events:0", 2))
    async with gw.pool.connection() as conn:
        assert await rebuild(conn, SchedulesView(), "rebuilt_gaps", events) == 3
        assert await compare(conn, SchedulesView(), SCHEMA, "rebuilt_gaps") == []


async def test_an_event_of_a_later_revision_replaces_the_row() -> None:
    env, org = uuid.uuid4(), uuid.uuid4()
    settings = ScheduleSettings(destination_ids=[uuid.uuid4()], db_cron="0 2 * * *")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    event = ScheduleConfigured(
        schedule_id=ids.schedule_id(env),
        organization_id=org,
        project_id=uuid.uuid4(),
        environment_id=env,
        revision=3,
        settings=settings,
        requested_by="alice",
        created_at=at,
        updated_at=at,
    )
    row = configured_row({"revision": 2}, event)
    assert row is not None
    assert (row["revision"], row["settings"]["dbCron"]) == (3, "0 2 * * *")
    assert configured_row({"revision": 3}, event) == row
    assert configured_row({"revision": 4}, event) is None


def test_the_body_has_exactly_the_contracts_fields() -> None:
    """The API's body and the contract's settings cannot drift apart."""
    body = ScheduleIn.model_json_schema(by_alias=True)["properties"]
    contract = ScheduleSettings.model_json_schema(by_alias=True)["properties"]
    assert set(body) == set(contract)
    out = ScheduleOut.model_json_schema(by_alias=True)["properties"]
    assert set(out) - set(contract) == {
        "environmentId",
        "createdAt",
        "updatedAt",
        "nextDbBackupAt",
        "nextFullBackupAt",
    }


# --- the hooks: destinations of a schedule ---------------------------------------------------


async def test_a_destination_a_schedule_uses_cannot_be_deleted_until_it_stops(gw: Gw) -> None:
    env = await gw.environment()
    kept, used = await gw.destination(), await gw.destination()
    path = f"/environments/{env['id']}/backups/schedule"
    assert (await gw.put(path, schedule([kept, used]))).status_code == 200
    body = problem(await gw.delete(f"/destinations/{used}"), 409)
    assert "a schedule of the organization uses it" in body["detail"]
    assert (await gw.get(f"/destinations/{used}")).status_code == 200
    assert (await gw.put(path, schedule([kept]))).status_code == 200
    assert (await gw.delete(f"/destinations/{used}")).status_code == 204
    # A schedule naming it now finds it gone.
    assert fields(await gw.put(path, schedule([kept, used]))) == ["destinationIds[1]"]


async def test_a_manual_backup_without_destinations_goes_to_the_schedules(gw: Gw) -> None:
    env = await gw.environment()
    default = await gw.destination(is_default=True)
    first, second = await gw.destination(), await gw.destination()
    before = await gw.post(f"/environments/{env['id']}/backups", {"type": "db"})
    assert before.status_code == 202, before.text
    assert [d["destinationId"] for d in before.json()["destinations"]] == [default]
    path = f"/environments/{env['id']}/backups/schedule"
    assert (await gw.put(path, schedule([second, first]))).status_code == 200
    after = await gw.post(f"/environments/{env['id']}/backups", {"type": "db"})
    assert after.status_code == 202, after.text
    assert [d["destinationId"] for d in after.json()["destinations"]] == [second, first]
    named = await gw.post(
        f"/environments/{env['id']}/backups", {"type": "db", "destinationIds": [default]}
    )
    assert [d["destinationId"] for d in named.json()["destinations"]] == [default]


# --- presets ------------------------------------------------------------------------------


async def test_cron_presets_are_served_beside_the_backup_routes(gw: Gw) -> None:
    response = await gw.get("/backups/cron-presets")
    assert response.status_code == 200, response.text
    presets = response.json()
    assert {p["id"] for p in presets} >= {
        "hourly",
        "every-6-hours",
        "every-12-hours",
        "daily",
        "weekly",
        "monthly",
    }
    for preset in presets:
        assert set(preset) == {"id", "label", "cron", "frequency"}
    by_id = {p["id"]: p for p in presets}
    assert by_id["every-6-hours"] == {
        "id": "every-6-hours",
        "label": "Every 6 hours",
        "cron": "0 */6 * * *",
        "frequency": "custom",
    }
    # A preset's cron is what its frequency stands for in a PUT.
    env = await gw.environment()
    destination = await gw.destination()
    put = await gw.put(
        f"/environments/{env['id']}/backups/schedule",
        schedule([destination], dbFrequency="weekly", dbCron=by_id["weekly"]["cron"]),
    )
    assert put.status_code == 200, put.text


# --- the retention preview ---------------------------------------------------------------


async def completed(
    gw: Gw,
    env: dict[str, Any],
    backup_type: str,
    at: datetime,
    size: int,
    trigger: str = "scheduled",
) -> str:
    """A completed backup in the read model, written by its projection from the runner's
    events (unversioned, as the gateway writes rows ahead)."""
    backups = ProjectionRunner(gw.pool, SCHEMA, BackupsView())
    backup_id = uuid.uuid4()
    for message in (
        BackupRequested(
            backup_id=backup_id,
            organization_id=gw.org,
            project_id=uuid.UUID(env["projectId"]),
            environment_id=uuid.UUID(env["id"]),
            type=backup_type,  # type: ignore[arg-type]
            trigger=trigger,  # type: ignore[arg-type]
            requested_by="scheduler",
            requested_at=at,
            destinations=[],
        ),
        BackupCompleted(
            backup_id=backup_id,
            environment_id=uuid.UUID(env["id"]),
            size_bytes=size,
            checksum="sha256:" + "b" * 64,
            compression="zstd",
            completed_at=at + timedelta(minutes=1),
            duration_ms=60_000,
        ),
    ):
        await backups.apply_now(
            Envelope.wrap(
                message,
                producer="test",
                organization_id=gw.org,
                environment_id=uuid.UUID(env["id"]),
                aggregate_id=backup_id,
            )
        )
    return str(backup_id)


async def preview(gw: Gw, env: dict[str, Any], **settings: Any) -> dict[str, Any]:
    response = await gw.post(
        f"/environments/{env['id']}/backups/schedule/retention-preview", settings
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_preview_reads_periods_in_the_schedules_zone(gw: Gw) -> None:
    destination = await gw.destination()
    tokyo, utc = await gw.environment(), await gw.environment()
    for env, zone in ((tokyo, "Asia/Tokyo"), (utc, None)):
        if zone is not None:
            put = await gw.put(
                f"/environments/{env['id']}/backups/schedule",
                schedule([destination], timezone=zone),
            )
            assert put.status_code == 200, put.text
    day = datetime(2026, 11, 1, tzinfo=UTC)
    # 19:00 and 23:30 of 1 November in Tokyo, then 00:30 of 2 November; all 1 Nov in UTC.
    times = [day + timedelta(hours=10), day + timedelta(hours=14, minutes=30)]
    times.append(day + timedelta(hours=15, minutes=30))
    made = {
        name: [await completed(gw, env, "db", at, 10) for at in times]
        for name, env in (("tokyo", tokyo), ("utc", utc))
    }
    in_tokyo = await preview(gw, tokyo, retainDaily=2)
    # Two Tokyo days: the newest of each is kept, the first backup of 1 November goes.
    assert [d["backupId"] for d in in_tokyo["delete"]] == [made["tokyo"][0]]
    in_utc = await preview(gw, utc, retainDaily=2)
    # One UTC day (without a schedule the zone is UTC): its newest, and the oldest as
    # restic keeps it when a count is not reached; the middle one goes.
    assert [d["backupId"] for d in in_utc["delete"]] == [made["utc"][1]]
    assert in_utc["summary"] == {"keep": 2, "delete": 1, "freedBytes": 10}


async def test_the_preview_keeps_the_pitr_base_the_schedules_wal_needs(gw: Gw) -> None:
    destination = await gw.destination()
    with_wal, without = await gw.environment(cluster=True), await gw.environment(cluster=True)
    put = await gw.put(
        f"/environments/{with_wal['id']}/backups/schedule",
        schedule([destination], walEnabled=True, walRetentionDays=1),
    )
    assert put.status_code == 200, put.text
    now = datetime.now(UTC)
    made = {}
    for name, env in (("wal", with_wal), ("none", without)):
        made[name] = [
            await completed(gw, env, "full", now - timedelta(days=days), size)
            for days, size in ((5, 100), (3, 200), (0.1, 300))
        ]
        await completed(gw, env, "db", now - timedelta(days=4), 7, trigger="manual")
    wal = await preview(gw, with_wal, retainFullDaily=1)
    kept = {k["backupId"]: k["reasons"] for k in wal["keep"]}
    assert kept[made["wal"][1]] == ["pitr base"]  # the newest full before now - 1 day
    assert "newest" in kept[made["wal"][2]]
    assert any("manual" in reasons for reasons in kept.values())
    assert wal["delete"] == [
        {
            "backupId": made["wal"][0],
            "createdAt": wal["delete"][0]["createdAt"],
            "type": "full",
            "rule": wal["delete"][0]["rule"],
        }
    ]
    assert wal["summary"] == {"keep": 3, "delete": 1, "freedBytes": 100}
    plain = await preview(gw, without, retainFullDaily=1)
    assert [d["backupId"] for d in plain["delete"]] == [made["none"][1], made["none"][0]]
    assert plain["summary"]["freedBytes"] == 300
    # The preview changes nothing.
    assert (await preview(gw, without, retainFullDaily=1)) == plain
