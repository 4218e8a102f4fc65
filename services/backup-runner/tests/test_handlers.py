"""The command handler: every valid request reaches the executor, which is idempotent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_backup_runner.handlers import make_command_handler
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget, RequestBackup


class FakeApp:
    def __init__(self, created: bool, processed: bool) -> None:
        self.created, self.processed = created, processed
        self.correlation_ids: list[uuid.UUID | None] = []

    def request_backup(
        self, command: RequestBackup, tracking: Tracking, correlation_id: uuid.UUID | None
    ) -> bool:
        self.correlation_ids.append(correlation_id)
        return self.created

    def has_processed(self, tracking: Tracking) -> bool:
        return self.processed


class FakeExecutor:
    def __init__(self) -> None:
        self.submitted: list[uuid.UUID] = []

    def submit(self, backup_id: uuid.UUID) -> None:
        self.submitted.append(backup_id)


def command_envelope() -> tuple[uuid.UUID, Envelope]:
    command = RequestBackup(
        backup_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        type="db",
        trigger="manual",
        requested_by="t",
        requested_at=utc_now(),
        database=DatabaseTarget(host="h", port=1, dbname="d", user="u"),
        destinations=[
            DestinationTarget.model_validate(
                {
                    "destinationId": str(uuid.uuid4()),
                    "name": "n",
                    "type": "local",
                    "config": {"kind": "local", "path": "/x"},
                }
            )
        ],
    )
    envelope = Envelope.wrap(
        command,
        producer="t",
        organization_id=command.organization_id,
        environment_id=command.environment_id,
    )
    return command.backup_id, envelope


@pytest.mark.parametrize(("created", "processed"), [(True, False), (False, False), (False, True)])
async def test_a_request_recorded_before_is_still_handed_to_the_executor(
    created: bool, processed: bool
) -> None:
    # A commit that succeeded, then was retried, reports a collision: the work may never
    # have started, so the (idempotent) executor must still see the backup.
    executor = FakeExecutor()
    saved: list[Any] = []
    handler = make_command_handler(
        FakeApp(created, processed),  # type: ignore[arg-type]
        executor,  # type: ignore[arg-type]
        lambda: saved.append(1),
    )
    backup_id, envelope = command_envelope()
    await handler(envelope, Tracking("backup.commands:0", 1))
    assert executor.submitted == [backup_id]
    assert saved == ([1] if created else [])


async def test_invalid_or_unknown_commands_are_skipped() -> None:
    executor = FakeExecutor()
    handler = make_command_handler(FakeApp(True, False), executor, lambda: None)  # type: ignore[arg-type]
    _, envelope = command_envelope()
    await handler(envelope.model_copy(update={"payload": {"backupId": "x"}}), Tracking("t:0", 1))
    await handler(envelope.model_copy(update={"message_type": "backup.Other"}), Tracking("t:0", 2))
    assert executor.submitted == []


async def test_an_execution_that_crashes_is_retried_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import types

    import psycopg
    from tidemark_backup_runner import executor as executor_module

    backup_id = uuid.uuid4()
    seen_active: list[bool] = []

    class FlakyStore:
        def get_backup(self, requested: uuid.UUID) -> Any:
            seen_active.append(requested in runner._active)
            if len(seen_active) == 1:
                raise psycopg.OperationalError("the event store is away")
            return types.SimpleNamespace(id=requested, correlation_id=None, is_terminal=True)

    async def no_progress(*_: Any) -> None:
        return None

    runner = executor_module.BackupExecutor(
        FlakyStore(),  # type: ignore[arg-type]
        no_progress,
        lambda: None,
        pg_dump="pg_dump",
    )
    real_sleep = asyncio.sleep
    monkeypatch.setattr(executor_module.asyncio, "sleep", lambda _: real_sleep(0))
    runner._active.add(backup_id)
    await runner._run_one(backup_id)
    assert seen_active == [True, True], "retried, and still active while waiting"
    assert backup_id not in runner._active


async def test_the_commands_correlation_id_is_recorded_with_the_request() -> None:
    app = FakeApp(True, False)
    handler = make_command_handler(app, FakeExecutor(), lambda: None)  # type: ignore[arg-type]
    _, envelope = command_envelope()
    correlation_id = uuid.uuid4()
    await handler(
        envelope.model_copy(update={"correlation_id": correlation_id}),
        Tracking("backup.commands:0", 1),
    )
    assert app.correlation_ids == [correlation_id]
