"""``/webhooks``: where an organization's alert changes are POSTed, signed, and each
delivery attempt."""

from __future__ import annotations

import uuid

from litestar import Controller, Response, delete, get, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from tidemark_api_gateway import queries
from tidemark_api_gateway.application import Gateway, Gone
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import (
    Limit,
    Offset,
    answers,
    created,
    location,
    page_of,
)
from tidemark_api_gateway.problems import not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.schemas import CreateWebhook, Page, WebhookDeliveryOut, WebhookOut

LIVE = f"FROM {SCHEMA}.webhooks WHERE organization_id = %s AND removed_at IS NULL"


async def _webhook(pool: Pool, principal: Principal, webhook_id: uuid.UUID) -> WebhookOut | None:
    row = await queries.one(
        pool, f"SELECT * {LIVE} AND id = %s", (principal.organization_id, webhook_id)
    )
    return None if row is None else WebhookOut.model_validate(row)


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses=answers(),
        response_headers=location("webhook"),
        description=(
            "Register a webhook: each change of the organization's alerts of `kinds` is "
            "POSTed to `url` as JSON, with the headers `Tidemark-Signature` "
            '(`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the '
            "signing secret>`; receivers refuse a `t` more than 300 s away), "
            "`Tidemark-Delivery` (the same for every attempt at one change) and "
            "`Tidemark-Event`. Failed attempts are retried with exponential backoff for a "
            "bounded time. 422 for a URL the operator's policy refuses (the reason, never "
            "the URL) and for a signing secret the organization does not have."
        ),
    )
    async def create_webhook(
        self, principal: Principal, data: CreateWebhook, gateway: Gateway, pool: Pool
    ) -> Response[WebhookOut]:
        webhook_id = await gateway.register_webhook(
            principal.organization_id, data.url, data.signing_secret_ref, list(data.kinds)
        )
        webhook = await _webhook(pool, principal, webhook_id)
        assert webhook is not None  # applied to the view before register_webhook returned
        return created(webhook, f"/api/v1/webhooks/{webhook_id}")

    @get("/", responses=answers())
    async def list_webhooks(
        self, principal: Principal, pool: Pool, limit: Limit = 50, offset: Offset = 0
    ) -> Page[WebhookOut]:
        return await page_of(
            WebhookOut,
            pool,
            LIVE,
            (principal.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
        )

    @delete("/{webhook_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=answers(404))
    async def delete_webhook(
        self, principal: Principal, webhook_id: uuid.UUID, gateway: Gateway
    ) -> None:
        """Remove the webhook: nothing more is delivered to it, and its signing secret may
        be deleted."""
        try:
            await gateway.remove_webhook(principal.organization_id, webhook_id)
        except Gone:
            raise not_found("webhook") from None

    @get("/{webhook_id:uuid}/deliveries", responses=answers(404))
    async def list_webhook_deliveries(
        self,
        principal: Principal,
        webhook_id: uuid.UUID,
        pool: Pool,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[WebhookDeliveryOut]:
        """Every delivery attempt to the webhook, newest first."""
        if await _webhook(pool, principal, webhook_id) is None:
            raise not_found("webhook")
        return await page_of(
            WebhookDeliveryOut,
            pool,
            f"FROM {SCHEMA}.webhook_deliveries WHERE organization_id = %s AND webhook_id = %s",
            (principal.organization_id, webhook_id),
            "attempted_at DESC, attempt DESC, delivery_id",
            limit=limit,
            offset=offset,
            columns="delivery_id AS id, alert_id, change AS event, attempt, status, "
            "response_status, error, attempted_at AS at, next_attempt_at",
        )
