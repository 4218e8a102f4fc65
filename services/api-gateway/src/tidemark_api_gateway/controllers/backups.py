"""Backups: request one, read one, list an environment's or a project's."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, cast

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_202_ACCEPTED
from psycopg.rows import DictRow
from tidemark_contracts.backup import BackupStatus, BackupType

from tidemark_api_gateway import queries
from tidemark_api_gateway.application import BackupInProgress, DestinationGone, Gateway
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import Limit, Offset, answers, location, page_size
from tidemark_api_gateway.problems import Problem, invalid, not_found
from tidemark_api_gateway.readmodel import Pool
from tidemark_api_gateway.requests import RequestContext
from tidemark_api_gateway.schemas import BackupOut, CreateBackup, Page

# ``?status=&type=`` as API.md writes it: an empty value is no filter.
StatusFilter = Annotated[
    BackupStatus | Literal[""] | None, Parameter(description="only backups in this status")
]
TypeFilter = Annotated[
    BackupType | Literal[""] | None, Parameter(query="type", description="only this type")
]


async def _environment(pool: Pool, principal: Principal, env_id: uuid.UUID) -> DictRow:
    row = await queries.environment(pool, principal.organization_id, env_id)
    if row is None:
        raise not_found("environment")
    return row


async def _destinations(
    pool: Pool, principal: Principal, env_id: uuid.UUID, ids: list[uuid.UUID] | None
) -> list[DictRow]:
    """The destinations named by the request, else the environment's schedule's, else the
    organization's defaults."""
    if ids is not None:
        found = await queries.destinations(pool, principal.organization_id, ids)
        known = {row["id"] for row in found}
        errors = [
            {"field": f"destinationIds[{i}]", "message": "unknown destination"}
            for i, destination_id in enumerate(ids)
            if destination_id not in known
        ]
        if errors:
            raise Problem(422, "unknown destination in destinationIds", errors)
        by_id = {row["id"]: row for row in found}
        return [by_id[i] for i in dict.fromkeys(ids)]
    scheduled = await queries.schedule_destinations(pool, principal.organization_id, env_id)
    if scheduled:
        return scheduled
    defaults = await queries.default_destinations(pool, principal.organization_id)
    if not defaults:
        raise invalid(
            "destinationIds",
            "no destinationIds given, and the environment has no schedule and the "
            "organization no default destination",
        )
    return defaults


async def _page(
    pool: Pool,
    backups: queries.BackupList,
    limit: int | None,
    offset: int,
    *,
    default: int,
    scope: str,
) -> Response[Page[BackupOut]]:
    """The page as PostgreSQL writes it (``BackupList.json_page``: the JSON of
    ``Page[BackupOut]``, pinned equal to it by a test), sent as it comes."""
    size = page_size(limit, default)
    body = await queries.backup_page_json(pool, backups, size, offset)
    if body is None:
        raise not_found(scope)
    # The annotation documents the body (OpenAPI); the content is that body, encoded.
    return Response(cast("Page[BackupOut]", body), media_type=MediaType.JSON)


class BackupController(Controller):
    tags = ["backups"]

    @post(
        "/environments/{env_id:uuid}/backups",
        status_code=HTTP_202_ACCEPTED,
        responses=answers(404, 409),
        response_headers=location("backup"),
    )
    async def request_backup(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        env_id: uuid.UUID,
        data: CreateBackup,
        gateway: Gateway,
        pool: Pool,
    ) -> Response[BackupOut]:
        environment = await _environment(pool, principal, env_id)
        if data.type == "full" and environment["cluster"] is None:
            raise invalid(
                "type", "a full backup needs the environment's cluster; this one has none"
            )
        destinations = await _destinations(pool, principal, env_id, data.requested_destinations)
        try:
            backup_id = await gateway.request_backup(
                organization_id=principal.organization_id,
                requested_by=principal.subject,
                environment=environment,
                destinations=destinations,
                backup_type=data.type,
                label=data.label,
                correlation_id=RequestContext.of(request).correlation_id,
            )
        except DestinationGone:
            raise Problem(
                409, "a destination of the backup was removed meanwhile; nothing was requested"
            ) from None
        backup = await queries.backup(pool, principal.organization_id, backup_id)
        return Response(
            BackupOut.model_validate(backup),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/backups/{backup_id}"},
        )

    @get("/environments/{env_id:uuid}/backups", responses=answers(404))
    async def list_environment_backups(
        self,
        principal: Principal,
        env_id: uuid.UUID,
        pool: Pool,
        status: StatusFilter = None,
        backup_type: TypeFilter = None,
        limit: Limit = 20,
        offset: Offset = 0,
    ) -> Response[Page[BackupOut]]:
        backups = queries.BackupList(
            principal.organization_id,
            environment_id=env_id,
            status=status or None,
            backup_type=backup_type or None,
        )
        return await _page(pool, backups, limit, offset, default=20, scope="environment")

    @get("/projects/{project_id:uuid}/backups", responses=answers(404))
    async def list_project_backups(
        self,
        principal: Principal,
        project_id: uuid.UUID,
        pool: Pool,
        status: StatusFilter = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response[Page[BackupOut]]:
        backups = queries.BackupList(
            principal.organization_id, project_id=project_id, status=status or None
        )
        return await _page(pool, backups, limit, offset, default=50, scope="project")

    @get("/backups/{backup_id:uuid}", responses=answers(404))
    async def get_backup(self, principal: Principal, backup_id: uuid.UUID, pool: Pool) -> BackupOut:
        row = await queries.backup(pool, principal.organization_id, backup_id)
        if row is None:
            raise not_found("backup")
        return BackupOut.model_validate(row)

    @delete(
        "/backups/{backup_id:uuid}",
        status_code=HTTP_202_ACCEPTED,
        responses=answers(404, 409),
        response_headers=location("backup"),
    )
    async def delete_backup(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        backup_id: uuid.UUID,
        gateway: Gateway,
        pool: Pool,
    ) -> Response[BackupOut]:
        """Mark the backup for deletion; its artifact is removed from every destination
        asynchronously (``deleting``, then ``deleted``; a destination that cannot be cleaned
        shows in ``error`` while it is retried). Repeating it is 202 again."""
        try:
            found = await gateway.delete_backup(
                organization_id=principal.organization_id,
                backup_id=backup_id,
                requested_by=principal.subject,
                correlation_id=RequestContext.of(request).correlation_id,
            )
        except BackupInProgress as exc:
            raise Problem(
                409,
                f"the backup is {exc.status}: it can be deleted once it has completed or failed",
            ) from None
        row = await queries.backup(pool, principal.organization_id, backup_id) if found else None
        if row is None:
            raise not_found("backup")
        return Response(
            BackupOut.model_validate(row),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/backups/{backup_id}"},
        )
