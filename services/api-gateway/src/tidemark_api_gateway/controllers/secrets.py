"""``/secrets``: an organization's stored credentials, named elsewhere as ``secret:NAME``.

Values go in and never come out: every answer carries names and dates only.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from tidemark_platform.vault import NAME_PATTERN, SecretExists, SecretInUse, SecretNotFound

from tidemark_api_gateway.application import Gateway
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import (
    MAX_PAGE,
    Limit,
    Offset,
    answers,
    created,
    location,
)
from tidemark_api_gateway.problems import Problem, not_found
from tidemark_api_gateway.schemas import CreateSecret, Page, ReplaceSecret, SecretOut

SecretName = Annotated[str, Parameter(pattern=NAME_PATTERN, description="the secret's name")]


def _out(info: object) -> SecretOut:
    return SecretOut.model_validate(info, from_attributes=True)


class SecretController(Controller):
    path = "/secrets"
    tags = ["secrets"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses=answers(409),
        response_headers=location("secret"),
    )
    async def create_secret(
        self, principal: Principal, data: CreateSecret, gateway: Gateway
    ) -> Response[SecretOut]:
        try:
            info = await gateway.create_secret(principal.organization_id, data.name, data.value)
        except SecretExists:
            raise Problem(409, "a secret of that name exists; PUT replaces its value") from None
        return created(_out(info), f"/api/v1/secrets/{data.name}")

    @get("/", responses=answers())
    async def list_secrets(
        self, principal: Principal, gateway: Gateway, limit: Limit = 50, offset: Offset = 0
    ) -> Page[SecretOut]:
        size = min(limit, MAX_PAGE)
        infos, total = await gateway.list_secrets(principal.organization_id, size, offset)
        return Page(items=[_out(i) for i in infos], total=total, limit=size, offset=offset)

    @get("/{name:str}", responses=answers(404))
    async def get_secret(
        self, principal: Principal, name: SecretName, gateway: Gateway
    ) -> SecretOut:
        """The secret's name and dates (never its value)."""
        try:
            return _out(await gateway.secret(principal.organization_id, name))
        except SecretNotFound:
            raise not_found("secret") from None

    @put("/{name:str}", responses=answers(404))
    async def replace_secret(
        self,
        principal: Principal,
        name: SecretName,
        data: ReplaceSecret,
        gateway: Gateway,
    ) -> SecretOut:
        try:
            info = await gateway.replace_secret(principal.organization_id, name, data.value)
        except SecretNotFound:
            raise not_found("secret") from None
        return _out(info)

    @delete("/{name:str}", status_code=HTTP_204_NO_CONTENT, responses=answers(404, 409))
    async def delete_secret(self, principal: Principal, name: SecretName, gateway: Gateway) -> None:
        try:
            await gateway.delete_secret(principal.organization_id, name)
        except SecretNotFound:
            raise not_found("secret") from None
        except SecretInUse as exc:
            users = ", ".join(f"{use.kind} {use.user_id}" for use in exc.users)
            raise Problem(409, f"the secret is in use by {users}") from None
