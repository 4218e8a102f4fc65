"""The alert and webhook endpoints on a real PostgreSQL (no Kafka: the outbox keeps what the
relay would publish, and the read model is fed the alerts service's contract events through
the gateway's projection, as its consumer would): list order and filters, paging bounds,
the counts before and after read and dismiss, idempotent repeats, another organization's
alerts and webhooks, every refusal of a webhook, and its deliveries."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import Tracking
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient
from tidemark_api_gateway.alerts import Alerts
from tidemark_api_gateway.alerts_view import AlertsView
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication, Gateway
from tidemark_api_gateway.auth import auth_middleware
from tidemark_api_gateway.main import api_options, api_router
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_api_gateway.requests import request_context_middleware
from tidemark_api_gateway.settings import GatewaySettings
from tidemark_api_gateway.webhooks_view import WebhooksView
from tidemark_contracts import CATALOG_EVENTS, Envelope, Message
from tidemark_contracts.alert import (
    ALERT_KINDS,
    AlertRaised,
    AlertRead,
    DismissAlert,
    MarkAlertRead,
    WebhookDeliveryAttempted,
)
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_contracts.topics import ALERT_COMMANDS
from tidemark_devstack.e2e import make_token
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Pool, ProjectionRunner, stored_envelopes
from tidemark_platform.vault import KeyRing, SecretVault
from tidemark_platform.webhook_policy import WebhookPolicy

pytestmark = pytest.mark.integration

SECRET = "alerts-api-tests-secret-of-a-sensible-length-0123"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OFFSETS = itertools.count(1)
# The tests' receivers listen on loopback over plain http, as the operator allows here.
POLICY = WebhookPolicy.parse("127.0.0.1,localhost", "")


@dataclass
class Gw:
    client: AsyncTestClient[Litestar]
    pool: Pool
    alerts_view: ProjectionRunner
    catalog: CatalogApplication
    vault: SecretVault
    org: uuid.UUID

    def headers(self, org: uuid.UUID | None = None, scope: str | None = None) -> dict[str, str]:
        claims: dict[str, Any] = {} if scope is None else {"scope": scope}
        token = make_token(org or self.org, secret=SECRET, **claims)
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, org: uuid.UUID | None = None) -> httpx.Response:
        return await self.client.get(f"/api/v1{path}", headers=self.headers(org))

    async def post(
        self, path: str, body: Any = None, org: uuid.UUID | None = None, scope: str | None = None
    ) -> httpx.Response:
        return await self.client.post(f"/api/v1{path}", json=body, headers=self.headers(org, scope))

    async def delete(self, path: str, org: uuid.UUID | None = None) -> httpx.Response:
        return await self.client.delete(f"/api/v1{path}", headers=self.headers(org))

    async def raise_alert(
        self, at: datetime, org: uuid.UUID | None = None, *, environment: bool = True
    ) -> uuid.UUID:
        """An alert as the alerts service raises it: its event through the projection."""
        alert_id, env, org = uuid.uuid4(), uuid.uuid4() if environment else None, org or self.org
        destination = None if environment else uuid.uuid4()
        raised = AlertRaised(
            alert_id=alert_id,
            organization_id=org,
            project_id=uuid.uuid4() if environment else None,
            environment_id=env,
            backup_id=uuid.uuid4() if environment else None,
            destination_id=destination,
            kind="backup_failed" if environment else "destination_unreachable",
            severity="critical",
            subject=f"environment:{env}:backup" if environment else f"destination:{destination}",
            title="Backup failed",
            message="The backup failed: connection refused. Check the database.",
            raised_at=at,
        )
        await self.event(raised, alert_id, 1, env, org)
        return alert_id

    async def event(
        self,
        message: Message,
        aggregate_id: uuid.UUID,
        version: int,
        env: uuid.UUID | None,
        org: uuid.UUID | None = None,
    ) -> None:
        envelope = Envelope.wrap(
            message,
            producer="alerts",
            organization_id=org or self.org,
            environment_id=env,
            aggregate_id=aggregate_id,
            aggregate_version=version,
        )
        await self.alerts_view.apply_at(envelope, Tracking("alert.events:0", next(OFFSETS)))

    async def commands(self) -> list[tuple[Envelope, Message]]:
        """The alert commands in the outbox, oldest first (no relay runs)."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT key, value FROM {SCHEMA}.outbox WHERE topic = %s ORDER BY position",
                    (ALERT_COMMANDS.name,),
                )
            ).fetchall()
        found = []
        for r in rows:
            envelope = Envelope.from_bytes(bytes(r["value"]))
            assert bytes(r["key"]) == envelope.key
            message_class = ALERT_COMMANDS.message_class(envelope.message_type)
            assert message_class is not None
            found.append((envelope, message_class.model_validate(envelope.payload)))
        return found

    async def secret(self, name: str = "hook") -> None:
        created = await self.post("/secrets", {"name": name, "value": "whsec-0123456789"})
        assert created.status_code == 201, created.text


