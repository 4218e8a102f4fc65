"""Every error the gateway answers is RFC 9457 problem+json, mapped here in one place."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR
from pydantic import BaseModel, Field
from tidemark_platform.logging import get_logger

from tidemark_api_gateway.application import Refused

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class FieldError(BaseModel):
    field: str = Field(description="the input at fault: a body field (camelCase), a parameter")
    message: str


class ProblemDetail(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="always about:blank: the status says what went wrong")
    title: str = Field(description="the status's reason phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what went wrong, for a person")
    errors: list[FieldError] | None = Field(
        default=None, description="with 422: each invalid input and why (absent otherwise)"
    )


class Problem(Exception):
    """A domain-level refusal with an HTTP status, e.g. ``Problem(409, "...")``."""

    def __init__(
        self, status: int, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors


def invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", [{"field": field, "message": message}])


def not_found(what: str) -> Problem:
    return Problem(404, f"{what} not found")


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# pydantic reports a bad discriminator (``type`` of a destination) at the body's root;
# the field it names is the one the client has to fix.
_DISCRIMINATOR = re.compile(r"found using '(?P<field>\w+)'")


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = str(item.get("key") or "")
            tag = _DISCRIMINATOR.search(str(item.get("message", "")))
            if not field and tag:
                field = tag["field"]
            field = field or str(item.get("source") or "body")
            errors.append({"field": field, "message": str(item.get("message", "invalid"))})
    return errors or [{"field": "body", "message": str(exc.detail)}]


def handle_refused(_: Request[Any, Any, Any], exc: Refused) -> Response[dict[str, Any]]:
    return problem_response(
        422, f"{exc.field}: {exc.reason}", [{"field": exc.field, "message": exc.reason}]
    )


def handle_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    return problem_response(exc.status, exc.detail, exc.errors)


def handle_validation(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    errors = _validation_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(422, detail, errors)


def handle_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if exc.status_code == HTTP_400_BAD_REQUEST:
        # Litestar's 400s are bodies it cannot read (malformed JSON): invalid input, which
        # the API answers with 422 everywhere (and documents as such).
        return problem_response(422, str(exc.detail), [{"field": "body", "message": exc.detail}])
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
    return problem_response(exc.status_code, str(exc.detail), headers=headers or None)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled_error", path=request.url.path)
    return problem_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: handle_problem,
    Refused: handle_refused,
    ValidationException: handle_validation,
    NotAuthorizedException: handle_http,
    PermissionDeniedException: handle_http,
    NotFoundException: handle_http,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
