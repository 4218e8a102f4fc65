"""`tidemark events export | verify` over a real history: every service running on Kafka
and PostgreSQL, driven over HTTP, then audited from the event stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_cli.app import app
from tidemark_devstack.e2e import JWT_SECRET, SOURCE_PASSWORD, Api
from tidemark_devstack.stack import Stack
from typer.testing import CliRunner

WRONG_PASSWORD = "not-the-Pa55word-of-shop"


def tidemark(*args: str, database_url: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "TIDEMARK_STATE_DIR": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "tidemark_cli", *args],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )


def backup(api: Api, environment: dict[str, Any]) -> dict[str, Any]:
    accepted = api.request_backup(environment["id"])
    assert accepted.status_code == 202, accepted.text
    return api.wait_for(accepted.json()["id"], timeout=120)


def wait(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.3)
    return found


def history(api: Api, source_database: str) -> dict[str, Any]:
    """Backups, a failed backup (wrong password) and its alert, a deletion, a schedule
    change and a restore, in one organization; returns what was made."""
    api.destination()
    environment = api.environment(source_database)
    schedule = f"/api/v1/environments/{environment['id']}/backups/schedule"
    for body in ({"dbFrequency": "daily"}, {"dbFrequency": "weekly", "paused": True}):
        destinations = api.get("/api/v1/destinations").json()["items"]
        put = api.put(schedule, json={"destinationIds": [destinations[0]["id"]], **body})
        assert put.status_code == 200, put.text
    first = backup(api, environment)
    assert first["status"] == "completed", first
    deleting = api.delete(f"/api/v1/backups/{first['id']}")
    assert deleting.status_code == 202, deleting.text
    assert api.wait_for(first["id"], ("deleted",))["status"] == "deleted"
    second = backup(api, environment)
    assert second["status"] == "completed", second
    accepted = api.post(
        f"/api/v1/backups/{second['id']}/restore",
        json={"targetType": "same", "createSafetyBackup": False},
    )
    assert accepted.status_code == 202, accepted.text
    restore_id = accepted.json()["id"]
    restored = wait(
        lambda: (
            (r := api.get(f"/api/v1/restores/{restore_id}").json())["status"]
            in ("completed", "failed")
            and r
        ),
        "finished restore",
        timeout=120,
    )
    assert restored["status"] == "completed", restored
    broken = api.environment(source_database, password_ref=api.secret("db-pw", WRONG_PASSWORD))
    failed = backup(api, broken)
    assert failed["status"] == "failed", failed
    alert = wait(
        lambda: [
            a
            for a in api.get("/api/v1/backups/alerts").json()["items"]
            if a["backupId"] == failed["id"]
        ],
        "alert of the failed backup",
    )[0]
    return {
        "environment": environment,
        "broken": broken,
        "first": first,
        "second": second,
        "failed": failed,
        "restore": restore_id,
        "alert": alert,
    }


def export(stack: Stack, out: Path, *args: str) -> list[bytes]:
    ran = tidemark("events", "export", *args, "--output", str(out), database_url=stack.database_url)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == b""
    return out.read_bytes().splitlines(keepends=True)


def in_process(stack: Stack, *args: str) -> Result:
    """The CLI in this process (typer's runner): a process of its own takes its imports'
    time again, up to half a minute on a loaded machine, which this test would pay ten
    times over."""
    return CliRunner().invoke(
        app,
        list(args),
        env={"DATABASE_URL": stack.database_url, "TIDEMARK_STATE_DIR": "/nonexistent"},
    )


def export_in_process(stack: Stack, out: Path, *args: str) -> list[bytes]:
    result = in_process(stack, "events", "export", *args, "--output", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    return out.read_bytes().splitlines(keepends=True)


def kind(line: dict[str, Any]) -> str:
    return str(line["type"]).rsplit(":", 1)[1]


def index_of(lines: list[dict[str, Any]], aggregate: str, event: str) -> int:
    return next(
        n for n, x in enumerate(lines) if x.get("aggregateId") == aggregate and kind(x) == event
    )


def mentions(line: dict[str, Any], some_id: str) -> bool:
    text = json.dumps(line)
    return some_id in text or uuid.UUID(some_id).hex in text


@pytest.mark.timeout(900)  # a stack, a real history, and the CLI started as a process
def test_an_organizations_history_is_exported_in_order_without_credentials_and_verifies(
    stack: Stack,
    api: Api,
    api_for: Callable[..., Api],
    source_database: str,
    tmp_path: Path,
) -> None:
    # A restore replaces the database through a new one: its role may create databases.
    role = str(conninfo_to_dict(source_database)["user"])
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role)))
    made = history(api, source_database)
    stranger = api_for()
    stranger.destination()
    theirs = stranger.environment(source_database)
    their_backup = backup(stranger, theirs)

    out = tmp_path / "org.jsonl"
    raw = export(stack, out, "--organization", str(api.org_id))
    lines = [json.loads(line) for line in raw]
    events = lines[1:-1]
    assert lines[-1]["count"] == len(events)

    # The order is the order things happened.
    recorded = [x["recordedAt"] for x in events]
    assert recorded == sorted(recorded)
    for done in (made["first"], made["second"]):
        steps = [
            index_of(events, done["id"], e)
            for e in ("Backup.Requested", "Backup.Started", "Backup.Completed")
        ]
        assert steps == sorted(steps)
    completed = index_of(events, made["first"]["id"], "Backup.Completed")
    assert completed < index_of(events, made["first"]["id"], "Backup.DeletionRequested")
    assert completed < index_of(events, made["first"]["id"], "Backup.Deleted")
    failure = index_of(events, made["failed"]["id"], "Backup.Failed")
    alert = next(
        n
        for n, x in enumerate(events)
        if x["store"] == "alerts" and mentions(x, made["failed"]["id"])
    )
    assert failure < alert
    assert any(x["aggregateId"] == made["restore"] for x in events)
    restore_steps = [kind(x) for x in events if x["aggregateId"] == made["restore"]]
    assert restore_steps[0] == "Restore.Requested"
    assert restore_steps[-1] == "Restore.Completed"
    assert index_of(events, made["second"]["id"], "Backup.Completed") < next(
        n for n, x in enumerate(events) if x["aggregateId"] == made["restore"]
    )
    schedule = [x for x in events if x["store"] == "scheduler_store"]
    assert len(schedule) >= 2  # created, then changed
    assert {x["store"] for x in events} >= {
        "gateway_catalog",
        "scheduler_store",
        "backup_runner",
        "restore_runner",
        "alerts",
    }
    # Another organization's events are not there.
    assert not [x for x in events if mentions(x, str(stranger.org_id))]
    assert not [x for x in events if mentions(x, their_backup["id"]) or mentions(x, theirs["id"])]
    # No credential in any line: the databases' passwords (right and wrong), the control
    # plane's own database password, the JWT secret.
    control_plane_password = str(conninfo_to_dict(stack.database_url)["password"])
    for secret in (SOURCE_PASSWORD, WRONG_PASSWORD, control_plane_password, JWT_SECRET):
        assert secret.encode() not in b"".join(raw)
    assert b"secret:db-pw" in b"".join(raw)  # the references are kept

    # The environment's and the project's histories: the broken environment's project apart.
    by_env = [
        json.loads(x)
        for x in export_in_process(
            stack, tmp_path / "env.jsonl", "--environment", made["environment"]["id"]
        )[1:-1]
    ]
    by_project = [
        json.loads(x)
        for x in export_in_process(
            stack, tmp_path / "project.jsonl", "--project", made["environment"]["projectId"]
        )[1:-1]
    ]
    for subset in (by_env, by_project):
        ids = {x["aggregateId"] for x in subset}
        assert {made["first"]["id"], made["second"]["id"], made["restore"]} <= ids
        assert made["failed"]["id"] not in ids
        assert [x["recordedAt"] for x in subset] == sorted(x["recordedAt"] for x in subset)
    assert {x["aggregateId"] for x in by_env} <= {x["aggregateId"] for x in by_project}
    assert made["environment"]["projectId"] in {x["aggregateId"] for x in by_project}

    # An untouched export verifies, also against the stores as they are now.
    ok = tidemark(
        "events", "verify", str(out), "--against-store", "--json", database_url=stack.database_url
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "ok": True,
        "lines": len(raw),
        "events": len(events),
        "againstStore": True,
    }

    # Each kind of tampering fails at the line it happened to.
    middle = len(raw) // 2
    record = json.loads(raw[middle - 1])
    record["event"]["tampered"] = True
    altered = [
        *raw[: middle - 1],
        json.dumps(record, separators=(",", ":")).encode() + b"\n",
        *raw[middle:],
    ]
    removed = [*raw[: middle - 1], *raw[middle:]]
    inserted = [*raw[: middle - 1], raw[3], *raw[middle - 1 :]]
    swapped = [*raw[: middle - 1], raw[middle], raw[middle - 1], *raw[middle + 1 :]]
    for name, tampered in (
        ("altered", altered),
        ("removed", removed),
        ("inserted", inserted),
        ("reordered", swapped),
    ):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(tampered))
        result = in_process(stack, "events", "verify", str(path), "--json")
        assert result.exit_code == 1, (name, result.output)
        verdict = json.loads(result.stdout)
        assert (verdict["problem"], verdict["line"]) == (name, middle), name
    ran = tidemark(
        "events", "verify", str(tmp_path / "altered.jsonl"), database_url=stack.database_url
    )
    assert ran.returncode == 1
    said = ran.stderr.decode()
    assert said.count("\n") == 1
    assert said.startswith(f"tidemark: {path.parent / 'altered.jsonl'}: line {middle} altered: ")
