"""``/projects``: register and read an organization's projects."""

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
from tidemark_api_gateway.schemas import CreateProject, Page, ProjectOut


class ProjectController(Controller):
    path = "/projects"
    tags = ["projects"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses=answers(409),
        response_headers=location("project"),
    )
    async def create_project(
        self, principal: Principal, data: CreateProject, gateway: Gateway, pool: Pool
    ) -> Response[ProjectOut]:
        try:
            project_id = await gateway.register_project(principal.organization_id, data.name)
        except Conflict:
            raise Problem(409, f"a project named {data.name!r} already exists") from None
        row = await queries.project(pool, principal.organization_id, project_id)
        assert row is not None  # applied before register_project returned
        return created(ProjectOut.model_validate(row), f"/api/v1/projects/{project_id}")

    @get("/{project_id:uuid}", responses=answers(404))
    async def get_project(
        self, principal: Principal, project_id: uuid.UUID, pool: Pool
    ) -> ProjectOut:
        row = await queries.project(pool, principal.organization_id, project_id)
        if row is None:
            raise not_found("project")
        return ProjectOut.model_validate(row)

    @get("/", responses=answers())
    async def list_projects(
        self, principal: Principal, pool: Pool, limit: Limit = 50, offset: Offset = 0
    ) -> Page[ProjectOut]:
        return await page_of(
            ProjectOut,
            pool,
            f"FROM {SCHEMA}.projects WHERE organization_id = %s",
            (principal.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
        )
