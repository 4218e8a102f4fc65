"""The webhooks of the catalog, as the alerts service keeps them (real PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_platform.catalog import WebhookCatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Pool, ProjectionRunner

pytestmark = pytest.mark.integration

ORG = uuid.uuid4()
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    pool = connection_pool(create_database("hookcat"))
    await pool.open()
    yield pool
    await pool.close()


def envelope(message: WebhookRegistered | WebhookRemoved, version: int) -> Envelope:
    return Envelope.wrap(
        message,
        producer="test",
        organization_id=ORG,
        environment_id=None,
        aggregate_id=message.webhook_id,
        aggregate_version=version,
    )


async def test_webhooks_are_kept_until_removed_and_a_republished_registration_stays_removed(
    pool: Pool,
) -> None:
    runner = ProjectionRunner(pool, "hooks_view", WebhookCatalogView())
    async with pool.connection() as conn:
        await runner.migrate(conn)
    webhook_id = uuid.uuid4()
    registered = WebhookRegistered(
        webhook_id=webhook_id,
        organization_id=ORG,
        url="https://hooks.example.com/tidemark",
        signing_secret_ref="secret:hook",
        kinds=["backup_failed", "restore_failed"],
        registered_at=T0,
    )
    await runner.apply_at(envelope(registered, 1), Tracking("catalog.events:0", 1))

    async def rows() -> list[dict[str, object]]:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT * FROM hooks_view.webhooks")
            return list(await cursor.fetchall())

    [row] = await rows()
    assert row["url"] == "https://hooks.example.com/tidemark"
    assert row["kinds"] == ["backup_failed", "restore_failed"]
    assert row["signing_secret_ref"] == "secret:hook"
    assert row["organization_id"] == ORG

    removed = WebhookRemoved(webhook_id=webhook_id, organization_id=ORG, removed_at=T0)
    await runner.apply_at(envelope(removed, 2), Tracking("catalog.events:0", 2))
    assert await rows() == []
    # A relay re-publishing its tail brings the registration back: it stays removed.
    await runner.apply_at(envelope(registered, 1), Tracking("catalog.events:0", 3))
    assert await rows() == []