@pytest.fixture
async def gw(create_database: Callable[..., str]) -> AsyncIterator[Gw]:
    url = create_database("alerts_api")
    pool = connection_pool(url)
    await pool.open()
    catalog = CatalogApplication.on_postgres(url, CATALOG_SCHEMA)
    vault = SecretVault(url, KeyRing.parse(KeyRing.generate("k1")))
    vault.open()
    views = [ProjectionRunner(pool, SCHEMA, v) for v in (CatalogView(), BackupsView())]
    alerts_view = ProjectionRunner(pool, SCHEMA, AlertsView())
    webhooks_view = ProjectionRunner(pool, SCHEMA, WebhooksView())
    async with pool.connection() as conn:
        await migrate(conn, *views, alerts_view, webhooks_view)
    gateway = Gateway(
        catalog,
        *views,
        lambda: None,
        vault,
        schedules_view=views[1],
        webhooks_view=webhooks_view,
        webhook_policy=POLICY,
    )
    alerts = Alerts(alerts_view, lambda: None)
    settings = GatewaySettings(database_url=url, jwt_secret=SECRET)  # type: ignore[call-arg]
    api = api_router(
        {
            "pool": Provide(lambda: pool, sync_to_thread=False),
            "gateway": Provide(lambda: gateway, sync_to_thread=False),
            "alerts": Provide(lambda: alerts, sync_to_thread=False),
        }
    )
    app = Litestar(
        route_handlers=[api],
        middleware=[request_context_middleware, auth_middleware(settings)],
        **api_options(),
    )
    try:
        async with AsyncTestClient(app) as client:
            yield Gw(client, pool, alerts_view, catalog, vault, uuid.uuid4())
    finally:
        vault.close()
        catalog.close()
        await pool.close()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def errors(response: httpx.Response) -> list[dict[str, str]]:
    found: list[dict[str, str]] = problem(response, 422)["errors"]
    return found


# --- alerts ---------------------------------------------------------------------------


async def test_the_list_is_newest_first_in_the_alert_shape(gw: Gw) -> None:
    oldest = await gw.raise_alert(T0)
    newest = await gw.raise_alert(T0 + timedelta(hours=2))
    middle = await gw.raise_alert(T0 + timedelta(hours=1), environment=False)
    await gw.raise_alert(T0 + timedelta(hours=3), org=uuid.uuid4())  # another organization's
    listed = await gw.get("/backups/alerts")
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert [i["id"] for i in page["items"]] == [str(newest), str(middle), str(oldest)]
    assert (page["total"], page["limit"], page["offset"]) == (3, 50, 0)
    item = page["items"][0]
    assert set(item) == {
        "id", "organizationId", "projectId", "environmentId", "backupId", "restoreId",
        "destinationId", "kind", "severity", "title", "message", "occurrences", "createdAt",
        "lastSeenAt", "readAt", "dismissedAt", "resolvedAt",
    }  # fmt: skip
    assert item["createdAt"] == "2026-11-01T14:00:00.000000Z"
    assert (item["kind"], item["severity"], item["occurrences"]) == ("backup_failed", "critical", 1)
    assert (item["readAt"], item["dismissedAt"]) == (None, None)
    destination_alert = page["items"][1]
    assert destination_alert["environmentId"] is None
    assert destination_alert["kind"] == "destination_unreachable"


