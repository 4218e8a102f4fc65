"""The OpenAPI document the gateway serves, made to say exactly what the API does.

Litestar writes the paths, parameters and declared responses; three things are put right
before the document is served:

- every pydantic body is described by pydantic's own JSON Schema (the one it validates
  with: camelCase, patterns, ``additionalProperties: false`` where unknown fields are
  refused, the destination's ``type`` discriminator), not Litestar's rendition of it;
- Litestar's generic ``400`` (its ``ValidationException`` shape) is dropped: the gateway
  answers invalid input with ``422`` problem+json, declared on each operation;
- responses gain the links (``LINKS``) that let a client, and schemathesis' stateful
  phase, follow a created resource's id into the operations on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, get_args, get_origin

from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Method
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tidemark_api_gateway.problems import ProblemDetail

COMPONENTS = "#/components/schemas/{model}"

# A created resource's id, and the operations a client goes on to call with it.
# ``{operationId of the creator: {link name: (operationId of the target, parameter)}}``.
LINKS: dict[str, dict[str, tuple[str, str]]] = {
    "createProject": {
        "GetProject": ("getProject", "project_id"),
        "CreateEnvironment": ("createEnvironment", "project_id"),
        "ListEnvironments": ("listEnvironments", "project_id"),
        "ListProjectBackups": ("listProjectBackups", "project_id"),
    },
    "createEnvironment": {
        "GetEnvironment": ("getEnvironment", "env_id"),
        "RequestBackup": ("requestBackup", "env_id"),
        "ListEnvironmentBackups": ("listEnvironmentBackups", "env_id"),
    },
    "createDestination": {
        "GetDestination": ("getDestination", "destination_id"),
        "DeleteDestination": ("deleteDestination", "destination_id"),
    },
    "requestBackup": {
        "GetBackup": ("getBackup", "backup_id"),
        "DeleteBackup": ("deleteBackup", "backup_id"),
    },
    "createWebhook": {
        "DeleteWebhook": ("deleteWebhook", "webhook_id"),
        "ListWebhookDeliveries": ("listWebhookDeliveries", "webhook_id"),
    },
    "createSecret": {
        "GetSecret": ("getSecret", "name"),
        "ReplaceSecret": ("replaceSecret", "name"),
        "DeleteSecret": ("deleteSecret", "name"),
    },
}
# The field of the created resource that names it, where it is not ``id``.
LINK_FIELDS = {"createSecret": "name"}


def operation_id(handler: HTTPRouteHandler, method: Method, _: list[str | Any]) -> str:
    """``create_project`` → ``createProject``: the handler's name, stable and short."""
    head, *rest = handler.handler_name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation is made of (``Response[Page[X]]`` → ``Page[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models(arg)
    origin = get_origin(annotation)
    if origin is not None and origin is not annotation:
        yield from _models(origin)


def body_models(app: Litestar) -> tuple[set[type[BaseModel]], set[type[BaseModel]]]:
    """The request and response body models of every handler of ``app``."""
    requests: set[type[BaseModel]] = set()
    responses: set[type[BaseModel]] = {ProblemDetail}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            signature = handler.parsed_fn_signature
            if "data" in signature.parameters:
                requests.update(_models(signature.parameters["data"].annotation))
            responses.update(_models(signature.return_type.annotation))
    return requests, responses


def pydantic_components(app: Litestar) -> dict[str, Any]:
    """Every body's schema as pydantic validates (requests) and writes (responses) it."""
    requests, responses = body_models(app)
    keyed = [(model, "validation") for model in requests]
    keyed += [(model, "serialization") for model in responses]
    _, schema = models_json_schema(keyed, ref_template=COMPONENTS, by_alias=True)  # type: ignore[arg-type]
    definitions: dict[str, Any] = schema.get("$defs", {})
    return definitions


def _attach_links(document: dict[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            creator = operation.get("operationId", "")
            links = LINKS.get(creator)
            if not links:
                continue
            key = f"$response.body#/{LINK_FIELDS.get(creator, 'id')}"
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    response["links"] = {
                        name: {
                            "operationId": target,
                            "parameters": {parameter: key},
                        }
                        for name, (target, parameter) in links.items()
                    }


def _drop_generic_400(document: dict[str, Any]) -> None:
    """Litestar declares ``400`` with its own error shape on every operation with input;
    the gateway never answers it (see problems.py): invalid input is ``422``."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("400", None)


def document(app: Litestar, generated: dict[str, Any]) -> dict[str, Any]:
    """The served document: Litestar's, with the corrections this module describes."""
    fixed = copy.deepcopy(generated)
    schemas = fixed.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(pydantic_components(app))
    _drop_generic_400(fixed)
    _attach_links(fixed)
    return fixed


class TruthfulJsonRenderPlugin(JsonRenderPlugin):
    """Serves ``document()`` at ``/schema/openapi.json`` (computed once)."""

    _rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = self.render_json(request, document(request.app, openapi_schema))
        return self._rendered


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Tidemark API",
        version="1.0.0",
        description="The backup control plane's HTTP API (see API.md).",
        path="/schema",
        operation_id_creator=operation_id,
        render_plugins=[TruthfulJsonRenderPlugin(), SwaggerRenderPlugin(path="/")],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
            }
        ),
    )


def served_document(app: Litestar) -> dict[str, Any]:
    """What ``GET /schema/openapi.json`` answers, without a request (tests, tools)."""
    return document(app, app.openapi_schema.to_schema())
