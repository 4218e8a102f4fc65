"""The scheduler's backups view on a real PostgreSQL: what retention reads of it, and that
redelivery, re-publication and events out of order leave it as events in order do."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_contracts import BACKUP_EVENTS, Envelope
from tidemark_platform.consumer import Delivery
from tidemark_platform.projection import OutOfOrder, compare, rebuild
from tidemark_scheduler.backups_view import BackupsFollower, BackupsView

pytestmark = pytest.mark.integration

ORG = uuid.uuid4()
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STREAM = "cluster/backup.events:0"


class Positions:
    """Consecutive offsets of one partition, as the consumer hands them out."""

    def __init__(self) -> None:
        self.offset = 0

    def next(self) -> Tracking:
        self.offset += 1
        return Tracking(STREAM, self.offset)


@pytest.fixture
async def follower(create_database: Callable[..., str]) -> AsyncIterator[BackupsFollower]:
    # The histories complete around T0: "now" is a little after it.
    follower = BackupsFollower(
        create_database("sched"), "scheduler", now=lambda: T0 + timedelta(minutes=5)
    )
    await follower.open()
    yield follower
    await follower.close()


async def rows(follower: BackupsFollower, schema: str = "scheduler") -> list[dict[str, Any]]:
    async with follower.pool.connection() as conn:
        cursor = await conn.execute(f"SELECT * FROM {schema}.backups ORDER BY created_at, id")
        return list(await cursor.fetchall())


async def apply_all(follower: BackupsFollower, envelopes: list[Envelope]) -> None:
    positions = Positions()
    for envelope in envelopes:
        await follower.runner.apply_at(envelope, positions.next())


async def test_a_completed_backup_is_listed_at_the_time_it_was_requested_for(
    follower: BackupsFollower, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    full = backup_events.history(
        organization_id=ORG,
        environment_id=environment_id,
        requested_at=T0,
        type="full",
        size_bytes=4096,
        wal=("0/2000028", "0/2000100"),
    )
    await apply_all(follower, list(full.envelopes))
    (facts,) = await follower.query.completed_backups(environment_id)
    assert facts.backup_id == full.backup_id
    assert (facts.type, facts.trigger, facts.status) == ("full", "scheduled", "completed")
    assert facts.created_at == T0  # requestedAt, not when it completed
    assert facts.size_bytes == 4096
    (row,) = await rows(follower)
    assert row["organization_id"] == ORG
    assert row["completed_at"] == T0 + timedelta(minutes=1)
    assert (row["wal_start_lsn"], row["wal_end_lsn"]) == ("0/2000028", "0/2000100")


async def test_only_the_environments_completed_backups_are_listed_newest_first(
    follower: BackupsFollower, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    histories = [
        backup_events.history(
            organization_id=ORG,
            environment_id=environment_id,
            requested_at=T0 + timedelta(hours=i),
            outcome=outcome,
            trigger="manual" if i == 1 else "scheduled",
        )
        for i, outcome in enumerate(
            ["completed", "completed", "pending", "running", "failed", "deleting", "deleted"]
        )
    ]
    elsewhere = backup_events.history(
        organization_id=ORG, environment_id=uuid.uuid4(), requested_at=T0
    )
    await apply_all(follower, [e for h in [*histories, elsewhere] for e in h.envelopes])
    listed = await follower.query.completed_backups(environment_id)
    assert [f.backup_id for f in listed] == [histories[1].backup_id, histories[0].backup_id]
    assert [f.trigger for f in listed] == ["manual", "scheduled"]
    statuses = {r["id"]: r["status"] for r in await rows(follower)}
    assert [statuses[h.backup_id] for h in histories] == [
        "completed",
        "completed",
        "pending",
        "running",
        "failed",
        "deleting",
        "deleted",
    ]


async def test_a_redelivered_position_changes_nothing(
    follower: BackupsFollower, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    first, second = (
        backup_events.history(organization_id=ORG, environment_id=environment_id, requested_at=T0)
        for _ in range(2)
    )
    assert await follower.runner.apply_at(first.envelopes[0], Tracking(STREAM, 7)) is True
    # Offset 7 again (a crash before the commit of Kafka's offset), carrying another event.
    assert await follower.runner.apply_at(second.envelopes[0], Tracking(STREAM, 7)) is False
    assert [r["id"] for r in await rows(follower)] == [first.backup_id]


async def test_a_republished_event_does_not_bring_a_backup_back_to_completed(
    follower: BackupsFollower, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    deleting = backup_events.history(
        organization_id=ORG, environment_id=environment_id, requested_at=T0, outcome="deleting"
    )
    positions = Positions()
    for envelope in deleting.envelopes:
        await follower.runner.apply_at(envelope, positions.next())
    completed = deleting.envelopes[-2]
    assert completed.message_type == "backup.BackupCompleted"
    # The relay re-publishes its tail after a restart: old events at new offsets.
    assert await follower.runner.apply_at(completed, positions.next()) is False
    assert await follower.query.completed_backups(environment_id) == []
    (row,) = await rows(follower)
    assert row["status"] == "deleting"


async def test_an_event_before_its_request_is_refused_and_applied_once_it_follows(
    follower: BackupsFollower, backup_events: Any
) -> None:
    history = backup_events.history(
        organization_id=ORG, environment_id=uuid.uuid4(), requested_at=T0
    )
    positions = Positions()
    completed = history.envelopes[3]
    with pytest.raises(OutOfOrder):
        await follower.runner.apply_at(completed, positions.next())
    assert await rows(follower) == []
    for envelope in history.envelopes:
        await follower.runner.apply_at(envelope, positions.next())
    (row,) = await rows(follower)
    assert row["status"] == "completed"


async def test_an_unversioned_event_of_an_unknown_backup_is_refused(
    follower: BackupsFollower, backup_events: Any
) -> None:
    """Without an aggregate version only the row itself can tell the order: an update of a
    backup the view has not seen is refused (retried), never silently dropped."""
    history = backup_events.history(
        organization_id=ORG, environment_id=uuid.uuid4(), requested_at=T0
    )
    unversioned = history.envelopes[3].model_copy(
        update={"aggregate_id": None, "aggregate_version": None}
    )
    with pytest.raises(OutOfOrder):
        await follower.runner.apply_at(unversioned, Tracking(STREAM, 1))
    async with follower.pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) AS n FROM scheduler.projection_positions")
        assert (await cursor.fetchone())["n"] == 0  # type: ignore[index]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_any_delivery_order_with_duplicates_ends_as_the_stores_order(
    follower: BackupsFollower, backup_events: Any, seed: int
) -> None:
    """An environment's events shuffled and partly duplicated, each refused event retried
    later (as the consumer does): the view equals a rebuild from the events in order."""
    rng = random.Random(seed)
    environment_id = uuid.uuid4()
    outcomes = ["completed", "failed", "deleted", "deleting", "running", "completed"]
    histories = [
        backup_events.history(
            organization_id=ORG,
            environment_id=environment_id,
            requested_at=T0 + timedelta(hours=i),
            type=rng.choice(["db", "full"]),
            trigger=rng.choice(["manual", "scheduled"]),
            outcome=outcome,
        )
        for i, outcome in enumerate(outcomes)
    ]
    in_order = [e for h in histories for e in h.envelopes]
    pending = in_order + rng.sample(in_order, len(in_order) // 3)
    rng.shuffle(pending)
    positions, refused = Positions(), 0
    while pending:
        envelope = pending.pop(0)
        try:
            await follower.runner.apply_at(envelope, positions.next())
        except OutOfOrder:
            refused += 1
            pending.insert(rng.randint(1, max(1, len(pending))), envelope)
    assert refused > 0  # the shuffle did put events before their predecessors
    async with follower.pool.connection() as conn:
        await rebuild(conn, BackupsView(), "scheduler_rebuilt", in_order)
        assert await compare(conn, BackupsView(), "scheduler", "scheduler_rebuilt") == []
    listed = await follower.query.completed_backups(environment_id)
    assert {f.backup_id for f in listed} == {histories[0].backup_id, histories[5].backup_id}


async def test_a_scheduled_completion_calls_enforcement_once_it_is_in_the_view(
    follower: BackupsFollower, backup_events: Any
) -> None:
    environment_id = uuid.uuid4()
    scheduled = backup_events.history(
        organization_id=ORG, environment_id=environment_id, requested_at=T0
    )
    manual = backup_events.history(
        organization_id=ORG,
        environment_id=environment_id,
        requested_at=T0 - timedelta(hours=1),
        trigger="manual",
    )
    seen: list[tuple[uuid.UUID, list[uuid.UUID]]] = []

    async def enforce(env: uuid.UUID) -> None:
        # The completion is visible to enforcement: it was committed before the call.
        seen.append((env, [f.backup_id for f in await follower.query.completed_backups(env)]))

    follower.on_scheduled_completed = enforce
    positions = Positions()

    async def deliver(envelope: Envelope, tracking: Tracking) -> None:
        message_class = BACKUP_EVENTS.message_class(envelope.message_type)
        assert message_class is not None
        message = message_class.model_validate(envelope.payload)
        await follower.handle(message, Delivery(envelope, tracking, 1))

    for envelope in manual.envelopes:
        await deliver(envelope, positions.next())
    assert seen == []  # a manual backup's completion decides nothing
    last = None
    for envelope in scheduled.envelopes:
        last = positions.next()
        await deliver(envelope, last)
    assert seen == [(environment_id, [scheduled.backup_id, manual.backup_id])]
    # Redelivered (a crash after the view's commit, before the enforcement finished):
    # the view does not change, and enforcement runs again (it is idempotent).
    assert last is not None
    await deliver(scheduled.envelopes[-1], last)
    assert len(seen) == 2


async def test_an_old_completion_replayed_by_a_fresh_scheduler_enforces_nothing(
    create_database: Callable[..., str], backup_events: Any
) -> None:
    """A fresh scheduler replays backup.events from the start: a completion more than an
    hour old is projected but decides nothing (its view lacks every later backup)."""
    environment_id = uuid.uuid4()
    old = backup_events.history(organization_id=ORG, environment_id=environment_id, requested_at=T0)
    late = BackupsFollower(
        create_database("sched"), "scheduler", now=lambda: T0 + timedelta(hours=3)
    )
    await late.open()
    try:
        calls: list[uuid.UUID] = []

        async def enforce(env: uuid.UUID) -> None:
            calls.append(env)

        late.on_scheduled_completed = enforce
        positions = Positions()
        for envelope in old.envelopes:
            message_class = BACKUP_EVENTS.message_class(envelope.message_type)
            assert message_class is not None
            message = message_class.model_validate(envelope.payload)
            await late.handle(message, Delivery(envelope, positions.next(), 1))
        assert calls == []
        assert [f.backup_id for f in await late.query.completed_backups(environment_id)] == [
            old.backup_id
        ]
    finally:
        await late.close()


async def test_a_failing_enforcement_fails_the_delivery_so_it_is_retried(
    follower: BackupsFollower, backup_events: Any
) -> None:
    history = backup_events.history(
        organization_id=ORG, environment_id=uuid.uuid4(), requested_at=T0
    )
    calls = 0

    async def enforce(env: uuid.UUID) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("event store unreachable")

    follower.on_scheduled_completed = enforce

    positions = Positions()
    trackings = [positions.next() for _ in history.envelopes]
    messages = [
        BACKUP_EVENTS.message_class(e.message_type).model_validate(e.payload)  # type: ignore[union-attr]
        for e in history.envelopes
    ]
    for index in range(len(messages) - 1):
        delivery = Delivery(history.envelopes[index], trackings[index], 1)
        await follower.handle(messages[index], delivery)
    with pytest.raises(RuntimeError):
        await follower.handle(messages[-1], Delivery(history.envelopes[-1], trackings[-1], 1))
    # The consumer seeks back and delivers it again: enforcement runs this time.
    await follower.handle(messages[-1], Delivery(history.envelopes[-1], trackings[-1], 2))
    assert calls == 2
    (row,) = await rows(follower)
    assert row["status"] == "completed"
