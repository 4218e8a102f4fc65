"""``/api/v1/secrets``: stored per organization, values in and never out, in use kept."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from tidemark_devstack.e2e import SOURCE_PASSWORD, Api, send_backup_command

pytestmark = pytest.mark.integration


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


def test_secrets_are_created_listed_replaced_and_deleted_without_their_values(api: Api) -> None:
    value = "stored-value-0b9e1f"
    created = api.post("/api/v1/secrets", json={"name": "db.primary", "value": value})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/secrets/db.primary"
    assert set(created.json()) == {"name", "createdAt", "updatedAt"}
    assert created.json()["name"] == "db.primary"
    read = api.get(created.headers["location"])
    assert read.status_code == 200, read.text
    assert read.json() == created.json()
    problem(api.post("/api/v1/secrets", json={"name": "db.primary", "value": "x"}), 409)

    listed = api.get("/api/v1/secrets")
    assert listed.status_code == 200
    assert listed.json()["total"] == 1
    assert [set(item) for item in listed.json()["items"]] == [{"name", "createdAt", "updatedAt"}]

    replaced = api.put("/api/v1/secrets/db.primary", json={"value": "replaced-value-77c2"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["createdAt"] == created.json()["createdAt"]
    assert replaced.json()["updatedAt"] >= created.json()["updatedAt"]
    problem(api.put("/api/v1/secrets/missing", json={"value": "x"}), 404)

    for response in (created, listed, replaced):
        assert value not in response.text
        assert "replaced-value-77c2" not in response.text

    assert api.delete("/api/v1/secrets/db.primary").status_code == 204
    problem(api.delete("/api/v1/secrets/db.primary"), 404)
    assert api.get("/api/v1/secrets").json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "../etc", "value": "v"}, "name"),
        ({"name": "a b", "value": "v"}, "name"),
        ({"name": "", "value": "v"}, "name"),
        ({"name": "x" * 101, "value": "v"}, "name"),
        ({"name": "abc\n", "value": "v"}, "name"),
        ({"name": "ok", "value": ""}, "value"),
        ({"name": "ok"}, "value"),
        ({"name": "ok", "value": "v", "organizationId": "x"}, "organizationId"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field(api: Api, body: dict, field: str) -> None:
    refused = problem(api.post("/api/v1/secrets", json=body), 422)
    assert any(field in error["field"] for error in refused["errors"]), refused


def test_a_secret_in_use_cannot_be_deleted_until_nothing_uses_it(
    api: Api, source_database: str, database_url: str
) -> None:
    environment = api.environment(source_database)  # uses secret:source-password
    refused = problem(api.delete("/api/v1/secrets/source-password"), 409)
    assert environment["id"] in refused["detail"]
    assert SOURCE_PASSWORD not in refused["detail"]
    # Even if its recorded use were lost, the registered environment holds the secret.
    with psycopg.connect(database_url, autocommit=True) as conn:
        dropped = conn.execute(
            "DELETE FROM secrets.uses WHERE user_id = %s", (environment["id"],)
        ).rowcount
    assert dropped == 1
    problem(api.delete("/api/v1/secrets/source-password"), 409)

    for name in ("ak", "sk"):
        api.secret(name, f"s3-{name}-value")
    s3 = api.post(
        "/api/v1/destinations",
        json={
            "name": "s3",
            "type": "s3",
            "config": {"bucket": "bkt", "accessKeyRef": "secret:ak", "secretKeyRef": "secret:sk"},
        },
    )
    assert s3.status_code == 201, s3.text
    problem(api.delete("/api/v1/secrets/ak"), 409)
    # A registration naming a missing secret records nothing (no use, no destination).
    missing = api.post(
        "/api/v1/destinations",
        json={
            "name": "s3-2",
            "type": "s3",
            "config": {"bucket": "bkt", "accessKeyRef": "secret:ak", "secretKeyRef": "secret:nope"},
        },
    )
    body = problem(missing, 422)
    assert body["errors"] == [
        {"field": "config.secretKeyRef", "message": "names no secret of this organization"}
    ]
    assert "nope" not in missing.text
    assert [d["name"] for d in api.get("/api/v1/destinations").json()["items"]] == ["s3"]
    # Removing the destination frees its secrets.
    assert api.delete(f"/api/v1/destinations/{s3.json()['id']}").status_code == 204
    assert api.delete("/api/v1/secrets/ak").status_code == 204
    assert api.delete("/api/v1/secrets/sk").status_code == 204


def test_a_replaced_secret_is_what_the_next_backup_uses(api: Api, source_database: str) -> None:
    ref = api.secret("rotating", "not-the-password")
    environment = api.environment(source_database, password_ref=ref)
    api.destination()
    failed = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert failed["status"] == "failed"
    assert "password authentication failed" in failed["error"]
    api.secret("rotating", SOURCE_PASSWORD)
    completed = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert completed["status"] == "completed", completed


def test_a_command_naming_another_organizations_secret_fails_before_anything_runs(
    api_for: Callable[..., Api], source_database: str, kafka_bootstrap: str
) -> None:
    """Commands can reach Kafka without the gateway: the runner resolves a reference only
    within the organization the command names, and A's secret is not B's."""
    owner, intruder = api_for(), api_for()
    environment = owner.environment(source_database)  # A's secret:source-password
    destination = owner.destination()
    command = owner.backup_command(environment, destination)
    stolen = command.model_copy(update={"organization_id": intruder.org_id})
    send_backup_command(kafka_bootstrap, stolen)
    backup = intruder.wait_for(str(stolen.backup_id), missing_ok=True)
    assert backup["status"] == "failed", backup
    assert "is not registered to the organization" in backup["error"]
    assert backup["startedAt"] is None, "refused before pg_dump ever ran"
    written = intruder.organization_directory, owner.organization_directory
    assert [p for d in written if d.exists() for p in d.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("forged", ["database", "destination"])
def test_a_command_that_would_send_an_organizations_secret_elsewhere_is_refused(
    api: Api, source_database: str, kafka_bootstrap: str, forged: str
) -> None:
    """A command in the organization's own name, for its own environment and with its own
    secret, but to a database server (or destination) of the sender's choosing: the runner
    serves only what the organization registered, so the secret never leaves."""
    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    with socket.socket() as elsewhere:
        elsewhere.bind(("127.0.0.1", 0))
        elsewhere.listen()
        elsewhere.setblocking(False)
        if forged == "database":
            port = elsewhere.getsockname()[1]
            command = command.model_copy(
                update={"database": command.database.model_copy(update={"port": port})}
            )
        else:
            moved = command.destinations[0].model_copy(
                update={"config": command.destinations[0].config.model_copy(update={"path": "x"})}
            )
            command = command.model_copy(update={"destinations": [moved]})
        send_backup_command(kafka_bootstrap, command)
        backup = api.wait_for(str(command.backup_id), missing_ok=True)
        assert backup["status"] == "failed", backup
        assert "registered" in backup["error"]
        assert backup["startedAt"] is None, "refused before any connection"
        with pytest.raises(BlockingIOError):
            elsewhere.accept()  # nobody came
    written = api.organization_directory
    assert not written.exists() or not [p for p in written.rglob("*") if p.is_file()]
