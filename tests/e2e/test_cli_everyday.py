"""`tidemark backups | restore | alerts` end to end: the CLI as a subprocess (and in a real
pseudo-terminal) against the whole stack on real Kafka and PostgreSQL, over HTTP."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tidemark_devstack.e2e import Api, make_token, table_fingerprints
from tidemark_devstack.stack import Stack

# Each CLI run is a new interpreter (some seconds on a loaded machine), and the first test
# of a session also waits for the stack.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WRONG_PASSWORD = "not-the-password-7f3a"


def cli_env(stack: Stack, api: Api, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's settings as a deployment gives them (and no run.json to fall back on)."""
    return {
        **os.environ,
        "TIDEMARK_API_URL": stack.gateway_url,
        "TIDEMARK_TOKEN": make_token(api.org_id),
        "TIDEMARK_STATE_DIR": str(tmp_path),
        "COLUMNS": "200",
        **extra,
    }


def tidemark(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidemark_cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def one_line_error(answer: subprocess.CompletedProcess[str]) -> str:
    """The single ``tidemark: ...`` line of a failed run."""
    assert answer.returncode == 1, (answer.returncode, answer.stdout, answer.stderr)
    lines = answer.stderr.splitlines()
    assert len(lines) == 1, answer.stderr
    assert lines[0].startswith("tidemark: ")
    return lines[0]


class Terminal:
    """A command run with a pseudo-terminal as its stdin, stdout and stderr; the raw bytes
    it wrote (escape sequences and all) are read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        # A terminal 120 columns wide, so the bar has room beside the ids.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            close_fds=True,
        )
        os.close(slave)
        self.raw = b""
        self.closed = False

    def read_until(self, condition: Callable[[bytes], bool], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not condition(self.raw) and not self.closed:
            assert time.monotonic() < deadline, (
                f"timed out; the terminal shows {self.raw[-2000:]!r}"
            )
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                chunk = b""
            if not chunk:
                self.closed = True
            self.raw += chunk
        return self.raw

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float) -> int:
        self.read_until(lambda _: False, timeout)
        code = self.process.wait(timeout=timeout)
        os.close(self.master)
        return code


def test_follow_in_a_terminal_draws_a_bar_from_a_running_tick_to_100_percent_and_exits_0(
    stack: Stack, api: Api, source_database: str, tmp_path: Path
) -> None:
    environment = api.environment(source_database)
    api.destination()
    # pg_dump waits for this lock: the backup runs (and ticks) until the test lets go.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        backup_id = api.request_backup(environment["id"]).json()["id"]
        assert api.wait_for(backup_id, ("running",))["status"] == "running"
        terminal = Terminal(
            [sys.executable, "-m", "tidemark_cli", "backups", "follow", backup_id],
            cli_env(stack, api, tmp_path),
        )
        # A live tick's phase (the stream's first event, the state, says only "running").
        terminal.read_until(lambda raw: b"dumping" in raw, timeout=60)
        assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "running"
    finally:
        blocker.close()
    code = terminal.wait(timeout=120)
    raw = terminal.raw
    assert code == 0, raw[-2000:]
    assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "completed"
    # A bar redrawn in place (escape sequences, the bar's glyphs), running before done.
    assert b"\x1b[" in raw
    assert "━".encode() in raw
    running_at = raw.index(b"dumping")
    assert b"100%" in raw[running_at:]
    assert b"100%" not in raw[:running_at]
    final_frame = raw[raw.rindex(b"100%") - 400 :]
    assert b"completed" in final_frame
    assert b"Traceback" not in raw


def test_a_failed_backup_exits_1_with_the_reason_and_its_alert_can_be_read_and_dismissed(
    stack: Stack, api: Api, source_database: str, tmp_path: Path
) -> None:
    wrong = api.secret("wrong-password", WRONG_PASSWORD)
    environment = api.environment(source_database, password_ref=wrong)
    api.destination()
    env = cli_env(stack, api, tmp_path)

    answer = tidemark(env, "backups", "trigger", "--environment", environment["id"], "--follow")
    error = one_line_error(answer)
    assert " failed: " in error
    assert "password authentication failed" in error
    assert WRONG_PASSWORD not in answer.stdout + answer.stderr
    backup_id = error.removeprefix("tidemark: backup ").split()[0]
    assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "failed"
    # Not a terminal: a plain line per phase, ending with the outcome.
    assert answer.stdout.splitlines()[0] == f"backup {backup_id} accepted (pending)"
    assert answer.stdout.splitlines()[-1].startswith(f"backup {backup_id} failed")
    assert "\x1b[" not in answer.stdout

    # Following it again, after its end: the same outcome at once.
    again = tidemark(env, "backups", "follow", backup_id, "--json")
    assert again.returncode == 1
    assert [e["event"] for e in json_lines(again.stdout)] == ["failed"]
    assert "password authentication failed" in one_line_error(again)

    # Its alert.
    deadline = time.monotonic() + 60
    while True:
        listed = tidemark(env, "alerts", "--json")
        assert listed.returncode == 0, listed.stderr
        alerts = [a for a in json.loads(listed.stdout)["items"] if a["backupId"] == backup_id]
        if alerts:
            break
        assert time.monotonic() < deadline, "no backup_failed alert"
        time.sleep(0.5)
    [alert] = alerts
    assert alert["kind"] == "backup_failed"
    assert WRONG_PASSWORD not in listed.stdout
    table = tidemark(env, "alerts")
    assert table.returncode == 0
    assert alert["id"] in table.stdout
    assert "backup_failed" in table.stdout

    counted = tidemark(env, "alerts", "count", "--json")
    assert json.loads(counted.stdout) == {"count": 1, "unread": 1, "undismissed": 1}
    read = tidemark(env, "alerts", "read", alert["id"], "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["readAt"] is not None
    counted = tidemark(env, "alerts", "count")
    assert counted.stdout.strip() == "0 new (unread and undismissed); 0 unread, 1 undismissed"
    dismissed = tidemark(env, "alerts", "dismiss", alert["id"])
    assert dismissed.returncode == 0, dismissed.stderr
    assert dismissed.stdout.startswith(f"alert {alert['id']} dismissed: ")
    assert json.loads(tidemark(env, "alerts", "--json").stdout)["items"] == []
    everything = json.loads(tidemark(env, "alerts", "--include-dismissed", "--json").stdout)
    assert [a["id"] for a in everything["items"]] == [alert["id"]]
    assert everything["items"][0]["dismissedAt"] is not None
    # An alert that is not there (or another organization's): one line, exit 1.
    missing = tidemark(env, "alerts", "read", str(uuid.uuid4()))
    assert "404" in one_line_error(missing)


def test_trigger_follow_list_and_show_as_tables_and_json(
    stack: Stack, api: Api, source_database: str, tmp_path: Path
) -> None:
    environment = api.environment(source_database)
    api.destination()
    env = cli_env(stack, api, tmp_path)

    followed = tidemark(
        env,
        "backups",
        "trigger",
        "-e",
        environment["id"],
        "--label",
        "nightly",
        "--follow",
        "--json",
    )
    assert followed.returncode == 0, followed.stderr
    events = json_lines(followed.stdout)
    assert events[0]["event"] == "accepted"
    assert events[0]["data"]["status"] == "pending"
    assert events[0]["data"]["label"] == "nightly"
    backup_id = events[0]["data"]["id"]
    assert events[-1]["event"] == "completed"
    assert all(e["event"] == "progress" for e in events[1:-1])
    final = api.get(f"/api/v1/backups/{backup_id}").json()
    assert events[-1]["data"] == final
    assert final["status"] == "completed"

    pending = tidemark(env, "backups", "trigger", "-e", environment["id"], "--json")
    assert pending.returncode == 0, pending.stderr
    second = json.loads(pending.stdout)
    assert second["status"] == "pending"
    api.wait_for(second["id"])

    listed = json.loads(tidemark(env, "backups", "list", "-e", environment["id"], "--json").stdout)
    assert [b["id"] for b in listed["items"]] == [second["id"], backup_id]
    assert listed["total"] == 2
    limited = tidemark(env, "backups", "list", "-e", environment["id"], "--limit", "1", "--json")
    assert [b["id"] for b in json.loads(limited.stdout)["items"]] == [second["id"]]
    # Every project of the organization, filtered by type here.
    everywhere = json.loads(tidemark(env, "backups", "list", "--type", "db", "--json").stdout)
    assert [b["id"] for b in everywhere["items"]] == [second["id"], backup_id]
    assert everywhere["items"][0]["environment"]["id"] == environment["id"]
    assert json.loads(tidemark(env, "backups", "list", "--type", "full", "--json").stdout) == {
        "items": [],
        "total": None,
    }
    table = tidemark(env, "backups", "list", "--project", environment["projectId"])
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if backup_id in line]
    assert " completed " in row
    assert " db " in row
    assert "2 backups" in table.stdout

    shown = tidemark(env, "backups", "show", backup_id, "--json")
    assert json.loads(shown.stdout) == final
    card = tidemark(env, "backups", "show", backup_id)
    assert final["checksum"] in card.stdout
    assert final["destinations"][0]["name"] in card.stdout


def test_delete_asks_on_a_terminal_refuses_without_one_and_errors_are_one_line(
    stack: Stack, api: Api, source_database: str, tmp_path: Path
) -> None:
    environment = api.environment(source_database)
    api.destination()
    env = cli_env(stack, api, tmp_path)
    backup_id = api.completed_backup(environment)["id"]
    second = api.completed_backup(environment)

    # Without --yes and without a terminal to ask on: refused, nothing deleted.
    refused = tidemark(env, "backups", "delete", backup_id)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "completed"
    # On a terminal it asks: "n" keeps the backup, "y" deletes it.
    for answer, code in (("n", 1), ("y", 0)):
        asking = Terminal(
            [sys.executable, "-m", "tidemark_cli", "backups", "delete", second["id"]], env
        )
        asking.read_until(lambda raw: b"[y/N]" in raw, timeout=60)
        assert b"from every destination?" in asking.raw
        asking.type(f"{answer}\n")
        assert asking.wait(timeout=60) == code, asking.raw
        status = api.get(f"/api/v1/backups/{second['id']}").json()["status"]
        if answer == "n":
            assert b"tidemark: not deleted" in asking.raw
            assert status == "completed"
        else:
            assert f"backup {second['id']} deleting".encode() in asking.raw
            assert status in ("deleting", "deleted")
    deleted = tidemark(env, "backups", "delete", backup_id, "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["status"] == "deleting"
    assert api.wait_for(backup_id, ("deleted",))["status"] == "deleted"

    # Errors: one line each, exit 1, the API's status, title and reasons.
    missing = str(uuid.uuid4())
    error = one_line_error(tidemark(env, "backups", "show", missing))
    assert error == "tidemark: API answered 404 Not Found: backup not found"
    error = one_line_error(
        tidemark(env, "backups", "trigger", "-e", environment["id"], "--type", "full")
    )
    assert error.startswith("tidemark: API answered 422 Unprocessable Content: type: ")
    assert "cluster" in error
    # A bad token: 401, and the token is not repeated.
    bad = cli_env(stack, api, tmp_path, TIDEMARK_TOKEN="not-a-valid-token-0123")
    unauthorized = tidemark(bad, "backups", "list", "-e", environment["id"])
    assert "API answered 401" in one_line_error(unauthorized)
    assert "not-a-valid-token-0123" not in unauthorized.stderr
    # A usage error: click's exit 2.
    assert tidemark(env, "backups", "show", "not-a-uuid").returncode == 2


def test_restore_into_another_environment_follows_to_completion_and_the_data_arrives(
    stack: Stack, api: Api, source_database: str, target_database: str, tmp_path: Path
) -> None:
    api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    env = cli_env(stack, api, tmp_path)

    answer = tidemark(env, "restore", backup["id"], "--target", target["id"], "--json")
    assert answer.returncode == 0, answer.stderr
    events = json_lines(answer.stdout)
    assert events[0]["event"] == "accepted"
    restore_id = events[0]["data"]["id"]
    assert events[0]["data"]["targetEnvironmentId"] == target["id"]
    assert events[-1]["event"] == "completed"
    assert events[-1]["data"]["id"] == restore_id
    assert events[-1]["data"]["status"] == "completed"
    assert table_fingerprints(target_database) == table_fingerprints(source_database)
    restore = api.get(f"/api/v1/restores/{restore_id}").json()
    assert restore["status"] == "completed"
    assert restore["safetyBackupId"]


def test_restore_of_a_corrupted_artifact_exits_1_and_leaves_the_target_as_it_was(
    stack: Stack, api: Api, source_database: str, target_database: str, tmp_path: Path
) -> None:
    destination = api.destination()
    source = api.environment(source_database)
    target = api.environment(target_database)
    backup = api.completed_backup(source)
    artifact = api.directory(destination) / backup["destinations"][0]["location"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    before = table_fingerprints(target_database)
    env = cli_env(stack, api, tmp_path)

    answer = tidemark(env, "restore", backup["id"], "--target", target["id"], "--no-safety-backup")
    error = one_line_error(answer)
    assert error.startswith("tidemark: restore ")
    assert " failed: " in error
    assert "checksum" in error
    assert answer.stdout.splitlines()[0].startswith("restore ")
    assert table_fingerprints(target_database) == before

    # A request the API refuses: one line with the field and its reason.
    refused = tidemark(env, "restore", backup["id"], "--target", target["id"], "--type", "new")
    assert "422" in one_line_error(refused)
