"""``/destinations``: where an organization's backups are stored."""

from __future__ import annotations

import uuid

from litestar import Controller, Response, delete, get, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from tidemark_api_gateway import queries
from tidemark_api_gateway.application import (
    LOCAL_PATH,
    Conflict,
    DestinationInUse,
    Gateway,
    Gone,
)
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
from tidemark_api_gateway.schemas import CreateDestination, DestinationOut, Page


class DestinationController(Controller):
    path = "/destinations"
    tags = ["destinations"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses=answers(409),
        response_headers=location("destination"),
    )
    async def create_destination(
        self, principal: Principal, data: CreateDestination, gateway: Gateway, pool: Pool
    ) -> Response[DestinationOut]:
        spec = data.root
        try:
            destination_id = await gateway.register_destination(
                principal.organization_id,
                spec.name,
                spec.type,
                spec.config.model_dump(by_alias=True),
                spec.is_default,
            )
        except Conflict as exc:
            if exc.args[:1] == (LOCAL_PATH,):
                raise Problem(
                    409, "another destination of the organization already writes to that path"
                ) from None
            raise Problem(409, f"a destination named {spec.name!r} already exists") from None
        rows = await queries.destinations(pool, principal.organization_id, [destination_id])
        return created(
            DestinationOut.model_validate(rows[0]), f"/api/v1/destinations/{destination_id}"
        )

    @get("/", responses=answers())
    async def list_destinations(
        self, principal: Principal, pool: Pool, limit: Limit = 50, offset: Offset = 0
    ) -> Page[DestinationOut]:
        return await page_of(
            DestinationOut,
            pool,
            f"FROM {SCHEMA}.destinations WHERE organization_id = %s",
            (principal.organization_id,),
            "created_at DESC, id",
            limit=limit,
            offset=offset,
        )

    @get("/{destination_id:uuid}", responses=answers(404))
    async def get_destination(
        self, principal: Principal, destination_id: uuid.UUID, pool: Pool
    ) -> DestinationOut:
        rows = await queries.destinations(pool, principal.organization_id, [destination_id])
        if not rows:
            raise not_found("destination")
        return DestinationOut.model_validate(rows[0])

    @delete("/{destination_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=answers(404, 409))
    async def delete_destination(
        self, principal: Principal, destination_id: uuid.UUID, gateway: Gateway
    ) -> None:
        try:
            await gateway.remove_destination(principal.organization_id, destination_id)
        except Gone:
            raise not_found("destination") from None
        except DestinationInUse as exc:
            raise Problem(409, f"the destination cannot be deleted: {exc.args[0]}") from None