async def test_paging_clamps_the_limit_and_refuses_bad_values(gw: Gw) -> None:
    ids = [await gw.raise_alert(T0 + timedelta(minutes=i)) for i in range(3)]
    second = (await gw.get("/backups/alerts?limit=1&offset=1")).json()
    assert [i["id"] for i in second["items"]] == [str(ids[1])]
    assert (second["total"], second["limit"], second["offset"]) == (3, 1, 1)
    clamped = (await gw.get("/backups/alerts?limit=1000")).json()
    assert (clamped["limit"], len(clamped["items"])) == (100, 3)
    for query, field in (
        ("limit=-1", "limit"),
        ("limit=x", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("include_dismissed=maybe", "include_dismissed"),
    ):
        refused = await gw.get(f"/backups/alerts?{query}")
        assert [e["field"] for e in errors(refused)] == [field], query


async def test_read_and_dismiss_change_the_counts_as_api_md_says(gw: Gw) -> None:
    a, b, c = [await gw.raise_alert(T0 + timedelta(minutes=i)) for i in range(3)]
    await gw.raise_alert(T0, org=uuid.uuid4())  # not counted: another organization's

    async def count() -> dict[str, int]:
        answered = await gw.get("/backups/alerts/count")
        assert answered.status_code == 200, answered.text
        body: dict[str, int] = answered.json()
        return body

    assert await count() == {"count": 3, "unread": 3, "undismissed": 3}
    read = await gw.post(f"/backups/alerts/{a}/read")
    assert read.status_code == 200, read.text
    assert read.json()["readAt"] is not None
    assert read.json()["dismissedAt"] is None
    assert await count() == {"count": 2, "unread": 2, "undismissed": 3}
    dismissed = await gw.post(f"/backups/alerts/{b}/dismiss")
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["readAt"] is None
    assert dismissed.json()["dismissedAt"] is not None
    assert await count() == {"count": 1, "unread": 2, "undismissed": 2}
    # Dismissing the read one: counted by neither count nor undismissed any more.
    assert (await gw.post(f"/backups/alerts/{a}/dismiss")).status_code == 200
    assert await count() == {"count": 1, "unread": 2, "undismissed": 1}
    # Dismissed alerts leave the default list, and come back with include_dismissed.
    default = (await gw.get("/backups/alerts")).json()
    assert [i["id"] for i in default["items"]] == [str(c)]
    assert default["total"] == 1
    everything = (await gw.get("/backups/alerts?include_dismissed=true")).json()
    assert [i["id"] for i in everything["items"]] == [str(c), str(b), str(a)]


async def test_repeats_are_idempotent_and_send_one_command_with_the_answers_time(gw: Gw) -> None:
    alert = await gw.raise_alert(T0)
    first = (await gw.post(f"/backups/alerts/{alert}/read")).json()
    again = await gw.post(f"/backups/alerts/{alert}/read")
    assert again.status_code == 200, again.text
    assert again.json()["readAt"] == first["readAt"]
    dismissed = (await gw.post(f"/backups/alerts/{alert}/dismiss")).json()
    assert (await gw.post(f"/backups/alerts/{alert}/dismiss")).json() == dismissed
    assert dismissed["readAt"] == first["readAt"]
    commands = await gw.commands()
    assert [type(m) for _, m in commands] == [MarkAlertRead, DismissAlert]
    (read_envelope, read_command), (_, dismiss_command) = commands
    assert isinstance(read_command, MarkAlertRead)
    assert isinstance(dismiss_command, DismissAlert)
    assert (read_command.alert_id, read_command.organization_id) == (alert, gw.org)
    assert read_command.requested_by == "e2e-user"
    assert read_command.requested_at == datetime.fromisoformat(first["readAt"])
    assert dismiss_command.requested_at == datetime.fromisoformat(dismissed["dismissedAt"])
    # Keyed as the alert's own events: by its environment.
    assert read_envelope.environment_id is not None
    assert str(read_envelope.environment_id) == first["environmentId"]
    # The alerts service's event then arrives with the command's time: nothing changes; a
    # later one (a second reader on another gateway) does not move the first time either.
    row_env = uuid.UUID(first["environmentId"])
    later = read_command.requested_at + timedelta(minutes=5)
    read_event = AlertRead(
        alert_id=alert, organization_id=gw.org, environment_id=row_env, read_by="x", read_at=later
    )
    await gw.event(read_event, alert, 2, row_env)
    listed = (await gw.get("/backups/alerts?include_dismissed=true")).json()["items"][0]
    assert listed["readAt"] == first["readAt"]


async def test_an_alert_without_environment_is_keyed_by_its_organization(gw: Gw) -> None:
    alert = await gw.raise_alert(T0, environment=False)
    assert (await gw.post(f"/backups/alerts/{alert}/dismiss")).status_code == 200
    [(envelope, command)] = await gw.commands()
    assert envelope.environment_id is None
    assert envelope.key == str(gw.org).encode()
    assert isinstance(command, DismissAlert)
    assert command.environment_id is None


async def test_another_organizations_or_an_unknown_alert_is_404(gw: Gw) -> None:
    foreign = await gw.raise_alert(T0, org=uuid.uuid4())
    for alert in (foreign, uuid.uuid4()):
        for action in ("read", "dismiss"):
            problem(await gw.post(f"/backups/alerts/{alert}/{action}"), 404)
    assert await gw.commands() == []
    # The foreign alert was not touched.
    theirs = await gw.get("/backups/alerts", org=None)
    assert theirs.json()["total"] == 0
    problem(await gw.post("/backups/alerts/not-a-uuid/read"), 404)


async def test_scopes_guard_alert_reads_and_writes(gw: Gw) -> None:
    alert = await gw.raise_alert(T0)
    problem(await gw.post(f"/backups/alerts/{alert}/read", scope="backups:read"), 403)
    problem(await gw.post(f"/backups/alerts/{alert}/dismiss", scope="backups:read"), 403)
    reader = await gw.client.get(
        "/api/v1/backups/alerts/count", headers=gw.headers(scope="backups:write")
    )
    problem(reader, 403)
    assert await gw.commands() == []
    problem(await gw.client.get("/api/v1/backups/alerts"), 401)


async def test_alert_paths_are_not_taken_for_backup_ids(gw: Gw) -> None:
    """``/backups/alerts`` beside ``/backups/{backup_id}``: the static path wins, and a
    backup id still reaches the backup routes."""
    assert (await gw.get("/backups/alerts")).status_code == 200
    assert (await gw.get("/backups/alerts/count")).status_code == 200
    problem(await gw.get(f"/backups/{uuid.uuid4()}"), 404)


# --- webhooks -------------------------------------------------------------------------


async def test_a_webhook_is_registered_listed_and_recorded_as_a_catalog_event(gw: Gw) -> None:
    await gw.secret()
    created = await gw.post(
        "/webhooks",
        {
            "url": "https://hooks.example.com/tidemark",
            "signingSecretRef": "secret:hook",
            "kinds": ["backup_failed", "destination_unreachable"],
        },
    )
    assert created.status_code == 201, created.text
    webhook = created.json()
    assert created.headers["location"] == f"/api/v1/webhooks/{webhook['id']}"
    assert webhook | {"id": None, "createdAt": None} == {
        "id": None,
        "organizationId": str(gw.org),
        "url": "https://hooks.example.com/tidemark",
        "signingSecretRef": "secret:hook",
        "kinds": ["backup_failed", "destination_unreachable"],
        "createdAt": None,
    }
    every_kind = await gw.post(
        "/webhooks", {"url": "http://127.0.0.1:9/hook", "signingSecretRef": "secret:hook"}
    )
    assert every_kind.status_code == 201, every_kind.text
    assert every_kind.json()["kinds"] == []
    listed = (await gw.get("/webhooks")).json()
    assert [w["id"] for w in listed["items"]] == [every_kind.json()["id"], webhook["id"]]
    assert listed["total"] == 2
    assert (await gw.get("/webhooks", org=uuid.uuid4())).json()["total"] == 0
    # The catalog event store holds the registration, as catalog.events will carry it.
    published = [
        env for env in stored_envelopes(gw.catalog, gw.catalog.to_envelope)
        if env.message_type == WebhookRegistered.message_type
    ]  # fmt: skip
    assert len(published) == 2
    message = WebhookRegistered.model_validate(published[0].payload)
    assert message.webhook_id == uuid.UUID(webhook["id"])
    assert (message.url, message.signing_secret_ref) == (webhook["url"], "secret:hook")
    assert message.kinds == ["backup_failed", "destination_unreachable"]
    assert CATALOG_EVENTS.message_class(published[0].message_type) is WebhookRegistered
    assert published[0].key == str(gw.org).encode()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "the URL must use https (plain http only to hosts"),
        ("https://169.254.169.254/latest/meta-data", "private, loopback, link-local"),
        ("https://10.1.2.3/hook", "private, loopback, link-local"),
        ("https://[::ffff:10.0.0.1]/hook", "private, loopback, link-local"),
        ("https://user:pw@hooks.example.com/x", "must not carry credentials"),
        ("ftp://hooks.example.com/x", "the URL must use https"),
        ("https://hooks.example.com/x#frag", "must not have a fragment"),
        ("https://127.0.0.2/x", "private, loopback, link-local"),
        ("https://metadata.localhost/x", "private, loopback, link-local"),
        ("not a url", "whitespace"),
    ],
)
async def test_a_webhook_url_the_policy_refuses_is_422_without_the_url(
    gw: Gw, url: str, reason: str
) -> None:
    await gw.secret()
    refused = await gw.post("/webhooks", {"url": url, "signingSecretRef": "secret:hook"})
    body = problem(refused, 422)
    assert [e["field"] for e in body["errors"]] == ["url"]
    assert reason in body["errors"][0]["message"]
    assert body["detail"] == f"url: {body['errors'][0]['message']}"
    for part in (url, url.split("//")[-1], "169.254.169.254", "10.1.2.3", "pw@"):
        if part and part != "not a url":
            assert part not in refused.text, part
    assert (await gw.get("/webhooks")).json()["total"] == 0
    assert await _webhook_uses(gw) == []


