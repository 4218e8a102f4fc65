"""The HTTP API (API.md): thin controllers that validate, authorize and issue commands."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, get_args

import psycopg
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import BaseModel
from tidemark_contracts import BACKUP_COMMANDS, Envelope, utc_now
from tidemark_contracts.backup import (
    BackupStatus,
    BackupType,
    DatabaseTarget,
    DestinationTarget,
    RequestBackup,
)

from tidemark_api_gateway import queries
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.outbox import enqueue
from tidemark_api_gateway.problems import Problem, invalid, not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool
from tidemark_api_gateway.schemas import (
    BackupOut,
    CreateBackup,
    CreateDestination,
    CreateEnvironment,
    CreateProject,
    DestinationOut,
    EnvironmentOut,
    Page,
    ProjectOut,
)

PRODUCER = "api-gateway"

Limit = Annotated[int | None, Parameter(ge=0, description="page size; clamped to its maximum")]
StatusFilter = Annotated[
    str | None, Parameter(description=f"one of {', '.join(get_args(BackupStatus))}; empty: all")
]
TypeFilter = Annotated[
    str | None,
    Parameter(query="type", description=f"one of {', '.join(get_args(BackupType))}; empty: all"),
]


def choice(field: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """A filter's value: empty means "no filter" (``?status=&type=`` as API.md writes it)."""
    if not value:
        return None
    if value not in allowed:
        raise invalid(field, f"must be one of {', '.join(allowed)}")
    return value


Offset = Annotated[int, Parameter(ge=0)]


MAX_PAGE = 100
M = TypeVar("M", bound=BaseModel)


async def page_of(
    model: type[M],
    pool: Pool,
    from_where: str,
    params: Sequence[Any],
    order_by: str,
    *,
    limit: int | None,
    offset: int,
    default: int,
    columns: str = "*",
) -> Page[M]:
    """One page of a list: ``limit`` defaults to ``default`` and is clamped to MAX_PAGE."""
    size = default if limit is None else min(limit, MAX_PAGE)
    rows, total = await queries.page(pool, from_where, params, order_by, size, offset, columns)
    return Page(
        items=[model.model_validate(r) for r in rows], total=total, limit=size, offset=offset
    )


def created(resource: Any, location: str) -> Response[Any]:
    return Response(resource, status_code=HTTP_201_CREATED, headers={"Location": location})


async def _unique(pool: Pool, statement: str, params: Any, conflict: str) -> DictRow:
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute(statement, params)).fetchone()
    except psycopg.errors.UniqueViolation:
        raise Problem(409, conflict) from None
    assert row is not None
    return row


