"""The attack table: what organization B tries against organization A, and hostile input.

Every row is one attempt over HTTP with what it must answer; after the table, nothing of
A's changed and nothing B tried left a trace (no resource, no backup, no command).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from tidemark_devstack.e2e import JWT_SECRET, SOURCE_SECRET, Api, make_token

pytestmark = pytest.mark.integration


@dataclass
class Victim:
    api: Api
    project: dict[str, Any]
    environment: dict[str, Any]
    destination: dict[str, Any]
    backup: dict[str, Any]


@pytest.fixture
def victim(api_for: Callable[..., Api], source_database: str) -> Victim:
    owner = api_for()
    environment = owner.environment(source_database)  # names A's secret:source-password
    destination = owner.destination("a")
    backup = owner.wait_for(owner.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "completed", backup
    project = owner.get(f"/api/v1/projects/{environment['projectId']}").json()
    return Victim(owner, project, environment, destination, backup)


def leaks(response: httpx.Response, victim: Victim) -> list[str]:
    """What of A's the answer gives away: ids, names, the secret's name."""
    text = response.text
    found = [
        value
        for value in (
            victim.environment["id"],
            victim.destination["id"],
            victim.backup["id"],
            victim.project["id"],
            victim.destination["name"],
            victim.project["name"],
            SOURCE_SECRET,
            str(victim.api.org_id),
        )
        if value in text
    ]
    return found


def test_another_organization_cannot_use_list_read_or_learn_of_anything(
    victim: Victim, api_for: Callable[..., Api]
) -> None:
    intruder = api_for()
    a = victim
    env_id, dest_id, backup_id = a.environment["id"], a.destination["id"], a.backup["id"]
    database = {**a.environment["database"]}  # A's host, dbname, user and secret:NAME
    attempts: list[tuple[str, Callable[[], httpx.Response], int]] = [
        # Reading by guessed (here: known) ids.
        ("read A's project", lambda: intruder.get(f"/api/v1/projects/{a.project['id']}"), 404),
        ("read A's environment", lambda: intruder.get(f"/api/v1/environments/{env_id}"), 404),
        (
            "list A's project's environments",
            lambda: intruder.get(f"/api/v1/projects/{a.project['id']}/environments"),
            404,
        ),
        ("read A's destination", lambda: intruder.get(f"/api/v1/destinations/{dest_id}"), 404),
        ("read A's backup", lambda: intruder.get(f"/api/v1/backups/{backup_id}"), 404),
        (
            "list A's environment's backups",
            lambda: intruder.get(f"/api/v1/environments/{env_id}/backups"),
            404,
        ),
        # Using them.
        ("back up A's environment", lambda: intruder.request_backup(env_id), 404),
        (
            "register an environment in A's project",
            lambda: intruder.post(
                f"/api/v1/projects/{a.project['id']}/environments",
                json={"name": "x", "database": database},
            ),
            404,
        ),
        ("delete A's destination", lambda: intruder.delete(f"/api/v1/destinations/{dest_id}"), 404),
        (
            "replace A's secret",
            lambda: intruder.put("/api/v1/secrets/source-password", json={"value": "mine now"}),
            404,
        ),
        ("delete A's secret", lambda: intruder.delete("/api/v1/secrets/source-password"), 404),
    ]
    # Naming A's secret from B's own environment, and borrowing A's destination.
    project = intruder.project()
    attempts += [
        (
            "name A's secret in B's environment",
            lambda: intruder.post(
                f"/api/v1/projects/{project['id']}/environments",
                json={"name": "borrowed", "database": database},
            ),
            422,
        ),
    ]
    intruder.secret("own", "b-password")
    own_env = intruder.post(
        f"/api/v1/projects/{project['id']}/environments",
        json={"name": "own", "database": {**database, "passwordRef": "secret:own"}},
    )
    assert own_env.status_code == 201, own_env.text
    attempts += [
        (
            "borrow A's destination for B's backup",
            lambda: intruder.request_backup(own_env.json()["id"], destinationIds=[dest_id]),
            422,
        ),
    ]
    failures = []
    for what, attempt, status in attempts:
        response = attempt()
        if response.status_code != status:
            failures.append(f"{what}: {response.status_code} {response.text[:200]}")
        elif not response.headers["content-type"].startswith("application/problem+json"):
            failures.append(f"{what}: not problem+json")
        elif leaks(response, a):
            failures.append(f"{what}: the answer names {leaks(response, a)}")
    assert failures == []
    # Naming A's secret is refused exactly as naming one nobody has: nothing to learn.
    borrowed, nobodys = (
        intruder.post(
            f"/api/v1/projects/{project['id']}/environments",
            json={"name": "probe", "database": {**database, "passwordRef": ref}},
        ).json()
        for ref in (a.environment["database"]["passwordRef"], "secret:nobody-has-this")
    )
    assert borrowed == nobodys
    assert borrowed["errors"] == [
        {"field": "database.passwordRef", "message": "names no secret of this organization"}
    ]
    # B's lists hold only B's own things, and never A's secret names.
    listed = {
        path: intruder.get(path)
        for path in ("/api/v1/secrets", "/api/v1/destinations", "/api/v1/projects")
    }
    assert [s["name"] for s in listed["/api/v1/secrets"].json()["items"]] == ["own"]
    assert listed["/api/v1/destinations"].json()["total"] == 0
    for response in listed.values():
        assert leaks(response, a) == []
    # Nothing of A's changed: its secret still opens (a new backup completes).
    again = a.api.wait_for(a.api.request_backup(env_id).json()["id"])
    assert again["status"] == "completed", again
    assert a.api.get(f"/api/v1/destinations/{dest_id}").status_code == 200


def _env_body(database: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"e-{uuid.uuid4().hex[:6]}", "database": database}


def test_hostile_references_and_connection_fields_are_refused_before_anything_runs(
    api: Api,
) -> None:
    project = api.project()
    ref = api.secret("db", "a-password")
    good = {"host": "127.0.0.1", "port": 5432, "dbname": "app", "user": "app", "passwordRef": ref}
    path = f"/api/v1/projects/{project['id']}/environments"
    rows: list[tuple[str, dict[str, Any], str]] = [
        ("dbname", {**good, "dbname": "host=/var/run/postgresql user=postgres"}, "dbname"),
        ("dbname uri", {**good, "dbname": "postgresql://postgres@/postgres?host=/tmp"}, "dbname"),
        ("user", {**good, "user": "postgres service=evil"}, "user"),
        ("socket host", {**good, "host": "/var/run/postgresql"}, "host"),
        ("env ref", {**good, "passwordRef": "env:DATABASE_URL"}, "passwordRef"),
        ("file ref", {**good, "passwordRef": "file:/etc/shadow"}, "passwordRef"),
        ("plain secret", {**good, "passwordRef": "hunter2"}, "passwordRef"),
        ("newline ref", {**good, "passwordRef": f"{ref}\n"}, "passwordRef"),
        ("newline dbname", {**good, "dbname": "app\n"}, "dbname"),
        ("no password", {k: v for k, v in good.items() if k != "passwordRef"}, "passwordRef"),
    ]
    failures = []
    for what, database, field in rows:
        response = api.post(path, json=_env_body(database))
        body = response.json() if response.status_code == 422 else {}
        fields = [e["field"] for e in body.get("errors", [])]
        if response.status_code != 422 or not any(field in f for f in fields):
            failures.append(f"{what}: {response.status_code} {response.text[:200]}")
        hostile = database.get(field)
        if isinstance(hostile, str) and len(hostile) > 6 and hostile in response.text:
            failures.append(f"{what}: the refusal repeats the value")
    assert failures == []
    # Nothing was registered by any of them.
    assert api.get(path).json()["total"] == 0


def test_tokens_without_scope_unsigned_or_signed_with_something_else_get_nothing(
    stack: Any, api: Api
) -> None:
    org = uuid.uuid4()
    claims = {"sub": "x", "org_id": str(org), "exp": 4102444800}
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    tokens = {
        "alg none": (unsigned, 401),
        "another HMAC secret": (jwt.encode(claims, "x" * 64, algorithm="HS256"), 401),
        "no scope claim": (make_token(org, scope=None), 403),
        "read scope writing": (make_token(org, scope="backups:read"), 403),
        "valid": (make_token(org, secret=JWT_SECRET), 200),
    }
    failures = []
    for what, (token, status) in tokens.items():
        headers = {"Authorization": f"Bearer {token}"}
        method = "POST" if what == "read scope writing" else "GET"
        response = httpx.request(
            method,
            f"{stack.gateway_url}/api/v1/projects",
            headers=headers,
            json={"name": "p"} if method == "POST" else None,
            timeout=10,
        )
        if response.status_code != status:
            failures.append(f"{what}: {response.status_code} {response.text[:200]}")
    assert failures == []