GOOD = {"url": "https://h.example.com/", "signingSecretRef": "secret:hook"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"signingSecretRef": "secret:hook"}, "url"),
        (GOOD | {"url": ""}, "url"),
        (GOOD | {"url": "https://h.example.com/" + "a" * 2100}, "url"),
        (GOOD | {"url": 5}, "url"),
        ({"url": "https://h.example.com/"}, "signingSecretRef"),
        (GOOD | {"signingSecretRef": "whsec_plaintext_value"}, "signingSecretRef"),
        (GOOD | {"signingSecretRef": "secret:nope"}, "signingSecretRef"),
        (GOOD | {"signingSecretRef": "env:HOOK_SECRET"}, "signingSecretRef"),
        (GOOD | {"kinds": ["nope"]}, "kinds"),
        (GOOD | {"kinds": ["backup_failed", "backup_failed"]}, "kinds"),
        (GOOD | {"kinds": "backup_failed"}, "kinds"),
        (GOOD | {"kinds": None}, "kinds"),
        (GOOD | {"secret": "x"}, "secret"),
    ],
)
async def test_every_webhook_field_is_validated(gw: Gw, body: dict[str, Any], field: str) -> None:
    await gw.secret()
    refused = await gw.post("/webhooks", body)
    found = errors(refused)
    assert [e["field"].split("[")[0].split(".")[0] for e in found] == [field], found
    assert "whsec_plaintext_value" not in refused.text
    assert (await gw.get("/webhooks")).json()["total"] == 0
    assert await _webhook_uses(gw) == []


