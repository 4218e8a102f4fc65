"""Every failure ends: permanent ones at once, transient ones by retrying only what did not
happen; on real PostgreSQL, with a control-plane outage made by cutting the runner's
connections (a TCP proxy), while the database it backs up stays reachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.domain import Backup, WorkPolicy
from tidemark_backup_runner.executor import BackupExecutor
from tidemark_backup_runner.failures import readable_request
from tidemark_backup_runner.handlers import make_rejecters
from tidemark_backup_runner.pgtools import find_tool
from tidemark_backup_runner.secrets import CredentialPolicy
from tidemark_backup_runner.work import WorkTable
from tidemark_contracts import BACKUP_COMMANDS, Envelope
from tidemark_contracts.backup import (
    BackupFailed,
    BackupRequested,
    DatabaseTarget,
    DestinationTarget,
)
from tidemark_devstack.e2e import backup_request
from tidemark_platform.consumer import Delivery

pytestmark = pytest.mark.integration

SOURCE_PASSWORD = "pw-failures-test"
PASSWORD_ENV = "TIDEMARK_SECRET_FAILURES_TEST"


async def no_progress(*_: Any) -> None:
    return None


def executor_of(
    app: BackupRunnerApplication,
    work: WorkTable,
    policy: WorkPolicy,
    pg_dump: str = "pg_dump",
    **options: Any,
) -> BackupExecutor:
    # The operator's env:/file: references, enabled here: these tests are about failures.
    options.setdefault("credential_policy", CredentialPolicy(allow_operator_refs=True))
    return BackupExecutor(
        app,
        work,
        no_progress,
        lambda: None,
        owner=uuid.uuid4(),
        pg_dump=pg_dump,
        policy=policy,
        poll_seconds=0.2,
        **options,
    )


@contextlib.asynccontextmanager
async def running(executor: BackupExecutor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(executor.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)
    return value


def finished(work: WorkTable, backup_id: uuid.UUID) -> bool:
    row = work.row(backup_id)
    return row is not None and row["state"] == "finished"


DESTINATION = "destination"


def local_destination() -> list[DestinationTarget]:
    """Destination ``destination`` of the organization: under the executor's root, at
    ``<root>/<organization>/destination``."""
    return [DestinationTarget.of(uuid.uuid4(), "local", "local", {"path": DESTINATION})]


# -- permanent failures end at once -------------------------------------------------------


async def test_a_credential_file_that_is_not_utf8_fails_the_backup_at_once(
    app: BackupRunnerApplication, work: WorkTable, tmp_path: Path
) -> None:
    organization_id = uuid.uuid4()
    credentials = tmp_path / "credentials"
    (credentials / str(organization_id)).mkdir(parents=True)
    password_file = credentials / str(organization_id) / "pw"
    password_file.write_bytes(b"\xff\xfes3cret-bytes")
    command = backup_request(
        organization_id=organization_id,
        database=DatabaseTarget(
            host="127.0.0.1", port=1, dbname="d", user="u", password_ref=f"file:{password_file}"
        ),
        destinations=local_destination(),
    )
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    work.ensure(command.backup_id)
    executor = executor_of(
        app,
        work,
        WorkPolicy(lease_seconds=3.0, max_attempts=3),
        credential_policy=CredentialPolicy(file_root=credentials, allow_operator_refs=True),
    )
    started = time.monotonic()
    async with running(executor):
        await until(lambda: finished(work, command.backup_id), 20, "the backup never ended")
    backup: Backup = app.get_backup(command.backup_id)
    assert backup.status == "failed"
    assert backup.error is not None
    assert "not UTF-8" in backup.error
    assert str(password_file) not in backup.error, "a reference is never repeated"
    assert "s3cret" not in backup.error
    # At once: the first attempt ended it, no lease ran out, nothing was retried.
    assert [(a["attempt"], a["outcome"]) for a in work.attempts(command.backup_id)] == [
        (1, "failed")
    ]
    assert time.monotonic() - started < 5


async def test_a_progress_publication_stuck_in_kafkas_client_holds_no_backup(
    app: BackupRunnerApplication, work: WorkTable, tmp_path: Path
) -> None:
    released = asyncio.Event()

    async def stuck(*_: Any) -> None:
        # As a client whose send does not give way to cancellation (until the test ends):
        # wait_for would wait for it as long.
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    backup_ids = []
    for offset in (1, 2):
        command = backup_request(
            database=DatabaseTarget(
                host="127.0.0.1", port=1, dbname="d", user="u", password_ref="env:UNSET_X"
            ),
            destinations=local_destination(),
        )
        assert app.request_backup(command, Tracking("backup.commands:0", offset))
        work.ensure(command.backup_id)
        backup_ids.append(command.backup_id)
    executor = BackupExecutor(
        app,
        work,
        stuck,
        lambda: None,
        owner=uuid.uuid4(),
        pg_dump="pg_dump",
        policy=WorkPolicy(lease_seconds=3.0, max_attempts=3),
        poll_seconds=0.2,
        max_concurrent=1,
    )
    try:
        async with running(executor):
            # One slot: the second backup runs only once the first let it go.
            await until(
                lambda: all(finished(work, b) for b in backup_ids), 20, "a backup was held up"
            )
    finally:
        released.set()
    for backup_id in backup_ids:
        assert app.get_backup(backup_id).status == "failed"
        assert [a["outcome"] for a in work.attempts(backup_id)] == ["failed"]


async def test_a_stored_request_that_no_longer_validates_fails_at_once_with_the_reason(
    app: BackupRunnerApplication, work: WorkTable, tmp_path: Path
) -> None:
    command = backup_request(destinations=local_destination())
    backup = Backup(
        backup_id=command.backup_id,
        organization_id=command.organization_id,
        project_id=command.project_id,
        environment_id=command.environment_id,
        type=command.type,
        trigger=command.trigger,
        label=None,
        requested_by="t",
        requested_at=command.requested_at,
        # As a request stored by an older runner might read to a newer contract.
        database={"host": "127.0.0.1", "port": "s3cret-not-a-port", "dbname": "d", "user": "u"},
        destinations=[d.model_dump(mode="json") for d in command.destinations],
        correlation_id=None,
    )
    assert app.save_tracked(Tracking("backup.commands:0", 1), backup)
    work.ensure(command.backup_id)
    executor = executor_of(app, work, WorkPolicy(lease_seconds=3.0, max_attempts=3))
    async with running(executor):
        await until(lambda: finished(work, command.backup_id), 20, "the backup never ended")
    stored: Backup = app.get_backup(command.backup_id)
    assert stored.status == "failed"
    assert stored.error is not None
    assert stored.error.startswith("the backup's request is invalid: ")
    assert "port" in stored.error
    assert "s3cret" not in stored.error
    assert [a["outcome"] for a in work.attempts(command.backup_id)] == ["failed"]


# -- a request that fails the contract ----------------------------------------------------


def invalid_payload(**changes: Any) -> dict[str, Any]:
    command = backup_request(destinations=local_destination())
    payload = command.to_payload()
    payload["database"]["port"] = "s3cret-not-a-port"
    payload.update(changes)
    return payload


async def test_an_invalid_request_that_names_its_backup_is_recorded_as_failed(
    app: BackupRunnerApplication, work: WorkTable
) -> None:
    payload = invalid_payload()
    envelope = Envelope.model_validate(
        {
            "messageId": uuid.uuid4(),
            "messageType": "backup.RequestBackup",
            "messageVersion": 1,
            "organizationId": payload["organizationId"],
            "environmentId": payload["environmentId"],
            "correlationId": uuid.uuid4(),
            "producer": "t",
            "payload": payload,
        }
    )
    saved: list[int] = []
    [(message_class, reject)] = make_rejecters(app, lambda: saved.append(1)).items()
    assert message_class is BACKUP_COMMANDS.message_class("backup.RequestBackup")
    tracking = Tracking(f"cluster/{BACKUP_COMMANDS.name}:0", 7)
    error = "1 validation error for RequestBackup: database.port: Input should be a valid integer"
    delivery = Delivery(envelope, tracking, attempt=1)
    assert await reject(payload, error, delivery)
    assert await reject(payload, error, delivery), "a redelivery is acknowledged again"
    assert saved == [1], "and records nothing twice"

    backup_id = uuid.UUID(payload["backupId"])
    backup: Backup = app.get_backup(backup_id)
    assert backup.status == "failed"
    assert backup.error == f"the backup request is invalid: {error}"
    assert backup.database == {}, "nothing of the invalid database is kept"
    assert backup.correlation_id == envelope.correlation_id
    # Published as a request that failed at once: a read model without the pending row
    # gets both, one with it gets the failure.
    events = list(app.repository.event_store.get(backup_id))
    messages = [app.to_envelope(e) for e in events]
    assert [type(e).__name__ for e in events] == ["Requested", "Failed"]
    requested, failed = (m[1] for m in messages if m is not None)
    assert requested.message_type == BackupRequested.message_type
    assert failed.message_type == BackupFailed.message_type
    assert failed.payload["error"] == backup.error
    assert "s3cret" not in json.dumps([requested.payload, failed.payload])
    assert requested.payload["destinations"] == [
        {k: v for k, v in d.items() if k != "config"} for d in payload["destinations"]
    ]
    # No work is left for it: the log marks it finished.
    while work.index_log("requests", app.log_changes):
        pass
    assert finished(work, backup_id)


@pytest.mark.parametrize(
    "changes",
    [{"backupId": "not-a-uuid"}, {"organizationId": None}, {"type": "s3cret"}],
    ids=["no backup id", "no organization", "no known type"],
)
def test_an_invalid_request_that_does_not_say_whose_backup_is_not_recorded(
    changes: dict[str, Any],
) -> None:
    assert readable_request(invalid_payload(**changes)) is None


def test_destinations_unreadable_even_as_references_are_left_out() -> None:
    payload = invalid_payload()
    payload["destinations"] = [*payload["destinations"], {"name": "no id"}]
    request = readable_request(payload)
    assert request is not None
    assert [str(d.destination_id) for d in request.destinations] == [
        payload["destinations"][0]["destinationId"]
    ]


# -- an outage of the control plane's database across the end of a dump ---------------------


class CuttableProxy:
    """A TCP proxy to PostgreSQL that can cut every connection through it and refuse new
    ones (an outage as the runner sees it), then let them through again."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            cut, self._sockets = self._sockets, []
        for end in cut:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self._server.close()


