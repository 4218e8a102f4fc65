"""One request, one id: the gateway answers with it, logs it and issues commands under it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from tidemark_contracts import BACKUP_COMMANDS
from tidemark_devstack.e2e import Api, make_token, topic_records
from tidemark_devstack.stack import Stack
from tidemark_platform.consumer import decode_envelope

pytestmark = pytest.mark.integration


def gateway_log_lines(stack: Stack) -> list[dict[str, object]]:
    lines = (stack.log_dir / "api-gateway.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for_log(
    stack: Stack, match: dict[str, object], timeout: float = 10.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        for line in gateway_log_lines(stack):
            if all(line.get(k) == v for k, v in match.items()):
                return line
        assert time.monotonic() < deadline, f"no log line with {match}"
        time.sleep(0.2)


def test_the_callers_request_id_is_answered_logged_and_carried_by_the_command(
    api: Api, stack: Stack, source_database: str, kafka_bootstrap: str
) -> None:
    environment = api.environment(source_database)
    api.destination()
    request_id = str(uuid.uuid4())
    response = api.post(
        f"/api/v1/environments/{environment['id']}/backups",
        json={"type": "db"},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == request_id
    backup_id = response.json()["id"]

    line = wait_for_log(stack, {"event": "http_request", "request_id": request_id})
    assert line["method"] == "POST"
    assert line["route"] == "/api/v1/environments/{env_id}/backups"
    assert line["status"] == 202
    assert line["organization_id"] == str(api.org_id)
    assert line["correlation_id"] == request_id
    assert isinstance(line["duration_ms"], float)

    # The command went through the outbox and the relay to Kafka under the request's id.
    api.wait_for(backup_id)
    commands = [
        decoded
        for r in asyncio.run(topic_records(kafka_bootstrap, BACKUP_COMMANDS.name))
        # Other tests park records here that are no envelopes at all.
        if (decoded := decode_envelope(r.value)) is not None
    ]
    (command,) = [c for c in commands if c.aggregate_id == uuid.UUID(backup_id)]
    assert command.correlation_id == uuid.UUID(request_id)


def test_a_request_without_an_id_gets_one_and_a_401_carries_it(api: Api, stack: Stack) -> None:
    answered = api.get("/api/v1/projects")
    generated = answered.headers["x-request-id"]
    assert uuid.UUID(generated)
    wait_for_log(stack, {"event": "http_request", "request_id": generated, "status": 200})

    anonymous = api.client.get(
        "/api/v1/projects", headers={"Authorization": "Bearer nope", "X-Request-ID": "abc-123"}
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["x-request-id"] == "abc-123"
    line = wait_for_log(stack, {"event": "http_request", "request_id": "abc-123"})
    assert line["status"] == 401
    assert line["organization_id"] is None


def test_an_unsafe_request_id_is_replaced_not_echoed(api: Api, stack: Stack) -> None:
    hostile = 'x" injected=1 ' + "a" * 300
    response = api.client.get(
        "/api/v1/projects",
        headers={
            "Authorization": f"Bearer {make_token(api.org_id)}",
            "X-Request-ID": hostile,
        },
    )
    assert response.status_code == 200
    assert uuid.UUID(response.headers["x-request-id"])
    assert not any(hostile in json.dumps(line) for line in gateway_log_lines(stack))
