"""The command handler: every valid request reaches the executor, which is idempotent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_backup_runner.handlers import make_handlers
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import DeleteBackup, RequestBackup
from tidemark_devstack.e2e import backup_request
from tidemark_platform.consumer import Delivery


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

    async def submit(self, backup_id: uuid.UUID) -> None:
        self.submitted.append(backup_id)


def command_envelope() -> tuple[RequestBackup, Envelope]:
    command = backup_request()
    envelope = Envelope.wrap(
        command,
        producer="t",
        organization_id=command.organization_id,
        environment_id=command.environment_id,
    )
    return command, envelope


@pytest.mark.parametrize(("created", "processed"), [(True, False), (False, False), (False, True)])
async def test_a_request_recorded_before_is_still_handed_to_the_executor(
    created: bool, processed: bool
) -> None:
    # A commit that succeeded, then was retried, reports a collision: the work row may
    # never have been written, so the (idempotent) executor must still see the backup.
    executor = FakeExecutor()
    saved: list[Any] = []
    handlers = make_handlers(
        FakeApp(created, processed),  # type: ignore[arg-type]
        executor,  # type: ignore[arg-type]
        lambda: saved.append(1),
    )
    command, envelope = command_envelope()
    delivery = Delivery(envelope, Tracking("cluster/backup.commands:0", 1), attempt=1)
    await handlers[RequestBackup](command, delivery)
    assert executor.submitted == [command.backup_id]
    assert saved == ([1] if created else [])


def test_the_runner_handles_backup_requests_and_nothing_else() -> None:
    handlers = make_handlers(FakeApp(True, False), FakeExecutor(), lambda: None)  # type: ignore[arg-type]
    assert set(handlers) == {RequestBackup}


async def test_the_commands_correlation_id_is_recorded_with_the_request() -> None:
    app = FakeApp(True, False)
    handlers = make_handlers(app, FakeExecutor(), lambda: None)  # type: ignore[arg-type]
    command, envelope = command_envelope()
    correlation_id = uuid.uuid4()
    delivery = Delivery(
        envelope.model_copy(update={"correlation_id": correlation_id}),
        Tracking("cluster/backup.commands:0", 1),
        attempt=1,
    )
    await handlers[RequestBackup](command, delivery)
    assert app.correlation_ids == [correlation_id]


class FakeDeletionApp(FakeApp):
    def __init__(self, outcome: str) -> None:
        super().__init__(False, False)
        self.outcome = outcome

    def request_deletion(self, command: DeleteBackup, tracking: Tracking) -> str:
        return self.outcome


class FakeDeleter:
    def __init__(self) -> None:
        self.submitted: list[uuid.UUID] = []

    async def submit(self, backup_id: uuid.UUID) -> None:
        self.submitted.append(backup_id)


@pytest.mark.parametrize(
    ("outcome", "submitted", "saved"),
    [("accepted", True, True), ("already", True, False), ("refused", False, False)],
)
async def test_a_deletion_reaches_the_deleter_unless_refused(
    outcome: str, submitted: bool, saved: bool
) -> None:
    # "already": the event may be stored while its removal row was never written, and a
    # repeated deletion re-arms a removal that gave up; "refused" (pending or running)
    # must not remove anything.
    deleter, saves = FakeDeleter(), []
    handlers = make_handlers(
        FakeDeletionApp(outcome),  # type: ignore[arg-type]
        FakeExecutor(),  # type: ignore[arg-type]
        lambda: saves.append(1),
        deleter,  # type: ignore[arg-type]
    )
    command = DeleteBackup(
        backup_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        requested_by="t",
        requested_at=utc_now(),
    )
    envelope = Envelope.wrap(
        command,
        producer="t",
        organization_id=command.organization_id,
        environment_id=command.environment_id,
    )
    delivery = Delivery(envelope, Tracking("cluster/backup.commands:0", 1), attempt=1)
    await handlers[DeleteBackup](command, delivery)
    assert deleter.submitted == ([command.backup_id] if submitted else [])
    assert saves == ([1] if saved else [])
