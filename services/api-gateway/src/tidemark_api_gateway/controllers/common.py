"""What every controller shares: paging parameters, the page helper, ``201 Created``, and
the error answers each operation documents (``answers``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from litestar import Response
from litestar.datastructures import ResponseHeader
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED
from pydantic import BaseModel

from tidemark_api_gateway import queries
from tidemark_api_gateway.problems import PROBLEM_JSON, TITLES, ProblemDetail
from tidemark_api_gateway.readmodel import Pool
from tidemark_api_gateway.schemas import Page

MAX_PAGE = 100
# Beyond it a page is empty anyway; unbounded, a huge offset overflowed PostgreSQL's bigint.
MAX_OFFSET = 1_000_000_000

# A handler states its list's default: ``limit: Limit = 50``.
Limit = Annotated[
    int, Parameter(ge=0, description=f"page size; a larger one is taken as {MAX_PAGE}")
]
Offset = Annotated[int, Parameter(ge=0, le=MAX_OFFSET, description="items to skip")]

WHY = {
    401: "no valid bearer token (missing, malformed, expired, wrong key or claims)",
    403: "the token lacks the scope the operation needs (backups:read or backups:write)",
    404: "no such resource in the caller's organization",
    409: "the request conflicts with the resource's current state",
    422: "invalid input; ``errors`` names each field at fault",
}


def answers(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem+json answers an operation documents: 401, 403 and 422 always (every
    operation is authenticated and takes input), plus ``statuses`` (404 for an id in the
    path, 409 for a state conflict). One argument per route: ``responses=answers(404)``."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetail,
            media_type=PROBLEM_JSON,
            description=f"{TITLES[status]}: {WHY[status]}",
            generate_examples=False,
        )
        for status in sorted({401, 403, 422, *statuses})
    }


def location(of: str) -> list[ResponseHeader]:
    """The ``Location`` header of a ``201``/``202``: where ``of`` can be read."""
    return [
        ResponseHeader(
            name="Location",
            description=f"the path of the {of}",
            value=f"/api/v1/{of}s/<id>",  # documents the header's type (a string)
            required=True,
            documentation_only=True,
        )
    ]


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
    default: int = 50,
    columns: str = "*",
) -> Page[M]:
    """One page of a list: ``limit`` (``None``: ``default``) is clamped to MAX_PAGE."""
    size = page_size(limit, default)
    rows, total = await queries.page(pool, from_where, params, order_by, size, offset, columns)
    return Page(
        items=[model.model_validate(r) for r in rows], total=total, limit=size, offset=offset
    )


def page_size(limit: int | None, default: int) -> int:
    return default if limit is None else min(limit, MAX_PAGE)


def created(resource: Any, location: str) -> Response[Any]:
    return Response(resource, status_code=HTTP_201_CREATED, headers={"Location": location})
