"""``/backups/alerts``: the organization's alerts, their counts, and marking one read or
dismissed. (Static paths: ``/backups/{backup_id:uuid}`` takes only ids, never ``alerts``.)"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from tidemark_api_gateway import queries
from tidemark_api_gateway.alerts import Alerts, Mark
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import Limit, Offset, answers, page_of
from tidemark_api_gateway.problems import not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.requests import RequestContext
from tidemark_api_gateway.schemas import AlertCountOut, AlertOut, Page

IncludeDismissed = Annotated[
    bool, Parameter(description="also list dismissed alerts (default: only undismissed ones)")
]


class AlertController(Controller):
    path = "/backups/alerts"
    tags = ["alerts"]

    @get("/", responses=answers())
    async def list_alerts(
        self,
        principal: Principal,
        pool: Pool,
        include_dismissed: IncludeDismissed = False,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[AlertOut]:
        """The organization's alerts, newest first (by ``createdAt``)."""
        dismissed = "" if include_dismissed else " AND dismissed_at IS NULL"
        return await page_of(
            AlertOut,
            pool,
            f"FROM {SCHEMA}.alerts WHERE organization_id = %s{dismissed}",
            (principal.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
        )

    @get("/count", responses=answers())
    async def count_alerts(self, principal: Principal, pool: Pool) -> AlertCountOut:
        """``count``: alerts neither read nor dismissed; ``unread`` and ``undismissed``
        beside it."""
        row = await queries.one(
            pool,
            "SELECT count(*) FILTER (WHERE read_at IS NULL AND dismissed_at IS NULL) AS count, "
            "count(*) FILTER (WHERE read_at IS NULL) AS unread, "
            "count(*) FILTER (WHERE dismissed_at IS NULL) AS undismissed "
            f"FROM {SCHEMA}.alerts WHERE organization_id = %s",
            (principal.organization_id,),
        )
        return AlertCountOut.model_validate(row)

    @post("/{alert_id:uuid}/read", status_code=HTTP_200_OK, responses=answers(404))
    async def read_alert(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        alert_id: uuid.UUID,
        alerts: Alerts,
    ) -> AlertOut:
        """Mark the alert read (not dismissed). Idempotent: a repeat keeps the first
        ``readAt``."""
        return await _mark(request, principal, alert_id, alerts, "read")

    @post("/{alert_id:uuid}/dismiss", status_code=HTTP_200_OK, responses=answers(404))
    async def dismiss_alert(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        alert_id: uuid.UUID,
        alerts: Alerts,
    ) -> AlertOut:
        """Dismiss the alert (it leaves the default list). Idempotent: a repeat keeps the
        first ``dismissedAt``."""
        return await _mark(request, principal, alert_id, alerts, "dismissed")


async def _mark(
    request: Request[Principal, str, Any],
    principal: Principal,
    alert_id: uuid.UUID,
    alerts: Alerts,
    mark: Mark,
) -> AlertOut:
    row = await alerts.mark(
        principal.organization_id,
        alert_id,
        mark,
        principal.subject,
        RequestContext.of(request).correlation_id,
    )
    if row is None:
        raise not_found("alert")
    return AlertOut.model_validate(row)
