"""The alerts and webhooks read models on a real PostgreSQL, fed with the contract events as
the alerts service's relay and the catalog's publish them: every event type, redelivery at
the same position, re-publication at a new one, and events that overtook their
predecessor (they wait: ``OutOfOrder``), then a rebuild that reproduces the tables."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_api_gateway.alerts_view import AlertsView
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_api_gateway.webhooks_view import WebhooksView
from tidemark_contracts import Envelope, Message
from tidemark_contracts.alert import (
    AlertDismissed,
    AlertRaised,
    AlertRead,
    AlertRepeated,
    AlertResolved,
    WebhookDeliveryAttempted,
)
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import OutOfOrder, Pool, ProjectionRunner, compare, rebuild

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OFFSETS = itertools.count(1)


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    pool = connection_pool(create_database("alerts_view"))
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def alerts(pool: Pool) -> ProjectionRunner:
    view = ProjectionRunner(pool, SCHEMA, AlertsView())
    async with pool.connection() as conn:
        await migrate(conn, view)
    return view


@pytest.fixture
async def webhooks(pool: Pool) -> ProjectionRunner:
    view = ProjectionRunner(pool, SCHEMA, WebhooksView())
    async with pool.connection() as conn:
        await migrate(conn, view)
    return view


class Alert:
    """One alert's events, numbered as the alerts service's store numbers them."""

    def __init__(self) -> None:
        self.id, self.org = uuid.uuid4(), uuid.uuid4()
        self.env: uuid.UUID | None = uuid.uuid4()
        self.backup = uuid.uuid4()
        self.sent: list[Envelope] = []

    def envelope(self, message: Message, version: int | None) -> Envelope:
        envelope = Envelope.wrap(
            message,
            producer="alerts",
            organization_id=self.org,
            environment_id=self.env,
            aggregate_id=self.id,
            aggregate_version=version,
        )
        self.sent.append(envelope)
        return envelope

    def raised(self, at: datetime = T0) -> AlertRaised:
        return AlertRaised(
            alert_id=self.id,
            organization_id=self.org,
            project_id=uuid.uuid4(),
            environment_id=self.env,
            backup_id=self.backup,
            kind="backup_failed",
            severity="critical",
            subject=f"environment:{self.env}:backup",
            title="Backup failed",
            message="The backup of production failed: connection refused. Check the database.",
            raised_at=at,
        )

    def repeated(self, occurrences: int, at: datetime, backup: uuid.UUID) -> AlertRepeated:
        return AlertRepeated(
            alert_id=self.id,
            organization_id=self.org,
            environment_id=self.env,
            backup_id=backup,
            title="Backup failed again",
            message=f"failed {occurrences} times",
            occurrences=occurrences,
            last_seen_at=at,
        )

    def resolved(self, at: datetime) -> AlertResolved:
        return AlertResolved(
            alert_id=self.id,
            organization_id=self.org,
            environment_id=self.env,
            reason="a later backup completed",
            resolved_at=at,
        )

    def read(self, at: datetime) -> AlertRead:
        return AlertRead(
            alert_id=self.id,
            organization_id=self.org,
            environment_id=self.env,
            read_by="u",
            read_at=at,
        )

    def dismissed(self, at: datetime) -> AlertDismissed:
        return AlertDismissed(
            alert_id=self.id,
            organization_id=self.org,
            environment_id=self.env,
            dismissed_by="u",
            dismissed_at=at,
        )


async def deliver(view: ProjectionRunner, envelope: Envelope, offset: int | None = None) -> bool:
    """Apply as the tracked consumer does: at a Kafka position of ``alert.events``."""
    position = next(OFFSETS) if offset is None else offset
    return await view.apply_at(envelope, Tracking("alert.events:0", position))


async def row(pool: Pool, table: str, **where: Any) -> dict[str, Any] | None:
    condition = " AND ".join(f"{column} = %s" for column in where)
    statement = f"SELECT * FROM {SCHEMA}.{table} WHERE {condition}"
    async with pool.connection() as conn:
        return await (await conn.execute(statement, list(where.values()))).fetchone()


async def alert_row(pool: Pool, alert: Alert) -> dict[str, Any]:
    found = await row(pool, "alerts", id=alert.id)
    assert found is not None
    return found


async def test_every_alert_event_shapes_the_row(pool: Pool, alerts: ProjectionRunner) -> None:
    alert = Alert()
    assert await deliver(alerts, alert.envelope(alert.raised(), 1))
    raised = await alert_row(pool, alert)
    assert raised | {"project_id": None} == {
        "id": alert.id,
        "organization_id": alert.org,
        "project_id": None,
        "environment_id": alert.env,
        "backup_id": alert.backup,
        "restore_id": None,
        "destination_id": None,
        "kind": "backup_failed",
        "severity": "critical",
        "subject": f"environment:{alert.env}:backup",
        "title": "Backup failed",
        "message": "The backup of production failed: connection refused. Check the database.",
        "occurrences": 1,
        "created_at": T0,
        "last_seen_at": T0,
        "read_at": None,
        "dismissed_at": None,
        "resolved_at": None,
    }
    later_backup = uuid.uuid4()
    t1, t2, t3, t4 = (T0 + timedelta(minutes=m) for m in (1, 2, 3, 4))
    assert await deliver(alerts, alert.envelope(alert.repeated(2, t1, later_backup), 2))
    repeated = await alert_row(pool, alert)
    assert (repeated["occurrences"], repeated["last_seen_at"]) == (2, t1)
    assert (repeated["title"], repeated["backup_id"]) == ("Backup failed again", later_backup)
    assert repeated["created_at"] == T0
    assert await deliver(alerts, alert.envelope(alert.read(t2), 3))
    assert await deliver(alerts, alert.envelope(alert.dismissed(t3), 4))
    assert await deliver(alerts, alert.envelope(alert.resolved(t4), 5))
    final = await alert_row(pool, alert)
    assert (final["read_at"], final["dismissed_at"], final["resolved_at"]) == (t2, t3, t4)


async def test_a_destination_alert_has_no_environment(pool: Pool, alerts: ProjectionRunner) -> None:
    alert = Alert()
    alert.env = None
    destination = uuid.uuid4()
    raised = AlertRaised(
        alert_id=alert.id,
        organization_id=alert.org,
        destination_id=destination,
        kind="destination_unreachable",
        severity="critical",
        subject=f"destination:{destination}",
        title="Destination unreachable",
        message="Uploads to the destination s3-main fail. Check its endpoint and credentials.",
        raised_at=T0,
    )
    await deliver(alerts, alert.envelope(raised, 1))
    found = await alert_row(pool, alert)
    assert (found["environment_id"], found["destination_id"]) == (None, destination)
    assert found["kind"] == "destination_unreachable"


async def test_a_redelivered_event_changes_nothing(pool: Pool, alerts: ProjectionRunner) -> None:
    alert = Alert()
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    repeat = alert.envelope(alert.repeated(2, T0 + timedelta(minutes=1), alert.backup), 2)
    offset = next(OFFSETS)
    assert await deliver(alerts, repeat, offset)
    before = await alert_row(pool, alert)
    # The same position again (a consumer that crashed before committing its offset) ...
    assert not await deliver(alerts, repeat, offset)
    # ... and the same events at new positions (re-published by the relay): the alert's
    # version says they were applied.
    await deliver(alerts, repeat)
    await deliver(alerts, alert.envelope(alert.raised(T0 + timedelta(hours=1)), 1))
    assert await alert_row(pool, alert) == before
    version = await row(pool, "projection_versions", aggregate_id=alert.id)
    assert version is not None
    assert (version["projection"], version["version"]) == ("gateway-alerts", 2)


async def test_an_event_before_the_alerts_raising_waits(
    pool: Pool, alerts: ProjectionRunner
) -> None:
    alert = Alert()
    t1 = T0 + timedelta(minutes=1)
    with pytest.raises(OutOfOrder):
        await deliver(alerts, alert.envelope(alert.repeated(2, t1, alert.backup), 2))
    assert await row(pool, "alerts", id=alert.id) is None
    # Unversioned (no guard to say so), the rule itself refuses a change of no row.
    for change in (alert.read(t1), alert.dismissed(t1), alert.resolved(t1)):
        with pytest.raises(OutOfOrder):
            await deliver(alerts, alert.envelope(change, None))
    # Once the raising arrives, the waiting event applies (its position was rolled back).
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    assert await deliver(alerts, alert.envelope(alert.repeated(2, t1, alert.backup), 2))
    assert (await alert_row(pool, alert))["occurrences"] == 2


async def test_an_event_after_a_gap_waits_for_the_missing_one(
    pool: Pool, alerts: ProjectionRunner
) -> None:
    alert = Alert()
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    with pytest.raises(OutOfOrder):
        await deliver(alerts, alert.envelope(alert.repeated(3, t2, alert.backup), 3))
    assert (await alert_row(pool, alert))["occurrences"] == 1
    assert await deliver(alerts, alert.envelope(alert.repeated(2, t1, alert.backup), 2))
    assert await deliver(alerts, alert.envelope(alert.repeated(3, t2, alert.backup), 3))
    found = await alert_row(pool, alert)
    assert (found["occurrences"], found["last_seen_at"]) == (3, t2)


async def test_read_and_dismissed_keep_the_first_time(pool: Pool, alerts: ProjectionRunner) -> None:
    alert = Alert()
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    first, later = T0 + timedelta(minutes=1), T0 + timedelta(minutes=5)
    # The gateway's own write, ahead of the alerts service's event (unversioned) ...
    await alerts.apply_now(alert.envelope(alert.read(first), None))
    await alerts.apply_now(alert.envelope(alert.dismissed(first), None))
    # ... then the service's events, with a later time: the first one stays.
    assert await deliver(alerts, alert.envelope(alert.read(later), 2))
    assert await deliver(alerts, alert.envelope(alert.dismissed(later), 3))
    assert await deliver(alerts, alert.envelope(alert.resolved(first), 4))
    found = await alert_row(pool, alert)
    assert (found["read_at"], found["dismissed_at"]) == (first, first)


async def test_an_older_repetition_does_not_undo_a_newer_one(
    pool: Pool, alerts: ProjectionRunner
) -> None:
    """Applied unversioned (the rule alone), a repetition counted lower changes nothing."""
    alert = Alert()
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    newest = uuid.uuid4()
    t3 = T0 + timedelta(minutes=3)
    await alerts.apply_now(alert.envelope(alert.repeated(3, t3, newest), None))
    await alerts.apply_now(alert.envelope(alert.repeated(2, T0, uuid.uuid4()), None))
    found = await alert_row(pool, alert)
    assert (found["occurrences"], found["last_seen_at"], found["backup_id"]) == (3, t3, newest)
    assert found["message"] == "failed 3 times"


def attempted(
    alert: Alert,
    delivery: uuid.UUID,
    webhook: uuid.UUID,
    attempt: int,
    status: str,
    **fields: Any,
) -> WebhookDeliveryAttempted:
    return WebhookDeliveryAttempted(
        delivery_id=delivery,
        webhook_id=webhook,
        organization_id=alert.org,
        alert_id=alert.id,
        environment_id=alert.env,
        change="alert.raised",
        attempt=attempt,
        status=status,  # type: ignore[arg-type]
        attempted_at=T0 + timedelta(seconds=attempt),
        **fields,
    )


async def test_each_delivery_attempt_is_one_row_whatever_its_order_or_repeats(
    pool: Pool, alerts: ProjectionRunner
) -> None:
    alert, delivery, webhook = Alert(), uuid.uuid4(), uuid.uuid4()
    retry_at = T0 + timedelta(seconds=5)
    first = attempted(
        alert,
        delivery,
        webhook,
        1,
        "retrying",
        response_status=500,
        error="the receiver answered 500",
        next_attempt_at=retry_at,
    )
    second = attempted(alert, delivery, webhook, 2, "delivered", response_status=204)
    # The delivery record's aggregate (the alerts service's business) is not numbered here:
    # the second attempt may come first, and repeats at any version change nothing.
    delivery_aggregate = uuid.uuid4()

    def envelope(message: Message, version: int) -> Envelope:
        return Envelope.wrap(
            message,
            producer="alerts",
            organization_id=alert.org,
            environment_id=alert.env,
            aggregate_id=delivery_aggregate,
            aggregate_version=version,
        )

    assert await deliver(alerts, envelope(second, 7))
    assert await deliver(alerts, envelope(first, 3))
    assert await deliver(alerts, envelope(first, 3))  # re-published: a new position
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                f"SELECT * FROM {SCHEMA}.webhook_deliveries WHERE delivery_id = %s "
                "ORDER BY attempt",
                (delivery,),
            )
        ).fetchall()
    assert [(r["attempt"], r["status"], r["response_status"]) for r in rows] == [
        (1, "retrying", 500),
        (2, "delivered", 204),
    ]
    assert rows[0]["error"] == "the receiver answered 500"
    assert rows[0]["next_attempt_at"] == retry_at
    assert {(r["webhook_id"], r["alert_id"], r["organization_id"]) for r in rows} == {
        (webhook, alert.id, alert.org)
    }
    # A delivery tells nothing about the alert's row (none was raised here).
    assert await row(pool, "alerts", id=alert.id) is None


def registration(org: uuid.UUID, webhook: uuid.UUID) -> WebhookRegistered:
    return WebhookRegistered(
        webhook_id=webhook,
        organization_id=org,
        url="https://hooks.example.com/t",
        signing_secret_ref="secret:hook",
        kinds=["backup_failed"],
        registered_at=T0,
    )


def catalog_envelope(message: Message, org: uuid.UUID, webhook: uuid.UUID, v: int) -> Envelope:
    return Envelope.wrap(
        message,
        producer="api-gateway",
        organization_id=org,
        environment_id=None,
        aggregate_id=webhook,
        aggregate_version=v,
    )


async def test_webhook_registrations_and_removals(pool: Pool, webhooks: ProjectionRunner) -> None:
    org, webhook = uuid.uuid4(), uuid.uuid4()
    registered = catalog_envelope(registration(org, webhook), org, webhook, 1)
    removed = catalog_envelope(
        WebhookRemoved(webhook_id=webhook, organization_id=org, removed_at=T0 + timedelta(1)),
        org,
        webhook,
        2,
    )
    # A removal ahead of its registration waits for it.
    with pytest.raises(OutOfOrder):
        await webhooks.apply_at(removed, Tracking("catalog.events:0", next(OFFSETS)))
    assert await webhooks.apply_at(registered, Tracking("catalog.events:0", next(OFFSETS)))
    found = await row(pool, "webhooks", id=webhook)
    assert found is not None
    assert (found["url"], found["signing_secret_ref"], found["kinds"]) == (
        "https://hooks.example.com/t",
        "secret:hook",
        ["backup_failed"],
    )
    assert (found["created_at"], found["removed_at"]) == (T0, None)
    assert await webhooks.apply_at(removed, Tracking("catalog.events:0", next(OFFSETS)))
    # The registration again (re-published) does not bring the webhook back.
    assert await webhooks.apply_at(registered, Tracking("catalog.events:0", next(OFFSETS)))
    found = await row(pool, "webhooks", id=webhook)
    assert found is not None
    assert found["removed_at"] == T0 + timedelta(1)


async def test_a_rebuild_from_the_events_reproduces_the_live_tables(
    pool: Pool, alerts: ProjectionRunner
) -> None:
    alert = Alert()
    t1 = T0 + timedelta(minutes=1)
    await deliver(alerts, alert.envelope(alert.raised(), 1))
    await deliver(alerts, alert.envelope(alert.repeated(2, t1, alert.backup), 2))
    await alerts.apply_now(alert.envelope(alert.read(t1), None))  # the gateway's write
    await deliver(alerts, alert.envelope(alert.read(t1), 3))  # the service's event
    await deliver(alerts, alert.envelope(alert.resolved(t1), 4))
    attempt = attempted(alert, uuid.uuid4(), uuid.uuid4(), 1, "failed", error="refused")
    await deliver(alerts, alert.envelope(attempt, None))
    # What the alerts service's stores hold: not the gateway's own (unversioned) write.
    stored = [e for e in alert.sent if e.aggregate_version is not None or e is alert.sent[-1]]
    async with pool.connection() as conn:
        assert await rebuild(conn, AlertsView(), "alerts_rebuilt", stored) == 5
        assert await compare(conn, AlertsView(), SCHEMA, "alerts_rebuilt") == []
