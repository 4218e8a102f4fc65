"""``/projects/{id}/environments`` and ``/environments/{id}``: an organization's environments."""

from __future__ import annotations

import uuid

from litestar import Controller, Response, get, post
from litestar.status_codes import HTTP_201_CREATED

from tidemark_api_gateway import queries
from tidemark_api_gateway.application import Conflict, Gateway
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import (
    Limit,
    Offset,
    answers,
    created,
    location,
    page_of,
)
from tidemark_api_gateway.problems import Problem, not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.schemas import CreateEnvironment, EnvironmentOut, Page


async def _require_project(pool: Pool, principal: Principal, project_id: uuid.UUID) -> None:
    if await queries.project(pool, principal.organization_id, project_id) is None:
        raise not_found("project")


class EnvironmentController(Controller):
    tags = ["environments"]

    @post(
        "/projects/{project_id:uuid}/environments",
        status_code=HTTP_201_CREATED,
        responses=answers(404, 409),
        response_headers=location("environment"),
    )
    async def create_environment(
        self,
        principal: Principal,
        project_id: uuid.UUID,
        data: CreateEnvironment,
        gateway: Gateway,
        pool: Pool,
    ) -> Response[EnvironmentOut]:
        await _require_project(pool, principal, project_id)
        try:
            environment_id = await gateway.register_environment(
                principal.organization_id,
                project_id,
                data.name,
                data.database.model_dump(by_alias=True),
                data.cluster.model_dump(by_alias=True) if data.cluster else None,
                data.files_path,
            )
        except Conflict:
            raise Problem(
                409, f"the project already has an environment named {data.name!r}"
            ) from None
        row = await queries.environment(pool, principal.organization_id, environment_id)
        assert row is not None  # applied before register_environment returned
        return created(EnvironmentOut.model_validate(row), f"/api/v1/environments/{environment_id}")

    @get("/projects/{project_id:uuid}/environments", responses=answers(404))
    async def list_environments(
        self,
        principal: Principal,
        project_id: uuid.UUID,
        pool: Pool,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[EnvironmentOut]:
        await _require_project(pool, principal, project_id)
        return await page_of(
            EnvironmentOut,
            pool,
            f"FROM {SCHEMA}.environments WHERE organization_id = %s AND project_id = %s",
            (principal.organization_id, project_id),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
        )

    @get("/environments/{env_id:uuid}", responses=answers(404))
    async def get_environment(
        self, principal: Principal, env_id: uuid.UUID, pool: Pool
    ) -> EnvironmentOut:
        row = await queries.environment(pool, principal.organization_id, env_id)
        if row is None:
            raise not_found("environment")
        return EnvironmentOut.model_validate(row)
