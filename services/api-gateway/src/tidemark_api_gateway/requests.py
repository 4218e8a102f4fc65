"""One request, one id: ``X-Request-ID`` becomes the correlation id of what it causes.

The caller's ``X-Request-ID`` (when it is a sane token) or a new UUID names the request.
It is bound to every log line written while the request is served, answered in the
response's ``X-Request-ID``, and becomes the ``correlationId`` of the commands the request
issues, which every service copies onto the events they cause. Each API request is
logged once: method, route, status, duration and organization.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from tidemark_platform.logging import get_logger

log = get_logger("tidemark.requests")

HEADER = "x-request-id"
# A caller's id is echoed into logs and headers: only a plain token is taken as it is.
ACCEPTED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
REQUEST_ID_NAMESPACE = uuid.UUID("9d1f6c2a-58e3-4f0b-8c77-1a2b3c4d5e6f")
STATE_KEY = "tidemark_request"
LOGGED_PREFIX = "/api/"


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    correlation_id: uuid.UUID
    started: float

    @classmethod
    def from_header(cls, value: str | None) -> RequestContext:
        if value and ACCEPTED_REQUEST_ID.fullmatch(value):
            try:
                correlation_id = uuid.UUID(value)
            except ValueError:
                correlation_id = uuid.uuid5(REQUEST_ID_NAMESPACE, value)
            return cls(value, correlation_id, time.monotonic())
        correlation_id = uuid.uuid4()
        return cls(str(correlation_id), correlation_id, time.monotonic())

    @staticmethod
    def of(request: Request[Any, Any, Any]) -> RequestContext:
        context: RequestContext = request.scope["state"][STATE_KEY]
        return context


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Outermost: names the request before authentication, so a 401 carries its id too."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == HEADER.encode()), None)
        context = RequestContext.from_header(header.decode("latin-1") if header else None)
        scope.setdefault("state", {})[STATE_KEY] = context
        with structlog.contextvars.bound_contextvars(
            request_id=context.request_id, correlation_id=str(context.correlation_id)
        ):
            await app(scope, receive, send)

    return middleware


async def answer_and_log(message: Message, scope: Scope) -> None:
    """``before_send``: the id in every response, and one log line per API request."""
    if message["type"] != "http.response.start":
        return
    context: RequestContext | None = scope.get("state", {}).get(STATE_KEY)
    if context is None:
        return
    MutableScopeHeaders.from_message(message)[HEADER] = context.request_id
    path = scope.get("path", "")
    if not path.startswith(LOGGED_PREFIX):
        return  # health checks and metrics scrapes would drown the log
    user = scope.get("user")
    # Named explicitly: an error answered by Litestar's own exception layer is sent after
    # the middleware's context has ended.
    log.info(
        "http_request",
        request_id=context.request_id,
        correlation_id=str(context.correlation_id),
        method=scope.get("method"),
        route=scope.get("path_template") or path,
        status=message["status"],
        duration_ms=round((time.monotonic() - context.started) * 1000, 1),
        organization_id=str(getattr(user, "organization_id", "")) or None,
    )


async def allow_every_method(message: Message, scope: Scope) -> None:
    """``before_send``: an ``OPTIONS`` answer's ``Allow`` names every method of the path.

    Litestar 2.25 builds a path's ``OPTIONS`` handler with the first handler registered on
    it and keeps it when more join (``GET`` and ``POST`` of ``/projects``), so its ``Allow``
    would leave some out.
    """
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    handler = scope.get("route_handler")
    for route in scope["app"].routes:
        if handler in getattr(route, "route_handlers", ()):
            headers = MutableScopeHeaders.from_message(message)
            headers["allow"] = ", ".join(sorted(route.methods))
            return
