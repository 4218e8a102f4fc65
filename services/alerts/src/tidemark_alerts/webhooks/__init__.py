"""Webhook delivery of alert changes: what the alerts service wires in with
``install_webhooks`` (see the README, Webhooks).

- ``projection``: alert.events → an alert snapshot and one delivery row per change and
  matching webhook (webhooks followed from catalog.events), schema ``alert_webhooks``;
- ``deliverer``: claims due rows on every instance and POSTs them through ``transport``
  (the SSRF-checked connection), each attempt recorded by ``application`` (the
  ``WebhookDelivery`` event store) and relayed to alert.events.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from faststream.kafka import KafkaBroker
from tidemark_contracts import Message
from tidemark_platform.consumer import Delivery
from tidemark_platform.credentials import resolve_secret
from tidemark_platform.database import Pool, connection_pool
from tidemark_platform.leadership import Leadership
from tidemark_platform.logging import get_logger
from tidemark_platform.notification_log import NotificationLogSource
from tidemark_platform.projection import Projection, ProjectionRunner
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.vault import SecretVault

from tidemark_alerts.webhooks.application import WebhookDeliveryApplication
from tidemark_alerts.webhooks.deliverer import Deliverer, DeliveryTable
from tidemark_alerts.webhooks.domain import RetryPolicy
from tidemark_alerts.webhooks.projection import AlertDeliveriesProjection, WebhookRegistrations
from tidemark_alerts.webhooks.settings import WebhookSettings
from tidemark_alerts.webhooks.transport import WebhookClient

__all__ = ["SCHEMA", "WebhookSettings", "install_webhooks"]

log = get_logger(__name__)

SCHEMA = "alert_webhooks"
DELIVERIES_GROUP = "alerts-webhooks"
WEBHOOKS_GROUP = "alerts-webhooks-catalog"
RELAY_NAME = "kafka"


class _GatedRunner(ProjectionRunner):
    """A projection runner whose consumer waits until the tables exist (they are created
    by a background task of the runtime, which may start after the consumer)."""

    def __init__(self, pool: Pool, schema: str, projection: Projection, ready: asyncio.Event):
        super().__init__(pool, schema, projection)
        self._ready = ready

    async def handle(self, message: Message, delivery: Delivery) -> None:
        await self._ready.wait()
        await super().handle(message, delivery)

    async def positions(self, stream_suffix: str) -> dict[str, int]:
        await self._ready.wait()
        return await super().positions(stream_suffix)


def install_webhooks(
    runtime: ServiceRuntime, settings: WebhookSettings, broker: KafkaBroker
) -> None:
    """Register the webhook projections, the attempts' relay to alert.events and the
    deliverer on ``runtime``; everything is opened in the runtime's start-up and closed
    at its shutdown. ``settings`` is the service's Settings (it inherits WebhookSettings);
    the database is the runtime's."""
    database_url = runtime.settings.database_url
    app = WebhookDeliveryApplication.on_postgres(database_url, SCHEMA)
    leadership = Leadership(database_url, NotificationLogSource.log_name(app, RELAY_NAME))
    relay = runtime.add_relay(NotificationLogSource(app, app.to_envelope, RELAY_NAME, leadership))

    max_in_flight = settings.webhook_max_in_flight
    pool = connection_pool(database_url, min_size=1, max_size=6)
    vault = SecretVault(database_url, settings.keyring()) if settings.secrets_keys else None
    if vault is None:
        log.warning("webhook_vault_disabled", reason="TIDEMARK_SECRETS_KEYS is not set")
    credentials = settings.credential_policy()

    async def secret_of(ref: str, organization_id: UUID) -> str | None:
        return await asyncio.to_thread(resolve_secret, ref, organization_id, credentials, vault)

    client = WebhookClient(settings.policy(), settings.webhook_timeout_seconds, max_in_flight)
    deliverer = Deliverer(
        DeliveryTable(pool, SCHEMA),
        app,
        client,
        secret_of,
        RetryPolicy(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_delay_seconds,
            settings.webhook_retry_for_seconds,
        ),
        owner=runtime.instance_id,
        max_in_flight=max_in_flight,
        max_per_webhook=settings.webhook_max_in_flight_per_webhook,
        claim_seconds=settings.claim_seconds(),
        poll_seconds=settings.webhook_poll_seconds,
        on_recorded=relay.wake,
    )

    ready = asyncio.Event()
    deliveries = _GatedRunner(pool, SCHEMA, AlertDeliveriesProjection(deliverer.wake), ready)
    webhooks = _GatedRunner(pool, SCHEMA, WebhookRegistrations(deliverer.wake), ready)
    deliveries.subscribe(broker, DELIVERIES_GROUP, service=runtime.name)
    webhooks.subscribe(broker, WEBHOOKS_GROUP, service=runtime.name)

    async def deliver_webhooks() -> None:
        if not ready.is_set():
            await pool.open(wait=True, timeout=30)
            async with pool.connection() as conn:
                await deliveries.migrate(conn)
                await webhooks.migrate(conn)
            if vault is not None:
                await asyncio.to_thread(vault.open)
            ready.set()
        await deliverer.run()

    runtime.add_background(deliver_webhooks)
    runtime.on_shutdown(client.aclose)
    runtime.on_shutdown(leadership.close)
    runtime.on_shutdown(app.close)
    runtime.on_shutdown(pool.close)
    if vault is not None:
        runtime.on_shutdown(vault.close)