@pytest.fixture
def proxy(database_url: str) -> Iterator[CuttableProxy]:
    info = conninfo_to_dict(database_url)
    cuttable = CuttableProxy(str(info.get("host") or "127.0.0.1"), int(str(info["port"])))
    yield cuttable
    cuttable.close()


def counting_pg_dump(directory: Path) -> tuple[str, Path]:
    """A pg_dump that notes each run in a file, then is the real pg_dump."""
    count = directory / "pg_dump-runs"
    script = directory / "pg_dump"
    script.write_text(f'#!/bin/sh\necho run >> "{count}"\nexec "{find_tool("pg_dump")}" "$@"\n')
    script.chmod(0o755)
    return str(script), count


def runs(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


@pytest.mark.parametrize("outage", ["past the lease", "within the lease"])
async def test_a_dump_finished_during_an_outage_is_recorded_when_the_store_returns_not_redone(
    outage: str,
    app: BackupRunnerApplication,
    work: WorkTable,
    schema: str,
    database_url: str,
    proxy: CuttableProxy,
    create_database: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = create_database("outage", owner_password=SOURCE_PASSWORD)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    info = conninfo_to_dict(source)
    monkeypatch.setenv(PASSWORD_ENV, SOURCE_PASSWORD)
    target = DatabaseTarget(
        host=str(info["host"]),
        port=int(str(info["port"])),
        dbname=str(info["dbname"]),
        user=str(info["user"]),
        password_ref=f"env:{PASSWORD_ENV}",
    )
    command = backup_request(database=target, destinations=local_destination())
    destination = tmp_path / str(command.organization_id) / DESTINATION
    assert app.request_backup(command, Tracking("backup.commands:0", 1))
    work.ensure(command.backup_id)
    pg_dump, count = counting_pg_dump(tmp_path)

    # Runner A reaches the control plane's database only through the proxy.
    through_proxy = make_conninfo(database_url, host="127.0.0.1", port=proxy.port)
    app_a: BackupRunnerApplication = BackupRunnerApplication.on_postgres(through_proxy, schema)
    work_a = WorkTable(through_proxy, schema)
    work_a.open()
    lease = 2.0 if outage == "past the lease" else 60.0
    policy = WorkPolicy(lease_seconds=lease, max_attempts=3)
    runner_a = executor_of(app_a, work_a, policy, pg_dump, destination_root=tmp_path)
    runner_b = executor_of(app, work, policy, pg_dump, destination_root=tmp_path)
    blocker = psycopg.connect(source)
    blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    try:
        async with running(runner_a):
            await until(
                lambda: list(destination.rglob(".*.partial")), 30, "runner A never began dumping"
            )
            assert app.get_backup(command.backup_id).status == "running"
            # The outage begins while the dump runs; the dump (straight to its database)
            # goes on and finishes during it.
            proxy.cut()
            blocker.rollback()
            [manifest] = await until(
                lambda: list(destination.rglob(".*.manifest")), 30, "the dump was never sealed"
            )
            sealed = json.loads(manifest.read_text())
            assert sealed["attempt"] == 1
            assert sealed["owner"] == str(runner_a.owner)
            if outage == "past the lease":
                # A's lease runs out during the outage; runner B, which reaches the store,
                # takes the backup over and finds the dump done.
                await asyncio.sleep(lease + 1)
                async with running(runner_b):
                    await until(
                        lambda: app.get_backup(command.backup_id).is_terminal,
                        60,
                        "runner B never ended the backup",
                    )
                    proxy.restore()
                    # A is back: it must neither record nor remove anything of B's.
                    await asyncio.sleep(3)
            else:
                await asyncio.sleep(3)
                proxy.restore()
                await until(
                    lambda: app.get_backup(command.backup_id).is_terminal,
                    90,
                    "runner A never recorded the backup",
                )
                await asyncio.sleep(1)
    finally:
        blocker.close()
        app_a.close()
        work_a.close()

    backup: Backup = app.get_backup(command.backup_id)
    assert backup.status == "completed", backup.error
    # The artifact is the one first dumped: same checksum, pg_dump ran once.
    assert backup.checksum == sealed["checksum"]
    assert backup.size_bytes == sealed["sizeBytes"]
    assert runs(count) == 1
    [artifact] = [p for p in destination.rglob("*") if p.is_file()]
    assert not artifact.name.startswith(".")
    assert artifact.stat().st_size == sealed["sizeBytes"]
    [upload] = backup.uploads.values()
    assert upload["location"] == str(artifact.relative_to(destination))
    events = list(app.repository.event_store.get(command.backup_id))
    assert [type(e).__name__ for e in events] == ["Requested", "Started", "Uploaded", "Completed"]
    attempts = [(a["attempt"], a["owner"], a["outcome"]) for a in work.attempts(command.backup_id)]
    if outage == "past the lease":
        assert attempts == [
            (1, runner_a.owner, "lease expired"),
            (2, runner_b.owner, "completed"),
        ]
    else:
        assert attempts == [(1, runner_a.owner, "completed")]
    assert artifact.exists()
