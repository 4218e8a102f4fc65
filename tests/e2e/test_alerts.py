"""Alerts end to end, on real Kafka and PostgreSQL with every service running: each kind
raised by making the real thing fail (a destination that refuses writes, a wrong database
password, a corrupted artifact, a scheduler stopped across a fire time, a WAL receiver
stopped while the database writes, a destination that refuses a deletion, an S3 endpoint
that is down), never by publishing a fake event; seen through GET /api/v1/backups/alerts,
repeated, resolved, read and dismissed; and delivered to webhook receivers on loopback
(signed, retried after a 500, not held up by a receiver that hangs)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tidemark_contracts.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    WebhookPayload,
    verify_signature,
)
from tidemark_devstack.e2e import SOURCE_PASSWORD, Api, full_environment, make_token
from tidemark_devstack.pytest_plugin import S3Endpoint
from tidemark_devstack.s3 import CuttableProxy
from tidemark_devstack.source_cluster import (
    SourceCluster,
    remove_source_cluster,
    start_source_cluster,
)
from tidemark_devstack.stack import Stack, log_name
from tidemark_schedules import ids

pytestmark = pytest.mark.integration

ALERTS = "/api/v1/backups/alerts"
WRONG_PASSWORD = "not-the-password-ALERTLEAK-7c"
SIGNING_SECRET = "whsec-e2e-signing-secret-0123456789"
SCHEDULER = "scheduler"
# How late a fire time may still fire, for the scheduler restarted in the missed-fire test
# only (the stack's default, 15 minutes, would fire one missed time late instead).
SHORT_GRACE_SECONDS = 5


# -- reading alerts ---------------------------------------------------------------------


def listed(api: Api, *, include_dismissed: bool = True, **params: Any) -> dict[str, Any]:
    query = {"include_dismissed": str(include_dismissed).lower(), "limit": 100, **params}
    response = api.get(ALERTS, params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def kinds(api: Api, kind: str, *, include_dismissed: bool = True) -> list[dict[str, Any]]:
    """The organization's alerts of ``kind`` (a failing local destination also raises
    ``destination_unreachable`` beside ``backup_failed``: its upload failed too)."""
    items = listed(api, include_dismissed=include_dismissed)["items"]
    return [a for a in items if a["kind"] == kind]


def counts(api: Api) -> dict[str, int]:
    response = api.get(f"{ALERTS}/count")
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


def wait_alert(
    api: Api,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll the organization's alerts (dismissed too) until one satisfies ``check``."""
    deadline = time.monotonic() + timeout
    while True:
        items = listed(api)["items"]
        found = [a for a in items if check(a)]
        if found:
            assert len(found) == 1, f"more than one alert is {what}: {found}"
            return found[0]
        assert time.monotonic() < deadline, f"no alert {what} after {timeout:.0f}s: {items}"
        time.sleep(0.3)


