"""The gateway's HTTP contract (API.md): auth, tenancy, validation, lists, operations."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tidemark_devstack.e2e import Api, make_token

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def assert_invalid(response: httpx.Response, field: str) -> dict:
    body = assert_problem(response, 422)
    fields = [error["field"] for error in body["errors"]]
    assert any(field in f for f in fields), (field, body["errors"])
    assert all(error["message"] for error in body["errors"])
    return body


# --- authentication -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
        f"Bearer {make_token(uuid.uuid4(), expires_in=-60)}",
        f"Bearer {make_token(uuid.uuid4(), secret='another-secret-of-sufficient-length-000')}",
        f"Bearer {make_token('not-a-uuid')}",
    ],
    ids=["missing", "empty", "no-token", "malformed", "basic", "expired", "wrong-key", "bad-org"],
)
def test_requests_without_a_valid_token_are_401(
    anonymous: httpx.Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path in [
        ("GET", "/api/v1/projects"),
        ("POST", "/api/v1/projects"),
        ("GET", f"/api/v1/backups/{uuid.uuid4()}"),
    ]:
        response = anonymous.request(method, path, headers=headers, json={"name": "x"})
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_token_without_required_claims_is_401(anonymous: httpx.Client) -> None:
    import time

    import jwt
    from tidemark_devstack.e2e import JWT_SECRET

    for missing in ("sub", "org_id", "exp"):
        claims = {"sub": "u", "org_id": str(uuid.uuid4()), "exp": int(time.time()) + 60}
        del claims[missing]
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        response = anonymous.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})
        body = assert_problem(response, 401)
        assert missing in body["detail"]


def test_a_token_signed_with_none_is_refused(anonymous: httpx.Client) -> None:
    import jwt

    token = jwt.encode(
        {"sub": "u", "org_id": str(uuid.uuid4()), "exp": 9999999999}, key=None, algorithm="none"
    )
    response = anonymous.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)


def test_a_token_without_a_scope_claim_gets_no_access(api_for: Callable[..., Api]) -> None:
    # The stack configures no default scopes: a token that states none may do nothing.
    unscoped = api_for(scope=None)
    for response in (
        unscoped.get("/api/v1/projects"),
        unscoped.post("/api/v1/projects", json={"name": "nope"}),
        unscoped.get(f"/api/v1/backups/{uuid.uuid4()}"),
    ):
        body = assert_problem(response, 403)
        assert "scope" in body["detail"]
        token = unscoped.client.headers["authorization"].removeprefix("Bearer ")
        assert all(part not in response.text for part in token.split("."))


def test_scopes_separate_reads_from_writes(api_for: Callable[..., Api]) -> None:
    reader = api_for(scope="backups:read")
    assert reader.get("/api/v1/projects").status_code == 200
    assert_problem(reader.post("/api/v1/projects", json={"name": "nope"}), 403)
    writer_only = api_for(scope="backups:write")
    assert_problem(writer_only.get("/api/v1/projects"), 403)
    assert writer_only.post("/api/v1/projects", json={"name": "yes"}).status_code == 201
    both = api_for(scope="backups:read backups:write")
    assert both.get("/api/v1/projects").status_code == 200


def test_operational_endpoints_need_no_token(anonymous: httpx.Client) -> None:
    assert anonymous.get("/health").json()["status"] == "ok"
    ready = anonymous.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "postgres": True,
        "kafka": True,
        "services": True,
        "progress": True,
        "restore-progress": True,
        "relay:gateway-outbox": True,
        "relay:gateway-catalog": True,
    }
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert "tidemark_relay_published_total" in metrics.text
    schema = anonymous.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/environments/{env_id}/backups" in paths
    assert "/api/v1/backups/{backup_id}" in paths


# --- tenancy --------------------------------------------------------------------------


def test_another_organizations_resources_do_not_exist(
    api_for: Callable[..., Api], source_database: str
) -> None:
    owner = api_for()
    stranger = api_for()
    environment = owner.environment(source_database)
    destination = owner.destination()
    backup = owner.request_backup(environment["id"]).json()
    project_id = environment["projectId"]

    for path in [
        f"/api/v1/environments/{environment['id']}",
        f"/api/v1/environments/{environment['id']}/backups",
        f"/api/v1/backups/{backup['id']}",
        f"/api/v1/destinations/{destination['id']}",
        f"/api/v1/projects/{project_id}/environments",
        f"/api/v1/projects/{project_id}/backups",
    ]:
        body = assert_problem(stranger.get(path), 404)
        assert environment["id"] not in body["detail"]
    assert_problem(stranger.request_backup(environment["id"]), 404)
    assert_problem(stranger.delete(f"/api/v1/destinations/{destination['id']}"), 404)
    assert_problem(
        stranger.post(
            f"/api/v1/projects/{project_id}/environments",
            json={
                "name": "x",
                "database": {"host": "h", "dbname": "d", "user": "u", "passwordRef": "secret:x"},
            },
        ),
        404,
    )
    # A foreign destination cannot be borrowed either.
    mine = stranger.environment(source_database)
    assert_invalid(
        stranger.request_backup(mine["id"], destinationIds=[destination["id"]]),
        "destinationIds[0]",
    )
    assert stranger.get("/api/v1/projects").json()["total"] == 1
    owner.wait_for(backup["id"])


# --- validation -----------------------------------------------------------------------


def test_backup_requests_are_validated(api: Api, source_database: str) -> None:
    environment = api.environment(source_database)
    path = f"/api/v1/environments/{environment['id']}/backups"
    assert_invalid(api.post(path, json={}), "type")
    assert_invalid(api.post(path, json={"type": "incremental"}), "type")
    assert_invalid(api.post(path, json={"type": "db", "colour": "blue"}), "colour")
    assert_invalid(api.post(path, json={"type": "db", "label": "x" * 201}), "label")
    assert_invalid(
        api.post(path, json={"type": "db", "destinationIds": ["nope"]}), "destinationIds"
    )
    assert_invalid(api.post(path, json={"type": "db", "destinationIds": []}), "destinationIds")
    # Neither given destinations nor a default one: nowhere to store it.
    assert_invalid(api.post(path, json={"type": "db"}), "destinationIds")
    api.destination()
    assert_invalid(
        api.post(path, json={"type": "db", "destinationIds": [str(uuid.uuid4())]}),
        "destinationIds[0]",
    )
    # A full backup needs the environment's cluster.
    assert_invalid(api.post(path, json={"type": "full"}), "type")
    # A body that is not JSON is invalid input too (the API answers no 400).
    assert_invalid(
        api.post(path, content=b"{not json", headers={"content-type": "application/json"}), "body"
    )
    assert_problem(api.request_backup(str(uuid.uuid4())), 404)
    assert (
        api.post("/api/v1/environments/not-a-uuid/backups", json={"type": "db"}).status_code == 404
    )
    assert api.get(f"/api/v1/environments/{environment['id']}/backups").json()["total"] == 0


def test_what_postgresql_cannot_hold_is_refused_with_422_not_500(api: Api) -> None:
    # Each of these answered 500 (a huge offset overflowed bigint; U+0000 is no text).
    assert_invalid(api.get("/api/v1/projects", params={"offset": 2**63}), "offset")
    assert api.get("/api/v1/projects", params={"offset": 10**9}).status_code == 200
    assert_invalid(api.post("/api/v1/projects", json={"name": "a\u0000b"}), "name")
    s3 = {"name": "s3-nul", "type": "s3", "config": {"bucket": "bu\u0000cket"}}
    assert_invalid(api.post("/api/v1/destinations", json=s3), "bucket")
    assert api.get("/api/v1/destinations").json()["total"] == 0


def test_json_types_are_not_coerced(api: Api) -> None:
    s3 = {"name": "s3", "type": "s3", "config": {"bucket": "bucket"}, "isDefault": 0}
    assert_invalid(api.post("/api/v1/destinations", json=s3), "isDefault")
    project = api.project()
    database = {"host": "127.0.0.1", "port": "5432", "dbname": "app", "user": "app"}
    response = api.post(
        f"/api/v1/projects/{project['id']}/environments", json={"name": "e", "database": database}
    )
    assert_invalid(response, "port")


def test_options_names_every_method_of_the_path(api: Api) -> None:
    for path, allowed in [
        ("/api/v1/projects", "GET, OPTIONS, POST"),
        (f"/api/v1/destinations/{uuid.uuid4()}", "DELETE, GET, OPTIONS"),
    ]:
        response = api.client.options(path)
        assert response.status_code == 204, response.text
        assert response.headers["allow"] == allowed


def test_environments_refuse_plain_secrets(api: Api) -> None:
    project = api.project()
    path = f"/api/v1/projects/{project['id']}/environments"
    database = {"host": "127.0.0.1", "port": 5432, "dbname": "app", "user": "app"}
    for ref in [
        "hunter2",
        "env:",
        "env:1BAD",
        "file:relative/path",
        "vault:x",
        "secret:",
        "secret:../x",
    ]:
        body = assert_invalid(
            api.post(path, json={"name": "e", "database": {**database, "passwordRef": ref}}),
            "passwordRef",
        )
        assert ref not in body["detail"] or ref in ("env:", "secret:")
    assert_invalid(
        api.post(path, json={"name": "e", "database": {**database, "password": "hunter2"}}),
        "password",
    )
    # A missing password is an error, never a fallback to whatever the runner has.
    assert_invalid(api.post(path, json={"name": "e", "database": database}), "passwordRef")
    ref = api.secret("pg", "a-stored-password")
    assert_invalid(
        api.post(path, json={"name": "e", "database": {**database, "port": 0, "passwordRef": ref}}),
        "port",
    )
    socket_dir = {**database, "host": "/var/run/postgresql", "passwordRef": ref}
    assert_invalid(api.post(path, json={"name": "e", "database": socket_dir}), "host")
    assert_invalid(api.post(path, json={"database": {**database, "passwordRef": ref}}), "name")
    created = api.post(path, json={"name": "e", "database": {**database, "passwordRef": ref}})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/api/v1/environments/{created.json()['id']}"
    assert created.json()["database"]["passwordRef"] == ref
    assert "password" not in created.json()["database"]
    assert_problem(
        api.post(path, json={"name": "e", "database": {**database, "passwordRef": ref}}), 409
    )


def test_destinations_are_validated_and_can_be_deleted(api: Api) -> None:
    assert_invalid(
        api.post("/api/v1/destinations", json={"name": "d", "type": "ftp", "config": {}}), "type"
    )
    assert_invalid(
        api.post(
            "/api/v1/destinations",
            json={
                "name": "d",
                "type": "s3",
                "config": {"bucket": "bkt", "secretKeyRef": "AKIAplainsecret"},
            },
        ),
        "secretKeyRef",
    )
    created = api.post(
        "/api/v1/destinations",
        json={"name": "d", "type": "local", "config": {"path": "srv/backups"}},
    )
    assert created.status_code == 201, created.text
    destination = created.json()
    assert destination["isDefault"] is False
    assert api.get(created.headers["location"]).json() == destination
    assert api.delete(created.headers["location"]).status_code == 204
    assert_problem(api.get(created.headers["location"]), 404)
    assert_problem(api.delete(created.headers["location"]), 404)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../../etc", "'..'"),
        ("/etc", "not absolute"),
        ("backups/../../other-org", "'..'"),
        ("", "must name a directory"),
        (".", "must name a directory"),
        ("..\\..\\etc", "backslashes"),
        ("a\u0000b", "control characters"),
    ],
)
def test_a_local_destination_path_outside_the_organization_is_refused(
    api: Api, path: str, reason: str
) -> None:
    body = assert_invalid(
        api.post(
            "/api/v1/destinations",
            json={"name": "d", "type": "local", "config": {"path": path}},
        ),
        "config.path",
    )
    [error] = body["errors"]
    assert reason in error["message"]
    if path.strip("./"):
        assert path not in body["detail"], "a refused value is never echoed"
    assert api.get("/api/v1/destinations").json()["total"] == 0


def test_a_symlinked_destination_directory_is_refused_at_registration(
    api: Api, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (api.organization_directory / "team").mkdir(parents=True)
    (api.organization_directory / "team" / "linked").symlink_to(elsewhere)
    for path in ["team/linked", "team/linked/deeper"]:
        body = assert_invalid(
            api.post(
                "/api/v1/destinations",
                json={"name": "d", "type": "local", "config": {"path": path}},
            ),
            "config.path",
        )
        assert "symbolic link" in body["errors"][0]["message"]
        assert str(elsewhere) not in body["detail"]
    # The same directory, real: accepted.
    created = api.post(
        "/api/v1/destinations",
        json={"name": "d", "type": "local", "config": {"path": "team/real"}},
    )
    assert created.status_code == 201, created.text
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_organization_directory_is_refused_at_registration(
    api_for: Callable[..., Api],
) -> None:
    victim, attacker = api_for(), api_for()
    victim.organization_directory.mkdir(parents=True)
    # The organization's directory itself leads elsewhere (here: another organization's).
    attacker.organization_directory.symlink_to(victim.organization_directory)
    assert_invalid(
        attacker.post(
            "/api/v1/destinations",
            json={"name": "d", "type": "local", "config": {"path": "backups"}},
        ),
        "config.path",
    )


# --- lists ----------------------------------------------------------------------------


def test_lists_page_clamp_and_refuse_bad_parameters(api: Api) -> None:
    for index in range(3):
        api.project(f"project-{index}")
    page = api.get("/api/v1/projects", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3  # before "followed" is created below
    assert page["limit"] == 2
    assert page["offset"] == 1
    assert len(page["items"]) == 2
    created = api.post("/api/v1/projects", json={"name": "followed"})
    assert api.get(created.headers["location"]).json() == created.json()
    names = [p["name"] for p in api.get("/api/v1/projects").json()["items"]][1:]
    assert names == ["project-2", "project-1", "project-0"], "newest first"
    assert api.get("/api/v1/projects", params={"limit": 1000}).json()["limit"] == 100
    assert_invalid(api.get("/api/v1/projects", params={"limit": -1}), "limit")
    assert_invalid(api.get("/api/v1/projects", params={"limit": "ten"}), "limit")
    assert_invalid(api.get("/api/v1/projects", params={"offset": -5}), "offset")
    assert_problem(api.post("/api/v1/projects", json={"name": "project-0"}), 409)


def test_backup_lists_filter_and_validate(api: Api, source_database: str) -> None:
    environment = api.environment(source_database)
    api.destination()
    backup = api.request_backup(environment["id"]).json()
    api.wait_for(backup["id"])
    path = f"/api/v1/environments/{environment['id']}/backups"
    assert api.get(path).json()["limit"] == 20
    assert api.get(path, params={"status": "completed"}).json()["total"] == 1
    assert api.get(path, params={"status": "failed"}).json()["total"] == 0
    assert api.get(path, params={"type": "full"}).json()["total"] == 0
    assert_invalid(api.get(path, params={"status": "finished"}), "status")
    # Empty filters, as API.md writes the query, mean "no filter".
    assert api.get(f"{path}?status=&type=&limit=20&offset=0").json()["total"] == 1
    assert_invalid(api.get(path, params={"type": "logical"}), "type")
    project_path = f"/api/v1/projects/{environment['projectId']}/backups"
    project_page = api.get(project_path).json()
    assert project_page["limit"] == 50
    [item] = project_page["items"]
    assert item["environment"] == {"id": environment["id"], "name": "production"}
    assert "environment" not in api.get(f"/api/v1/backups/{backup['id']}").json()


def test_two_local_destinations_of_an_organization_cannot_share_a_directory(
    api_for: Callable[..., Api],
) -> None:
    """They would write, discard and adopt each other's files; another organization's
    directory of the same name is its own."""
    api, other = api_for(), api_for()
    first = api.destination("shared/dir")
    body = {"name": "second", "type": "local", "config": {"path": "shared/dir"}}
    refused = assert_problem(api.post("/api/v1/destinations", json=body), 409)
    assert "already writes to that path" in refused["detail"]
    assert other.post("/api/v1/destinations", json=body).status_code == 201
    nested = {**body, "name": "nested", "config": {"path": "shared/dir/inner"}}
    assert api.post("/api/v1/destinations", json=nested).status_code == 201
    # Removing the first frees its directory.
    assert api.delete(f"/api/v1/destinations/{first['id']}").status_code == 204
    assert api.post("/api/v1/destinations", json=body).status_code == 201
