"""The served OpenAPI document documents every answer: a new route cannot forget its errors."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from litestar import Controller, get
from litestar.testing import TestClient
from tidemark_api_gateway import main
from tidemark_api_gateway.controllers import CONTROLLERS
from tidemark_api_gateway.main import documentation_app
from tidemark_api_gateway.openapi import LINKS

PROBLEM_JSON = "application/problem+json"
METHODS = ("get", "post", "put", "patch", "delete")


def served() -> dict[str, Any]:
    """What the gateway serves at ``/schema/openapi.json`` (its API without a runtime)."""
    with TestClient(documentation_app()) as client:
        response = client.get("/schema/openapi.json")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return served()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def missing_answers(document: dict[str, Any]) -> list[str]:
    """Every way an operation fails to document its problem+json answers."""
    problems = []
    for method, path, operation in operations(document):
        needed = {"401", "403", "422"}
        if "{" in path:
            needed.add("404")
        for status in sorted(needed):
            response = operation["responses"].get(status)
            content = (response or {}).get("content", {})
            schema = content.get(PROBLEM_JSON, {}).get("schema", {})
            if schema.get("$ref") != "#/components/schemas/ProblemDetail":
                problems.append(f"{method} {path}: {status}")
    return problems


def test_every_operation_documents_its_problem_answers(document: dict[str, Any]) -> None:
    assert len(operations(document)) >= 14
    assert missing_answers(document) == []


def test_a_route_without_its_answers_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    class Forgetful(Controller):
        @get("/forgetful/{thing_id:uuid}")
        async def forgetful(self, thing_id: uuid.UUID) -> None:
            return None

    monkeypatch.setattr(main, "CONTROLLERS", [*CONTROLLERS, Forgetful])
    assert missing_answers(served()) == [
        "GET /api/v1/forgetful/{thing_id}: 401",
        "GET /api/v1/forgetful/{thing_id}: 403",
        "GET /api/v1/forgetful/{thing_id}: 404",
        "GET /api/v1/forgetful/{thing_id}: 422",
    ]


def test_the_problem_schema_is_rfc_9457_with_field_errors(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    problem = schemas["ProblemDetail"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    errors = problem["properties"]["errors"]["anyOf"][0]
    assert errors["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert set(schemas["FieldError"]["required"]) == {"field", "message"}


def test_no_operation_documents_litestars_400(document: dict[str, Any]) -> None:
    assert [f"{m} {p}" for m, p, op in operations(document) if "400" in op["responses"]] == []


def test_created_and_accepted_answers_carry_a_location(document: dict[str, Any]) -> None:
    found = 0
    for method, path, operation in operations(document):
        for status in ("201", "202"):
            if status in operation["responses"]:
                found += 1
                headers = operation["responses"][status].get("headers", {})
                assert headers.get("Location", {}).get("required") is True, (method, path)
                assert headers["Location"]["schema"]["type"] == "string"
    # projects, environments, destinations, secrets, webhooks, backups, deletion, restore
    assert found == 8


def test_paging_parameters_document_their_bounds(document: dict[str, Any]) -> None:
    lists = 0
    for method, path, operation in operations(document):
        parameters = {p["name"]: p["schema"] for p in operation.get("parameters", [])}
        if "offset" in parameters:
            lists += 1
            assert parameters["offset"]["minimum"] == 0, path
            assert parameters["offset"]["maximum"] == 1_000_000_000, path
            assert parameters["limit"]["minimum"] == 0, path
            assert parameters["limit"]["type"] == "integer", path
            assert "100" in parameters["limit"]["description"], path
        for name, schema in parameters.items():
            if re.fullmatch(r"\w+_id", name):
                assert schema == {"type": "string", "format": "uuid"}, (method, path, name)
    assert lists == 10  # 7 before issue 10, then alerts, webhooks, webhook deliveries


def test_request_bodies_are_pydantics_own_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("CreateProject", "CreateEnvironment", "DatabaseIn", "ClusterIn", "CreateBackup"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "filesPath" in schemas["CreateEnvironment"]["properties"]
    assert "passwordRef" in schemas["DatabaseIn"]["properties"]
    assert schemas["CreateProject"]["properties"]["name"]["pattern"]
    destination = schemas["CreateDestination"]
    assert destination["discriminator"]["propertyName"] == "type"
    for variant in ("CreateLocalDestination", "CreateS3Destination"):
        assert schemas[variant]["additionalProperties"] is False


def test_links_lead_from_created_resources_to_existing_operations(
    document: dict[str, Any],
) -> None:
    by_id = {op["operationId"]: (path, op) for _, path, op in operations(document)}
    assert len(by_id) == len(operations(document)), "operation ids are unique"
    for producer, links in LINKS.items():
        _, operation = by_id[producer]
        success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
        assert set(success["links"]) == set(links)
        for target, parameter in links.values():
            target_path, _ = by_id[target]
            assert "{" + parameter + "}" in target_path, (producer, target)