def of_kind(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def check(alert: dict[str, Any]) -> bool:
        return alert["kind"] == kind and all(alert.get(k) == v for k, v in fields.items())

    return check


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def stored_utc(value: Any) -> datetime:
    """A datetime as eventsourcing stores it (``{"_type_": ..., "_data_": iso}``)."""
    raw = value["_data_"] if isinstance(value, dict) else value
    return datetime.fromisoformat(raw).astimezone(UTC)


def assert_no_leak(alert: dict[str, Any], *secrets: str) -> None:
    text = json.dumps(alert)
    for secret in secrets:
        assert secret not in text


# -- causing failures -------------------------------------------------------------------


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """Nothing can be created in or removed from ``directory``, not even by root."""
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def backup(api: Api, environment: dict[str, Any], **body: Any) -> dict[str, Any]:
    accepted = api.request_backup(environment["id"], **body)
    assert accepted.status_code == 202, accepted.text
    return api.wait_for(accepted.json()["id"], timeout=120)


def broken_environment(api: Api, database_url: str) -> dict[str, Any]:
    """An environment whose passwordRef names a secret holding the wrong password."""
    return api.environment(database_url, password_ref=api.secret("db-password", WRONG_PASSWORD))


# -- backup_failed ----------------------------------------------------------------------


def test_an_unwritable_destination_raises_one_backup_failed_alert_repeated_then_resolved(
    api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination("locked")
    directory = api.directory(destination)
    directory.mkdir(parents=True)
    with immutable(directory):
        first = backup(api, environment)
        assert first["status"] == "failed", first
        assert "Operation not permitted" in first["error"]
        raised = wait_alert(
            api, of_kind("backup_failed", environmentId=environment["id"]), "raised"
        )
        assert raised["occurrences"] == 1
        assert raised["severity"] == "critical"
        assert raised["organizationId"] == str(api.org_id)
        assert raised["projectId"] == environment["projectId"]
        assert raised["backupId"] == first["id"]
        assert raised["restoreId"] is None
        assert raised["title"]
        assert raised["message"]
        assert raised["resolvedAt"] is None
        assert raised["readAt"] is None
        assert raised["dismissedAt"] is None
        assert raised["createdAt"] == raised["lastSeenAt"]
        assert str(api.destination_root) not in json.dumps(raised), "no path of the runner's"

        second = backup(api, environment)
        assert second["status"] == "failed", second
        repeated = wait_alert(
            api,
            of_kind("backup_failed", environmentId=environment["id"], occurrences=2),
            "repeated",
        )
    assert repeated["id"] == raised["id"], "a repetition updates the open alert"
    assert repeated["createdAt"] == raised["createdAt"]
    assert parse(repeated["lastSeenAt"]) > parse(raised["lastSeenAt"])
    assert repeated["backupId"] == second["id"], "links of the latest occurrence"
    assert repeated["resolvedAt"] is None
    assert [a["id"] for a in kinds(api, "backup_failed")] == [raised["id"]]

    # Repaired: the next backup completes and resolves the alert, which stays listed.
    fixed = backup(api, environment)
    assert fixed["status"] == "completed", fixed
    resolved = wait_alert(
        api,
        lambda a: a["id"] == raised["id"] and a["resolvedAt"] is not None,
        "resolved",
    )
    assert resolved["occurrences"] == 2
    assert parse(resolved["resolvedAt"]) >= parse(repeated["lastSeenAt"])
    assert [a["id"] for a in kinds(api, "backup_failed", include_dismissed=False)] == [raised["id"]]


def test_a_wrong_database_password_raises_backup_failed_and_fixing_it_resolves(
    api: Api, source_database: str
) -> None:
    environment = broken_environment(api, source_database)
    api.destination()
    failed = backup(api, environment)
    assert failed["status"] == "failed", failed
    assert "password authentication failed" in failed["error"]
    alert = wait_alert(api, of_kind("backup_failed", environmentId=environment["id"]), "raised")
    assert alert["backupId"] == failed["id"]
    assert alert["severity"] == "critical"
    assert_no_leak(alert, WRONG_PASSWORD, SOURCE_PASSWORD)

    api.secret("db-password", SOURCE_PASSWORD)  # the right password now
    fixed = backup(api, environment)
    assert fixed["status"] == "completed", fixed
    resolved = wait_alert(
        api, lambda a: a["id"] == alert["id"] and a["resolvedAt"] is not None, "resolved"
    )
    assert resolved["occurrences"] == 1
    # A new failure after the resolution is a new episode: a new alert.
    api.secret("db-password", WRONG_PASSWORD)
    again = backup(api, environment)
    assert again["status"] == "failed", again
    reopened = wait_alert(
        api,
        of_kind("backup_failed", environmentId=environment["id"], resolvedAt=None),
        "raised again",
    )
    assert reopened["id"] != alert["id"]
    assert reopened["backupId"] == again["id"]
    assert len(kinds(api, "backup_failed")) == 2


# -- restore_failed ---------------------------------------------------------------------


def test_a_corrupted_artifact_raises_restore_failed(api: Api, source_database: str) -> None:
    destination = api.destination()
    environment = api.environment(source_database)
    completed = backup(api, environment)
    assert completed["status"] == "completed", completed
    artifact = api.directory(destination) / completed["destinations"][0]["location"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    accepted = api.post(
        f"/api/v1/backups/{completed['id']}/restore",
        json={"targetType": "same", "createSafetyBackup": False},
    )
    assert accepted.status_code == 202, accepted.text
    restore_id = accepted.json()["id"]
    deadline = time.monotonic() + 120
    while (restore := api.get(f"/api/v1/restores/{restore_id}").json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, restore
        time.sleep(0.3)
    assert restore["status"] == "failed", restore
    assert "checksum" in restore["error"]

    alert = wait_alert(api, of_kind("restore_failed"), "raised")
    assert alert["environmentId"] == environment["id"]
    assert alert["restoreId"] == restore_id
    assert alert["backupId"] == completed["id"]
    assert alert["severity"] == "critical"
    assert alert["occurrences"] == 1
    assert alert["resolvedAt"] is None
    assert str(api.destination_root) not in json.dumps(alert)


# -- schedule_missed --------------------------------------------------------------------


def schedule_events(database_url: str, schedule_id: uuid.UUID, name: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT state FROM scheduler_store.scheduler_events "
            "WHERE originator_id = %s AND topic LIKE %s ORDER BY originator_version",
            (schedule_id, f"%Schedule.{name}"),
        ).fetchall()
    return [json.loads(bytes(row[0])) for row in rows]


def schedule_known(database_url: str, schedule_id: uuid.UUID) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM scheduler_store.scheduler_events WHERE originator_id = %s",
            (schedule_id,),
        ).fetchone()
    return bool(row and row[0])


def missed_log_lines(stack: Stack, schedule_id: uuid.UUID) -> list[dict[str, Any]]:
    path = stack.log_dir / log_name((SCHEDULER, 0))
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "schedule_missed" and record.get("schedule_id") == str(
                schedule_id
            ):
                found.append(record)
    return found


@contextlib.contextmanager
def scheduler_with_short_grace(stack: Stack) -> Iterator[None]:
    """The scheduler started with a grace of a few seconds (a fire time it was down for
    is then missed, not fired late); the stack's own settings again afterwards."""
    key = "TIDEMARK_SCHEDULER_GRACE_SECONDS"
    stack.extra_env[key] = str(SHORT_GRACE_SECONDS)
    try:
        stack.start(only=SCHEDULER)
        stack.wait_ready(timeout=120)
        yield
    finally:
        del stack.extra_env[key]
        stack.stop(only=SCHEDULER)
        stack.start(only=SCHEDULER)
        stack.wait_ready(timeout=120)


def test_a_scheduler_stopped_across_a_fire_time_raises_schedule_missed(
    api: Api, stack: Stack, source_database: str, database_url: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination("scheduled")
    schedule_path = f"/api/v1/environments/{environment['id']}/backups/schedule"
    schedule_id = ids.schedule_id(uuid.UUID(environment["id"]))
    configured = api.put(
        schedule_path,
        json={
            "dbFrequency": "custom",
            "dbCron": "* * * * *",
            "fullFrequency": "none",
            "destinationIds": [destination["id"]],
        },
    )
    assert configured.status_code == 200, configured.text
    deadline = time.monotonic() + 60
    while not schedule_known(database_url, schedule_id):
        assert time.monotonic() < deadline, "the scheduler never took the schedule"
        time.sleep(0.3)
    # Stopped before a fire time (the next minute, or the one after when that is too
    # close to stop in time), restarted once it is more than the grace in the past.
    now = datetime.now(UTC)
    fire_time = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (fire_time - now).total_seconds() < 15:
        fire_time += timedelta(minutes=1)
        time.sleep(
            max(0.0, (fire_time - timedelta(seconds=50) - datetime.now(UTC)).total_seconds())
        )
    stack.stop(only=SCHEDULER)
    stopped_at = datetime.now(UTC)
    assert stopped_at < fire_time
    try:
        wake = fire_time + timedelta(seconds=SHORT_GRACE_SECONDS + 3)
        time.sleep(max(0.0, (wake - datetime.now(UTC)).total_seconds()))
        with scheduler_with_short_grace(stack):
            deadline = time.monotonic() + 60
            while not (missed := schedule_events(database_url, schedule_id, "Missed")):
                assert time.monotonic() < deadline, "the missed fire time was not recorded"
                time.sleep(0.5)
            [record] = missed
            assert record["count"] == 1
            assert stored_utc(record["first"]) == fire_time
            assert missed_log_lines(stack, schedule_id), "the scheduler logs the miss"

            alert = wait_alert(
                api, of_kind("schedule_missed", environmentId=environment["id"]), "raised"
            )
            assert alert["severity"] == "warning"
            assert alert["occurrences"] == 1
            assert alert["projectId"] == environment["projectId"]
            # The next fire time fires, and resolves it.
            resolved = wait_alert(
                api,
                lambda a: a["id"] == alert["id"] and a["resolvedAt"] is not None,
                "resolved by the next fire",
                timeout=120,
            )
            assert parse(resolved["resolvedAt"]) > fire_time
    finally:
        # Whatever happened above, the scheduler runs again with the stack's settings, and
        # this schedule stops firing.
        if (SCHEDULER, 0) in stack.dead():
            stack.start(only=SCHEDULER)
            stack.wait_ready(timeout=120)
        api.put(schedule_path, json={"enabled": False, "destinationIds": [destination["id"]]})


# -- wal_archiving_stalled --------------------------------------------------------------


@pytest.fixture(scope="module")
def source_cluster() -> Iterator[SourceCluster]:
    cluster = start_source_cluster(
        password=SOURCE_PASSWORD, schema_sql="CREATE TABLE t (id serial PRIMARY KEY, v text);"
    )
    yield cluster
    remove_source_cluster(cluster)


def receiver_process(slot: str) -> int:
    """The pid of the pg_receivewal streaming from ``slot`` (on this machine)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_receivewal") and f"--slot={slot}".encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no pg_receivewal on slot {slot}")


def test_a_wal_receiver_stopped_while_the_database_writes_raises_wal_archiving_stalled(
    api: Api, source_cluster: SourceCluster
) -> None:
    response = full_environment(api, source_cluster.database_url, source_cluster.cluster_spec())
    assert response.status_code == 201, response.text
    environment = response.json()
    destination = api.destination("wal")
    schedule_path = f"/api/v1/environments/{environment['id']}/backups/schedule"
    pitr_path = f"/api/v1/environments/{environment['id']}/backups/pitr"

    def configure(wal: bool) -> None:
        answer = api.put(
            schedule_path,
            json={
                "dbFrequency": "none",
                "fullFrequency": "none",
                "destinationIds": [destination["id"]],
                "walEnabled": wal,
                "walRetentionDays": 7 if wal else None,
            },
        )
        assert answer.status_code == 200, answer.text

    def status() -> str:
        answer = api.get(pitr_path)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["walArchivingStatus"])

    def write() -> None:
        with psycopg.connect(source_cluster.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, 20) i")

    configure(True)
    try:
        deadline = time.monotonic() + 90
        while status() != "active":
            assert time.monotonic() < deadline, "WAL archiving never became active"
            time.sleep(0.3)
        pid = receiver_process(f"tidemark_wal_{environment['id'].replace('-', '')}")
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while status() != "stalled":
                write()  # the runner's forced switches fill segments nobody receives
                assert time.monotonic() < deadline, "never stalled"
                time.sleep(0.3)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        alert = wait_alert(
            api, of_kind("wal_archiving_stalled", environmentId=environment["id"]), "raised"
        )
        assert alert["severity"] == "critical"
        assert alert["projectId"] == environment["projectId"]
        deadline = time.monotonic() + 90
        while status() != "active":
            write()
            assert time.monotonic() < deadline, "WAL archiving never became active again"
            time.sleep(0.3)
        resolved = wait_alert(
            api,
            lambda a: a["id"] == alert["id"] and a["resolvedAt"] is not None,
            "resolved once archiving is active again",
        )
        assert resolved["resolvedAt"] >= resolved["createdAt"]
        assert {a["kind"] for a in listed(api)["items"]} == {"wal_archiving_stalled"}
    finally:
        configure(False)


# -- backup_cleanup_failed --------------------------------------------------------------


def test_a_destination_refusing_a_deletion_raises_backup_cleanup_failed(
    api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    destination = api.destination()
    completed = backup(api, environment)
    assert completed["status"] == "completed", completed
    artifact = api.directory(destination) / completed["destinations"][0]["location"]
    with immutable(artifact.parent):
        answer = api.delete(f"/api/v1/backups/{completed['id']}")
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 60
        while (shown := api.get(f"/api/v1/backups/{completed['id']}").json())["error"] is None:
            assert time.monotonic() < deadline, shown
            time.sleep(0.3)
        assert shown["status"] == "deleting"
        assert "Operation not permitted" in shown["error"]
        alert = wait_alert(
            api, of_kind("backup_cleanup_failed", backupId=completed["id"]), "raised"
        )
        assert alert["environmentId"] == environment["id"]
        assert alert["severity"] == "warning"
        assert alert["destinationId"] == destination["id"]
        assert str(api.destination_root) not in json.dumps(alert)
        assert artifact.is_file()
    # Repaired and asked again: deleted, which resolves it.
    again = api.delete(f"/api/v1/backups/{completed['id']}")
    assert again.status_code == 202, again.text
    api.wait_for(completed["id"], statuses=("deleted",), timeout=60)
    resolved = wait_alert(
        api, lambda a: a["id"] == alert["id"] and a["resolvedAt"] is not None, "resolved"
    )
    assert resolved["kind"] == "backup_cleanup_failed"


# -- destination_unreachable ------------------------------------------------------------


@pytest.fixture
def s3_proxy(s3_endpoint: S3Endpoint) -> Iterator[CuttableProxy]:
    host, port = s3_endpoint.url.removeprefix("http://").split(":")
    front = CuttableProxy((host, int(port.rstrip("/"))))
    yield front
    front.close()


def test_an_s3_endpoint_that_is_down_raises_destination_unreachable(
    api: Api, source_database: str, s3_endpoint: S3Endpoint, s3_proxy: CuttableProxy
) -> None:
    import boto3

    bucket = f"tidemark-alerts-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    ).create_bucket(Bucket=bucket)
    environment = api.environment(source_database)
    local = api.destination("beside", is_default=False)
    registered = api.post(
        "/api/v1/destinations",
        json={
            "name": f"s3-{uuid.uuid4().hex[:8]}",
            "type": "s3",
            "config": {
                "bucket": bucket,
                "prefix": "tm",
                "endpointUrl": s3_proxy.endpoint,
                "region": s3_endpoint.region,
                "accessKeyRef": api.secret("s3-access", s3_endpoint.access_key),
                "secretKeyRef": api.secret("s3-secret", s3_endpoint.secret_key),
            },
            "isDefault": False,
        },
    )
    assert registered.status_code == 201, registered.text
    remote = registered.json()
    # The endpoint is down: every connection to it is reset.
    s3_proxy.refuse_connections(1_000_000)
    down = backup(api, environment, destinationIds=[remote["id"], local["id"]])
    assert down["status"] == "completed", down  # the local copy made it
    [failed] = [d for d in down["destinations"] if d["destinationId"] == remote["id"]]
    assert failed["status"] == "failed"
    assert s3_proxy.refused >= 1
    alert = wait_alert(api, of_kind("destination_unreachable"), "raised")
    assert alert["environmentId"] is None
    assert alert["severity"] == "critical"
    assert alert["destinationId"] == remote["id"]
    assert_no_leak(alert, s3_endpoint.secret_key, s3_endpoint.access_key)
    assert [a["kind"] for a in listed(api)["items"]] == ["destination_unreachable"]

    # Back up: the next upload to it resolves the alert.
    s3_proxy.refuse_connections(0)
    up = backup(api, environment, destinationIds=[remote["id"]])
    assert up["status"] == "completed", up
    resolved = wait_alert(
        api, lambda a: a["id"] == alert["id"] and a["resolvedAt"] is not None, "resolved"
    )
    assert resolved["occurrences"] == 1


# -- read, dismiss, count, tenancy ------------------------------------------------------


def mark(api: Api, alert_id: str, action: str, status: int = 200) -> dict[str, Any]:
    response = api.post(f"{ALERTS}/{alert_id}/{action}")
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def test_read_and_dismiss_are_idempotent_change_the_counts_and_are_scoped_to_the_organization(
    api: Api, api_for: Callable[..., Api], source_database: str
) -> None:
    api.destination()
    first_env, second_env = (broken_environment(api, source_database) for _ in range(2))
    for environment in (first_env, second_env):
        assert backup(api, environment)["status"] == "failed"
    first = wait_alert(api, of_kind("backup_failed", environmentId=first_env["id"]), "raised")
    second = wait_alert(api, of_kind("backup_failed", environmentId=second_env["id"]), "raised")
    assert counts(api) == {"count": 2, "unread": 2, "undismissed": 2}
    page = listed(api, include_dismissed=False)
    assert page["total"] == 2
    assert page["limit"] == 100
    assert page["offset"] == 0
    assert [a["id"] for a in page["items"]] == [second["id"], first["id"]], "newest first"

    # Another organization sees none of it, and cannot touch it.
    stranger = api_for()
    assert listed(stranger)["total"] == 0
    assert listed(stranger)["items"] == []
    assert counts(stranger) == {"count": 0, "unread": 0, "undismissed": 0}
    for action in ("read", "dismiss"):
        assert stranger.post(f"{ALERTS}/{first['id']}/{action}").status_code == 404
        assert api.post(f"{ALERTS}/{uuid.uuid4()}/{action}").status_code == 404
    assert counts(api) == {"count": 2, "unread": 2, "undismissed": 2}

    # Read: out of the count and the unread, still undismissed and listed.
    read = mark(api, first["id"], "read")
    assert read["id"] == first["id"]
    assert read["readAt"] is not None
    assert read["dismissedAt"] is None
    assert counts(api) == {"count": 1, "unread": 1, "undismissed": 2}
    assert mark(api, first["id"], "read")["readAt"] == read["readAt"], "idempotent"
    assert counts(api) == {"count": 1, "unread": 1, "undismissed": 2}

    # Dismissed without being read: out of the count and the undismissed, still unread.
    dismissed = mark(api, second["id"], "dismiss")
    assert dismissed["dismissedAt"] is not None
    assert dismissed["readAt"] is None
    assert counts(api) == {"count": 0, "unread": 1, "undismissed": 1}
    assert mark(api, second["id"], "dismiss")["dismissedAt"] == dismissed["dismissedAt"]
    assert counts(api) == {"count": 0, "unread": 1, "undismissed": 1}
    shown = listed(api, include_dismissed=False)
    assert [a["id"] for a in shown["items"]] == [first["id"]]
    assert shown["total"] == 1
    assert listed(api)["total"] == 2

    # The first read survives what comes back from the alerts service.
    time.sleep(3)
    after = {a["id"]: a for a in listed(api)["items"]}
    assert after[first["id"]]["readAt"] == read["readAt"]
    assert after[second["id"]]["dismissedAt"] == dismissed["dismissedAt"]
    assert mark(api, first["id"], "dismiss")["readAt"] == read["readAt"]
    assert counts(api) == {"count": 0, "unread": 1, "undismissed": 0}
    # Paging and limits.
    assert len(listed(api, limit=1)["items"]) == 1
    assert listed(api, limit=1000)["limit"] == 100
    assert [a["id"] for a in listed(api, offset=1)["items"]] == [first["id"]]
    assert api.get(ALERTS, params={"limit": -1}).status_code == 422
    assert stranger.post(f"{ALERTS}/{first['id']}/read").status_code == 404


# -- webhooks ---------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers each request with the next of ``answers``
    (the last one repeats); ``hang`` holds every request unanswered until closed."""

    answers: list[int] = field(default_factory=lambda: [200])
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    receiver.requests.append(
                        Received(time.monotonic(), dict(self.headers.items()), body)
                    )
                    index = len(receiver.requests) - 1
                if receiver.hang:
                    receiver.released.wait(300)  # minutes, unless the test ends first
                    return
                code = receiver.answers[min(index, len(receiver.answers) - 1)]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tidemark"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


def register_webhook(api: Api, url: str, kinds: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "signingSecretRef": api.secret("hook", SIGNING_SECRET)}
    if kinds is not None:
        body["kinds"] = kinds
    response = api.post("/api/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/v1/webhooks/{webhook['id']}"
    return webhook


def deliveries(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_requests(receiver: Receiver, n: int, timeout: float = 60.0) -> list[Received]:
    deadline = time.monotonic() + timeout
    while len(receiver.requests) < n:
        assert time.monotonic() < deadline, f"{len(receiver.requests)} of {n} requests came"
        time.sleep(0.1)
    return list(receiver.requests)


def test_a_webhook_is_signed_retried_after_a_500_and_each_attempt_is_listed(
    api: Api, api_for: Callable[..., Api], source_database: str, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(answers=[500, 200])
    # Where a webhook may not go: refused at registration, without repeating the URL.
    metadata = "http://169.254.169.254/latest/meta-data/"
    refused = api.post(
        "/api/v1/webhooks",
        json={"url": metadata, "signingSecretRef": api.secret("hook", SIGNING_SECRET)},
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["url"]
    assert "169.254" not in refused.text
    webhook = register_webhook(api, receiver.url, kinds=["backup_failed"])
    assert webhook["url"] == receiver.url
    assert webhook["kinds"] == ["backup_failed"]
    assert SIGNING_SECRET not in json.dumps(webhook)
    assert [w["id"] for w in api.get("/api/v1/webhooks").json()["items"]] == [webhook["id"]]

    api.destination()
    environment = broken_environment(api, source_database)
    assert backup(api, environment)["status"] == "failed"
    alert = wait_alert(api, of_kind("backup_failed"), "raised")

    first, second = wait_requests(receiver, 2)[:2]
    for request in (first, second):
        verify_signature(SIGNING_SECRET, request.headers.get(SIGNATURE_HEADER), request.body)
        with pytest.raises(SignatureError):
            verify_signature("another-secret", request.headers.get(SIGNATURE_HEADER), request.body)
        assert request.headers.get("Content-Type", "").startswith("application/json")
    assert first.headers[DELIVERY_HEADER] == second.headers[DELIVERY_HEADER], "one delivery"
    assert first.headers[EVENT_HEADER] == "alert.raised"
    payload = WebhookPayload.model_validate_json(second.body)
    assert payload.type == "alert.raised"
    assert str(payload.id) == second.headers[DELIVERY_HEADER]
    assert str(payload.webhook_id) == webhook["id"]
    assert str(payload.alert.id) == alert["id"]
    assert payload.alert.kind == "backup_failed"
    assert str(payload.alert.environment_id) == environment["id"]
    assert WRONG_PASSWORD.encode() not in second.body

    deadline = time.monotonic() + 30
    while True:
        shown = deliveries(api, webhook["id"])
        if [d["status"] for d in shown] == ["delivered", "retrying"]:
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    assert [d["attempt"] for d in shown] == [2, 1], "newest first"
    assert [d["responseStatus"] for d in shown] == [200, 500]
    assert {d["alertId"] for d in shown} == {alert["id"]}
    assert shown[0]["error"] is None
    assert shown[1]["error"]

    # Reading the alert is a change of a kind this webhook takes: delivered once.
    mark(api, alert["id"], "read")
    [*_, third] = wait_requests(receiver, 3)
    assert third.headers[EVENT_HEADER] == "alert.read"
    verify_signature(SIGNING_SECRET, third.headers.get(SIGNATURE_HEADER), third.body)

    stranger = api_for()
    assert stranger.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").status_code == 404
    assert stranger.delete(f"/api/v1/webhooks/{webhook['id']}").status_code == 404
    assert api.delete(f"/api/v1/webhooks/{webhook['id']}").status_code == 204
    assert api.get("/api/v1/webhooks").json()["items"] == []


def test_a_receiver_that_hangs_delays_no_other_receiver_and_no_alert(
    api: Api, source_database: str, receivers: Callable[..., Receiver]
) -> None:
    hanging = receivers(hang=True)
    prompt = receivers()
    stuck = register_webhook(api, hanging.url)
    register_webhook(api, prompt.url)
    api.destination()
    environments = [broken_environment(api, source_database) for _ in range(3)]

    # Three alerts and a read: four changes, more than the hanging receiver's in-flight
    # share. Each reaches the prompt receiver soon after the alert is listed.
    seen_at: dict[str, float] = {}
    for environment in environments:
        assert backup(api, environment)["status"] == "failed"
        alert = wait_alert(api, of_kind("backup_failed", environmentId=environment["id"]), "raised")
        seen_at[alert["id"]] = time.monotonic()
    first_id = next(iter(seen_at))
    mark(api, first_id, "read")
    read_at = time.monotonic()

    requests = wait_requests(prompt, 4, timeout=30)
    by_change: dict[tuple[str, str], float] = {}
    for request in requests:
        verify_signature(SIGNING_SECRET, request.headers.get(SIGNATURE_HEADER), request.body)
        payload = WebhookPayload.model_validate_json(request.body)
        by_change[(str(payload.alert.id), payload.type)] = request.at
    assert set(by_change) == {(a, "alert.raised") for a in seen_at} | {(first_id, "alert.read")}
    for alert_id, listed_at in seen_at.items():
        assert by_change[(alert_id, "alert.raised")] - listed_at < 10, "not held up"
    assert by_change[(first_id, "alert.read")] - read_at < 10

    # Meanwhile the hanging receiver got requests it never answered.
    assert hanging.requests, "the hanging receiver was tried"
    assert not hanging.released.is_set()
    # Its attempts are recorded when they time out (30 s here), so the list may still be
    # empty: what it must not hold is a delivery.
    assert [d for d in deliveries(api, stuck["id"]) if d["status"] == "delivered"] == []
    assert api.delete(f"/api/v1/webhooks/{stuck['id']}").status_code == 204


# -- the benchmark, at a small size -----------------------------------------------------


def load_bench() -> Any:
    """bench/alerts.py as a module (it imports ``harness`` from its own folder)."""
    folder = Path(__file__).resolve().parents[2] / "bench"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("bench_alerts", folder / "alerts.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def forget_produced_backups(database_url: str, organization: uuid.UUID) -> None:
    """The bench's backups exist only as the events it produced to Kafka: no event store
    holds them, so a rebuild of the gateway's backups view from the stores has no rows for
    them (test_rolling_restart compares the two). Once the gateway has projected them (its
    count of them stopped changing), they leave the live view too."""
    where = "WHERE organization_id = %s"
    deadline = time.monotonic() + 120
    with psycopg.connect(database_url, autocommit=True) as conn:
        seen, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - stable_since < 3:
            row = conn.execute(f"SELECT count(*) FROM gateway.backups {where}", (organization,))
            count = row.fetchone()
            now = int(count[0]) if count else 0
            if now != seen:
                seen, stable_since = now, time.monotonic()
            time.sleep(0.3)
        conn.execute(f"DELETE FROM gateway.backups {where}", (organization,))
        conn.execute(f"DELETE FROM gateway.backup_counts {where}", (organization,))


def test_the_alerts_bench_runs_at_a_small_size(
    stack: Stack, kafka_bootstrap: str, database_url: str
) -> None:
    bench = load_bench()
    organization = uuid.uuid4()
    try:
        result = bench.measure(
            stack.gateway_url,
            make_token(organization),
            kafka_bootstrap,
            environments=20,
            failures_count=200,
            projects=2,
            timeout=240,
        )
    finally:
        forget_produced_backups(database_url, organization)
    assert result.failures == 200
    assert result.environments == 20
    assert (result.missing_listed, result.missing_delivered) == (0, 0)
    assert len(result.listed) == len(result.delivered) == len(result.baseline) == 200
    assert result.bad_signatures == 0
    assert min(result.listed) > 0
    assert min(result.delivered) > 0
    assert min(result.baseline) > 0
    lines = bench.report_lines(result)
    assert [line.split()[1] for line in lines[:5]] == [
        "listed",
        "webhook",
        "baseline",
        "ratio",
        "ratio",
    ]
    assert "listed=200/200" in lines[0]
    assert "delivered=200/200" in lines[1]
    assert "nan" not in " ".join(lines)