class ProjectController(Controller):
    path = "/projects"
    tags = ["projects"]

    @post("/", status_code=HTTP_201_CREATED)
    async def create_project(
        self, request: Request[Principal, str, Any], data: CreateProject, pool: Pool
    ) -> Response[ProjectOut]:
        row = await _unique(
            pool,
            f"INSERT INTO {SCHEMA}.projects (id, organization_id, name, created_at) "
            "VALUES (%s, %s, %s, %s) RETURNING *",
            (uuid.uuid4(), request.user.organization_id, data.name, utc_now()),
            f"a project named {data.name!r} already exists",
        )
        project = ProjectOut.model_validate(row)
        return created(project, f"/api/v1/projects/{project.id}")

    @get("/{project_id:uuid}")
    async def get_project(
        self, request: Request[Principal, str, Any], project_id: uuid.UUID, pool: Pool
    ) -> ProjectOut:
        return ProjectOut.model_validate(
            await queries.project(pool, request.user.organization_id, project_id)
        )

    @get("/")
    async def list_projects(
        self,
        request: Request[Principal, str, Any],
        pool: Pool,
        limit: Limit = None,
        offset: Offset = 0,
    ) -> Page[ProjectOut]:
        return await page_of(
            ProjectOut,
            pool,
            f"FROM {SCHEMA}.projects WHERE organization_id = %s",
            (request.user.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
            default=50,
        )


class EnvironmentController(Controller):
    tags = ["environments"]

    @post("/projects/{project_id:uuid}/environments", status_code=HTTP_201_CREATED)
    async def create_environment(
        self,
        request: Request[Principal, str, Any],
        project_id: uuid.UUID,
        data: CreateEnvironment,
        pool: Pool,
    ) -> Response[EnvironmentOut]:
        await queries.project(pool, request.user.organization_id, project_id)
        row = await _unique(
            pool,
            f"INSERT INTO {SCHEMA}.environments (id, organization_id, project_id, name, "
            "database, cluster, files_path, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING *",
            (
                uuid.uuid4(),
                request.user.organization_id,
                project_id,
                data.name,
                Jsonb(data.database.model_dump(by_alias=True)),
                Jsonb(data.cluster.model_dump(by_alias=True)) if data.cluster else None,
                data.files_path,
                utc_now(),
            ),
            f"the project already has an environment named {data.name!r}",
        )
        environment = EnvironmentOut.model_validate(row)
        return created(environment, f"/api/v1/environments/{environment.id}")

    @get("/projects/{project_id:uuid}/environments")
    async def list_environments(
        self,
        request: Request[Principal, str, Any],
        project_id: uuid.UUID,
        pool: Pool,
        limit: Limit = None,
        offset: Offset = 0,
    ) -> Page[EnvironmentOut]:
        await queries.project(pool, request.user.organization_id, project_id)
        return await page_of(
            EnvironmentOut,
            pool,
            f"FROM {SCHEMA}.environments WHERE organization_id = %s AND project_id = %s",
            (request.user.organization_id, project_id),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
            default=50,
        )

    @get("/environments/{env_id:uuid}")
    async def get_environment(
        self, request: Request[Principal, str, Any], env_id: uuid.UUID, pool: Pool
    ) -> EnvironmentOut:
        row = await queries.environment(pool, request.user.organization_id, env_id)
        return EnvironmentOut.model_validate(row)


class DestinationController(Controller):
    path = "/destinations"
    tags = ["destinations"]

    @post("/", status_code=HTTP_201_CREATED)
    async def create_destination(
        self, request: Request[Principal, str, Any], data: CreateDestination, pool: Pool
    ) -> Response[DestinationOut]:
        spec = data.root
        row = await _unique(
            pool,
            f"INSERT INTO {SCHEMA}.destinations (id, organization_id, name, type, config, "
            "is_default, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (
                uuid.uuid4(),
                request.user.organization_id,
                spec.name,
                spec.type,
                Jsonb(spec.config.model_dump(by_alias=True)),
                spec.is_default,
                utc_now(),
            ),
            f"a destination named {spec.name!r} already exists",
        )
        destination = DestinationOut.model_validate(row)
        return created(destination, f"/api/v1/destinations/{destination.id}")

    @get("/")
    async def list_destinations(
        self,
        request: Request[Principal, str, Any],
        pool: Pool,
        limit: Limit = None,
        offset: Offset = 0,
    ) -> Page[DestinationOut]:
        return await page_of(
            DestinationOut,
            pool,
            f"FROM {SCHEMA}.destinations WHERE organization_id = %s",
            (request.user.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
            default=50,
        )

    @get("/{destination_id:uuid}")
    async def get_destination(
        self, request: Request[Principal, str, Any], destination_id: uuid.UUID, pool: Pool
    ) -> DestinationOut:
        rows = await queries.destinations(pool, request.user.organization_id, [destination_id])
        if not rows:
            raise not_found("destination")
        return DestinationOut.model_validate(rows[0])

    @delete("/{destination_id:uuid}", status_code=HTTP_204_NO_CONTENT)
    async def delete_destination(
        self, request: Request[Principal, str, Any], destination_id: uuid.UUID, pool: Pool
    ) -> None:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                f"DELETE FROM {SCHEMA}.destinations WHERE organization_id = %s AND id = %s",
                (request.user.organization_id, destination_id),
            )
            if cursor.rowcount == 0:
                raise not_found("destination")


