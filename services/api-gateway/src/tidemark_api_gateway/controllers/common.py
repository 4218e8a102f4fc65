"""What every controller shares: paging parameters, the page helper, ``201 Created``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from litestar import Response
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED
from pydantic import BaseModel

from tidemark_api_gateway import queries
from tidemark_api_gateway.readmodel import Pool
from tidemark_api_gateway.schemas import Page

Limit = Annotated[int | None, Parameter(ge=0, description="page size; clamped to its maximum")]
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