async def test_every_kind_may_be_named(gw: Gw) -> None:
    await gw.secret()
    body = {"url": "https://h.example.com/", "signingSecretRef": "secret:hook"}
    created = await gw.post("/webhooks", body | {"kinds": list(ALERT_KINDS)})
    assert created.status_code == 201, created.text
    assert created.json()["kinds"] == list(ALERT_KINDS)


async def _webhook_uses(gw: Gw) -> list[Any]:
    return [u for u in gw.vault.users(gw.org, "hook") if u.kind == "webhook"]


async def test_the_signing_secret_is_held_while_the_webhook_exists(gw: Gw) -> None:
    await gw.secret()
    created = await gw.post(
        "/webhooks", {"url": "https://h.example.com/", "signingSecretRef": "secret:hook"}
    )
    webhook_id = created.json()["id"]
    assert [str(u.user_id) for u in await _webhook_uses(gw)] == [webhook_id]
    in_use = problem(await gw.delete("/secrets/hook"), 409)
    assert webhook_id in in_use["detail"]
    removed = await gw.delete(f"/webhooks/{webhook_id}")
    assert removed.status_code == 204, removed.text
    assert await _webhook_uses(gw) == []
    assert (await gw.delete("/secrets/hook")).status_code == 204


async def test_deleting_a_webhook_is_204_then_404_and_another_organizations_is_404(
    gw: Gw,
) -> None:
    await gw.secret()
    body = {"url": "https://h.example.com/", "signingSecretRef": "secret:hook"}
    webhook_id = (await gw.post("/webhooks", body)).json()["id"]
    other = uuid.uuid4()
    problem(await gw.delete(f"/webhooks/{webhook_id}", org=other), 404)
    problem(await gw.get(f"/webhooks/{webhook_id}/deliveries", org=other), 404)
    assert (await gw.get("/webhooks")).json()["total"] == 1
    assert len(await _webhook_uses(gw)) == 1
    assert (await gw.delete(f"/webhooks/{webhook_id}")).status_code == 204
    problem(await gw.delete(f"/webhooks/{webhook_id}"), 404)
    problem(await gw.delete(f"/webhooks/{uuid.uuid4()}"), 404)
    problem(await gw.get(f"/webhooks/{webhook_id}/deliveries"), 404)
    assert (await gw.get("/webhooks")).json()["total"] == 0
    removals = [
        env for env in stored_envelopes(gw.catalog, gw.catalog.to_envelope)
        if env.message_type == WebhookRemoved.message_type
    ]  # fmt: skip
    assert [WebhookRemoved.model_validate(e.payload).webhook_id for e in removals] == [
        uuid.UUID(webhook_id)
    ]