class BackupController(Controller):
    tags = ["backups"]

    @post("/environments/{env_id:uuid}/backups", status_code=HTTP_202_ACCEPTED)
    async def request_backup(
        self,
        request: Request[Principal, str, Any],
        env_id: uuid.UUID,
        data: CreateBackup,
        pool: Pool,
    ) -> Response[BackupOut]:
        principal = request.user
        environment = await queries.environment(pool, principal.organization_id, env_id)
        if data.type == "full" and environment["cluster"] is None:
            raise invalid(
                "type", "a full backup needs the environment's cluster; this one has none"
            )
        destinations = await self._destinations(pool, principal, data.destination_ids)
        now = utc_now()
        command = RequestBackup(
            backup_id=uuid.uuid4(),
            organization_id=principal.organization_id,
            project_id=environment["project_id"],
            environment_id=env_id,
            type=data.type,
            trigger="manual",
            label=data.label,
            requested_by=principal.subject,
            requested_at=now,
            database=DatabaseTarget.model_validate(environment["database"]),
            destinations=[
                DestinationTarget.model_validate(
                    {
                        "destinationId": d["id"],
                        "name": d["name"],
                        "type": d["type"],
                        "config": {"kind": d["type"], **d["config"]},
                    }
                )
                for d in destinations
            ],
        )
        envelope = Envelope.wrap(
            command,
            producer=PRODUCER,
            organization_id=principal.organization_id,
            environment_id=env_id,
            aggregate_id=command.backup_id,
            correlation_id=command.backup_id,
        )
        pending = {
            "id": command.backup_id,
            "organization_id": principal.organization_id,
            "project_id": environment["project_id"],
            "environment_id": env_id,
            "type": data.type,
            "trigger": "manual",
            "label": data.label,
            "status": "pending",
            "created_at": now,
            "destinations": [
                {
                    "destinationId": str(d["id"]),
                    "name": d["name"],
                    "type": d["type"],
                    "status": "pending",
                }
                for d in destinations
            ],
        }
        # The read-model row and the command commit together: the client reads its own
        # write at once, and the command is durable even while Kafka is down.
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {SCHEMA}.backups (id, organization_id, project_id, environment_id,"
                " type, trigger, label, status, created_at, destinations) VALUES "
                "(%(id)s, %(organization_id)s, %(project_id)s, %(environment_id)s, %(type)s, "
                "%(trigger)s, %(label)s, %(status)s, %(created_at)s, %(destinations)s)",
                {**pending, "destinations": Jsonb(pending["destinations"])},
            )
            await enqueue(conn, BACKUP_COMMANDS, envelope)
        request.app.state.relay.wake()
        backup = await queries.backup(pool, principal.organization_id, command.backup_id)
        return Response(
            BackupOut.model_validate(backup),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/backups/{command.backup_id}"},
        )

    @staticmethod
    async def _destinations(
        pool: Pool, principal: Principal, ids: list[uuid.UUID] | None
    ) -> list[DictRow]:
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
        defaults = await queries.default_destinations(pool, principal.organization_id)
        if not defaults:
            raise invalid(
                "destinationIds",
                "no destinationIds given, and the environment has no schedule and the "
                "organization no default destination",
            )
        return defaults

    @get("/environments/{env_id:uuid}/backups")
    async def list_environment_backups(
        self,
        request: Request[Principal, str, Any],
        env_id: uuid.UUID,
        pool: Pool,
        status: StatusFilter = None,
        backup_type: TypeFilter = None,
        limit: Limit = None,
        offset: Offset = 0,
    ) -> Page[BackupOut]:
        await queries.environment(pool, request.user.organization_id, env_id)
        where, params = queries.backup_filters(
            "organization_id = %s AND environment_id = %s",
            [request.user.organization_id, env_id],
            choice("status", status, get_args(BackupStatus)),
            choice("type", backup_type, get_args(BackupType)),
        )
        return await page_of(
            BackupOut,
            pool,
            f"FROM {SCHEMA}.backups WHERE {where}",
            params,
            "created_at DESC, id",
            limit=limit,
            offset=offset,
            default=20,
        )

    @get("/projects/{project_id:uuid}/backups")
    async def list_project_backups(
        self,
        request: Request[Principal, str, Any],
        project_id: uuid.UUID,
        pool: Pool,
        status: StatusFilter = None,
        limit: Limit = None,
        offset: Offset = 0,
    ) -> Page[BackupOut]:
        await queries.project(pool, request.user.organization_id, project_id)
        where, params = queries.backup_filters(
            "b.organization_id = %s AND b.project_id = %s",
            [request.user.organization_id, project_id],
            choice("status", status, get_args(BackupStatus)),
            None,
            alias="b.",
        )
        return await page_of(
            BackupOut,
            pool,
            f"FROM {SCHEMA}.backups b JOIN {SCHEMA}.environments e ON e.id = b.environment_id "
            f"WHERE {where}",
            params,
            "b.created_at DESC, b.id",
            limit=limit,
            offset=offset,
            default=50,
            columns="b.*, json_build_object('id', e.id, 'name', e.name) AS environment",
        )

    @get("/backups/{backup_id:uuid}")
    async def get_backup(
        self, request: Request[Principal, str, Any], backup_id: uuid.UUID, pool: Pool
    ) -> BackupOut:
        return BackupOut.model_validate(
            await queries.backup(pool, request.user.organization_id, backup_id)
        )
