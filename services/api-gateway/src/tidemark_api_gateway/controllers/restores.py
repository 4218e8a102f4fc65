"""Restores: request one from a backup, read one, list an environment's restore log, and
follow the latest restore of a backup live (SSE)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_202_ACCEPTED

from tidemark_api_gateway import queries
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import Limit, Offset, answers, location, page_of
from tidemark_api_gateway.controllers.progress import LAST_EVENT_ID, _answers, parse_last_event_id
from tidemark_api_gateway.problems import Problem, not_found
from tidemark_api_gateway.progress import RestoreProgressHub
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.requests import RequestContext
from tidemark_api_gateway.restores import (
    RestoreRequest,
    Restores,
    latest_restore_of,
    restore_row,
)
from tidemark_api_gateway.schemas import CreateRestore, Page, RestoreOut


class RestoreController(Controller):
    tags = ["restores"]

    @post(
        "/backups/{backup_id:uuid}/restore",
        status_code=HTTP_202_ACCEPTED,
        responses=answers(404, 409),
        response_headers=location("restore"),
        description=(
            "Validate and enqueue a restore of the backup. 404: unknown backup, or a "
            "`targetEnvironmentId` not of the caller's organization. 422: `targetType` `new`, "
            "`other` without `targetEnvironmentId`, a body `backupId` other than the path's, "
            "a backup that is not `completed` (422, not 409: the request names something that "
            "cannot be restored; waiting does not always help), a `pitrTimestamp` outside the "
            "coverage (the coverage in `detail`), a `full`/PITR restore into an environment "
            "without a cluster, no destination for the safety backup, unknown fields. 409: a "
            "restore into the same target is already pending or running."
        ),
    )
    async def request_restore(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        backup_id: uuid.UUID,
        data: CreateRestore,
        restores: Restores,
        pool: Pool,
    ) -> Response[RestoreOut]:
        restore_id = await restores.request(
            principal.organization_id,
            principal.subject,
            RestoreRequest(
                backup_id=backup_id,
                body_backup_id=data.backup_id,
                target_type=data.target_type,
                target_environment_id=data.target_environment_id,
                pitr_timestamp=data.pitr_timestamp,
                create_safety_backup=data.create_safety_backup,
            ),
            RequestContext.of(request).correlation_id,
        )
        row = await restore_row(pool, principal.organization_id, restore_id)
        assert row is not None  # written in the accepting transaction
        return Response(
            RestoreOut.model_validate(row),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/restores/{restore_id}"},
        )

    @get("/restores/{restore_id:uuid}", responses=answers(404))
    async def get_restore(
        self, principal: Principal, restore_id: uuid.UUID, pool: Pool
    ) -> RestoreOut:
        row = await restore_row(pool, principal.organization_id, restore_id)
        if row is None:
            raise not_found("restore")
        return RestoreOut.model_validate(row)

    @get("/environments/{environment_id:uuid}/restore-logs", responses=answers(404))
    async def restore_logs(
        self,
        principal: Principal,
        environment_id: uuid.UUID,
        pool: Pool,
        limit: Limit = 20,
        offset: Offset = 0,
    ) -> Page[RestoreOut]:
        """Restores whose source or target is the environment, newest first."""
        if await queries.environment(pool, principal.organization_id, environment_id) is None:
            raise not_found("environment")
        return await page_of(
            RestoreOut,
            pool,
            f"FROM {SCHEMA}.restores WHERE organization_id = %s "
            "AND (source_environment_id = %s OR target_environment_id = %s)",
            [principal.organization_id, environment_id, environment_id],
            "created_at DESC, id DESC",
            limit=limit,
            offset=offset,
            default=20,
        )

    @get(
        "/backups/{backup_id:uuid}/restore/progress",
        responses=_answers(),
        media_type="text/event-stream",
        description=(
            "Server-Sent Events of the latest restore of this backup, with the rules of "
            "`/backups/{id}/progress`: the current state, live `progress` events "
            "`{restoreId, status, phase, percent, bytesDone, bytesTotal, message, at}` "
            "(phases waiting_for_safety_backup, downloading, verifying, restoring, swapping "
            "or replaying, done), then `completed` or `failed` with the final Restore. 404 "
            "when the backup has never been restored."
        ),
    )
    async def restore_progress(
        self,
        principal: Principal,
        backup_id: uuid.UUID,
        pool: Pool,
        restore_progress: RestoreProgressHub,
        last_event_id: Annotated[
            str | None,
            Parameter(header=LAST_EVENT_ID, required=False, description="resume after this id"),
        ] = None,
    ) -> ServerSentEvent:
        row = await latest_restore_of(pool, principal.organization_id, backup_id)
        if row is None:
            raise not_found("restore of this backup")
        resume_from = parse_last_event_id(last_event_id)
        if not restore_progress.connected.is_set():
            raise Problem(503, "live progress is not available yet; retry")
        organization_id = principal.organization_id
        restore_id = row["id"]

        async def read_state() -> dict[str, Any] | None:
            found = await restore_row(pool, organization_id, restore_id)
            if found is None:
                return None
            state: dict[str, Any] = RestoreOut.model_validate(found).model_dump(
                mode="json", by_alias=True
            )
            return state

        return ServerSentEvent(
            restore_progress.stream(
                restore_id, row["target_environment_id"], read_state, resume_from
            )
        )