async def test_the_deliveries_of_a_webhook_newest_first(gw: Gw) -> None:
    await gw.secret()
    body = {"url": "https://h.example.com/", "signingSecretRef": "secret:hook"}
    webhook_id = uuid.UUID((await gw.post("/webhooks", body)).json()["id"])
    other_webhook = uuid.UUID((await gw.post("/webhooks", body)).json()["id"])
    alert = await gw.raise_alert(T0)
    delivery = uuid.uuid4()

    async def attempt(n: int, status: str, hook: uuid.UUID = webhook_id, **fields: Any) -> None:
        message = WebhookDeliveryAttempted(
            delivery_id=delivery if hook == webhook_id else uuid.uuid4(),
            webhook_id=hook,
            organization_id=gw.org,
            alert_id=alert,
            environment_id=None,
            change="alert.raised",
            attempt=n,
            status=status,  # type: ignore[arg-type]
            attempted_at=T0 + timedelta(seconds=10 * n),
            **fields,
        )
        await gw.event(message, uuid.uuid4(), 1, None)

    await attempt(
        1,
        "retrying",
        response_status=500,
        error="the receiver answered 500",
        next_attempt_at=T0 + timedelta(seconds=12),
    )
    await attempt(2, "delivered", response_status=200)
    await attempt(1, "delivered", hook=other_webhook, response_status=204)
    listed = await gw.get(f"/webhooks/{webhook_id}/deliveries")
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] == 2
    assert page["items"] == [
        {
            "id": str(delivery),
            "alertId": str(alert),
            "event": "alert.raised",
            "attempt": 2,
            "status": "delivered",
            "responseStatus": 200,
            "error": None,
            "at": "2026-11-01T12:00:20.000000Z",
            "nextAttemptAt": None,
        },
        {
            "id": str(delivery),
            "alertId": str(alert),
            "event": "alert.raised",
            "attempt": 1,
            "status": "retrying",
            "responseStatus": 500,
            "error": "the receiver answered 500",
            "at": "2026-11-01T12:00:10.000000Z",
            "nextAttemptAt": "2026-11-01T12:00:12.000000Z",
        },
    ]
    one = (await gw.get(f"/webhooks/{webhook_id}/deliveries?limit=1&offset=1")).json()
    assert [(i["attempt"], one["limit"], one["offset"]) for i in one["items"]] == [(1, 1, 1)]
    assert (await gw.get(f"/webhooks/{webhook_id}/deliveries?limit=500")).json()["limit"] == 100
    refused = await gw.get(f"/webhooks/{webhook_id}/deliveries?limit=-1")
    assert [e["field"] for e in errors(refused)] == ["limit"]
