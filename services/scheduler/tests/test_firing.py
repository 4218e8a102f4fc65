"""The scheduler in fake time on the in-memory store: when it fires, what it records as
missed, and how configuration changes (PUTs, pauses, revisions) take effect."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import Tracking
from tidemark_scheduler.domain import (
    MISSED_COUNT_CAP,
    OUTSIDE_GRACE,
    RECONFIGURED,
    SUPERSEDED,
    Schedule,
    capped,
)
from tidemark_scheduler.timer import FIRE_ERRORS
from tidemark_schedules import cron, ids

from .conftest import GRACE, RETRY, FakeClock, Harness, HarnessFactory


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "cron", "start", "end", "expected"),
    [
        # Berlin, spring: 02:30 does not exist on 29 March, fires once at the gap's end.
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 3, 27, 12),
            utc(2026, 3, 30, 12),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)],
        ),
        # Berlin, autumn: 02:30 exists twice on 25 October, fires once, at the first.
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 10, 23, 12),
            utc(2026, 10, 26, 12),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        # New York, spring: 02:30 does not exist on 8 March.
        (
            "America/New_York",
            "30 2 * * *",
            utc(2026, 3, 6, 12),
            utc(2026, 3, 9, 12),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)],
        ),
        # New York, autumn, hourly: 01:00 exists twice on 1 November, fires once.
        (
            "America/New_York",
            "0 * * * *",
            utc(2026, 11, 1, 3, 30),
            utc(2026, 11, 1, 7, 30),
            [utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)],
        ),
    ],
)
async def test_fires_at_the_wall_clock_times_across_dst(
    make_harness: HarnessFactory,
    zone: str,
    cron: str,
    start: datetime,
    end: datetime,
    expected: list[datetime],
) -> None:
    harness = make_harness(start)
    env = uuid.uuid4()
    await harness.configure(env, timezone=zone, dbFrequency="custom", dbCron=cron)
    await harness.run_until(end)
    fired = harness.fired(env)
    assert [f.scheduled_for for f in fired] == expected
    assert all(f.late_seconds == 0 for f in fired)
    assert harness.missed(env) == []
    # Each fire requested its backup, with the id derived from (schedule, type, time).
    requests = harness.events(ids.schedule_id(env), Schedule.BackupRequestIssued)
    assert [r.backup_id for r in requests] == [
        ids.scheduled_backup_id(ids.schedule_id(env), "db", at) for at in expected
    ]
    assert [r.requested_at for r in requests] == expected


@pytest.mark.parametrize("settings", [{"paused": True}, {"enabled": False}])
async def test_paused_or_disabled_schedule_fires_nothing(
    make_harness: HarnessFactory, settings: dict[str, bool]
) -> None:
    harness = make_harness()
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly", fullFrequency="daily", **settings)
    await harness.run_until(harness.clock.now() + timedelta(days=2))
    assert harness.fired(env) == []
    assert harness.missed(env) == []
    assert len(harness.timer) == 0


async def test_unpause_resumes_without_catch_up_or_misses(make_harness: HarnessFactory) -> None:
    harness = make_harness(utc(2026, 1, 5, 12, 0, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly")
    await harness.run_until(utc(2026, 1, 5, 13, 30))
    await harness.configure(env, dbFrequency="hourly", paused=True)
    await harness.run_until(utc(2026, 1, 5, 18, 10))
    await harness.configure(env, dbFrequency="hourly", paused=False)
    await harness.run_until(utc(2026, 1, 5, 20, 30))
    assert [f.scheduled_for for f in harness.fired(env)] == [
        utc(2026, 1, 5, 13),
        utc(2026, 1, 5, 19),
        utc(2026, 1, 5, 20),
    ]
    assert harness.missed(env) == []


async def test_after_downtime_latest_fires_late_once_and_earlier_are_one_miss(
    make_harness: HarnessFactory,
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 11, 50))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    await down.configure(env, dbFrequency="custom", dbCron="*/5 * * * *")
    # Down from 11:50 to 12:17: 11:55 ... 12:15 passed; 12:15 is within grace.
    clock.set(utc(2026, 1, 5, 12, 17))
    up = make_harness(clock=clock, app=down.app, targets=down.targets, partitions=())
    await up.ownership.assigned([0, 1, 2, 3, 4, 5])
    await up.ownership.wait_loaded()
    await up.run_until(utc(2026, 1, 5, 12, 21))
    fired = up.fired(env)
    assert [(f.scheduled_for, f.late_seconds) for f in fired] == [
        (utc(2026, 1, 5, 12, 15), 120.0),
        (utc(2026, 1, 5, 12, 20), 0.0),
    ]
    [missed] = up.missed(env)
    assert (missed.first, missed.last, missed.count) == (
        utc(2026, 1, 5, 11, 55),
        utc(2026, 1, 5, 12, 10),
        4,
    )
    assert missed.reason == SUPERSEDED


async def test_after_downtime_beyond_grace_everything_is_missed(
    make_harness: HarnessFactory,
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 9, 30))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    await down.configure(env, dbFrequency="hourly")
    clock.set(utc(2026, 1, 5, 12, 40))  # 10:00, 11:00, 12:00 passed; 12:00 is 40 min ago
    up = make_harness(clock=clock, app=down.app, targets=down.targets, partitions=())
    await up.ownership.assigned([0, 1, 2, 3, 4, 5])
    await up.ownership.wait_loaded()
    await up.run_until(utc(2026, 1, 5, 13, 0, 1))
    [missed] = up.missed(env)
    assert (missed.first, missed.last, missed.count, missed.reason) == (
        utc(2026, 1, 5, 10),
        utc(2026, 1, 5, 12),
        3,
        OUTSIDE_GRACE,
    )
    assert [f.scheduled_for for f in up.fired(env)] == [utc(2026, 1, 5, 13)]


async def test_a_retention_only_put_during_downtime_keeps_the_misses(
    make_harness: HarnessFactory,
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 9, 30))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    await down.configure(env, dbFrequency="hourly")
    clock.set(utc(2026, 1, 5, 12, 40))
    await down.configure(env, dbFrequency="hourly", retainDaily=7)
    up = make_harness(clock=clock, app=down.app, targets=down.targets, partitions=())
    await up.ownership.assigned([0, 1, 2, 3, 4, 5])
    await up.ownership.wait_loaded()
    await up.settle()
    [missed] = up.missed(env)
    assert missed.count == 3


async def test_a_put_takes_effect_at_once(make_harness: HarnessFactory) -> None:
    harness = make_harness(utc(2026, 1, 5, 12, 0, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="daily")  # 02:00 tomorrow
    await harness.run_until(utc(2026, 1, 5, 12, 3))
    assert harness.timer.next_wake(ids.schedule_id(env), "db") == utc(2026, 1, 6, 2)
    await harness.configure(env, dbFrequency="custom", dbCron="*/5 * * * *")
    assert harness.timer.next_wake(ids.schedule_id(env), "db") == utc(2026, 1, 5, 12, 5)
    await harness.run_until(utc(2026, 1, 5, 12, 11))
    assert [f.scheduled_for for f in harness.fired(env)] == [
        utc(2026, 1, 5, 12, 5),
        utc(2026, 1, 5, 12, 10),
    ]
    # A change starts from the configuration time: the 12:00 of the new cron is not due.
    assert harness.missed(env) == []


async def test_a_revision_is_applied_once_and_older_ones_are_ignored(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness()
    env = uuid.uuid4()
    await harness.configure(env, 2, dbFrequency="hourly")
    await harness.configure(env, 1, dbFrequency="custom", dbCron="* * * * *")  # reordered
    await harness.configure(env, 2, dbFrequency="custom", dbCron="* * * * *")  # equal
    schedule = harness.app.get_schedule(ids.schedule_id(env))
    assert schedule is not None
    assert (schedule.revision, schedule.parsed_settings.db_cron) == (2, "0 * * * *")
    assert len(harness.events(ids.schedule_id(env), Schedule.Reconfigured)) == 0
    await harness.configure(env, 3, dbFrequency="daily")
    assert harness.app.get_schedule(ids.schedule_id(env)).revision == 3  # type: ignore[union-attr]


async def test_a_redelivered_configure_has_no_second_effect(make_harness: HarnessFactory) -> None:
    harness = make_harness()
    env = uuid.uuid4()
    tracking = Tracking("c/schedule.commands:3", 41)
    first = await harness.configure(env, dbFrequency="hourly", tracking=tracking)
    notifications = harness.app.recorder.max_notification_id()
    await harness.deliver(first, tracking)
    assert harness.app.recorder.max_notification_id() == notifications
    assert harness.app.configure(first, tracking) is False


async def test_two_instances_firing_the_same_time_request_it_once(
    make_harness: HarnessFactory,
) -> None:
    one = make_harness(utc(2026, 1, 5, 11, 59, 30), running=False)
    env = uuid.uuid4()
    await one.configure(env, dbFrequency="hourly")
    two = make_harness(clock=one.clock, app=one.app, targets=one.targets, running=False)
    one.clock.set(utc(2026, 1, 5, 12, 0, 1))
    schedule_id = ids.schedule_id(env)
    assert await one.firing(schedule_id, "db") == utc(2026, 1, 5, 13)
    assert await two.firing(schedule_id, "db") == utc(2026, 1, 5, 13)  # an early look
    assert [f.scheduled_for for f in one.fired(env)] == [utc(2026, 1, 5, 12)]
    # The same decision on a schedule read before the other's save loses on the version.
    stale = one.app.repository.get(schedule_id, version=1)
    stale.fire("db", utc(2026, 1, 5, 12), one.clock.now(), GRACE, None, "x")
    with pytest.raises(Exception, match="already recorded"):
        one.app.save(stale)
    assert len(one.fired(env)) == 1


async def test_catalog_lag_is_waited_for_within_grace(make_harness: HarnessFactory) -> None:
    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly", in_catalog=False)
    await harness.run_until(utc(2026, 1, 5, 12, 2))
    assert harness.fired(env) == []
    assert harness.targets.lookups >= 4  # 12:00, 12:00:30, 12:01, 12:01:30, ...
    harness.targets.known.add(env)
    await harness.run_until(utc(2026, 1, 5, 12, 3))
    [fired] = harness.fired(env)
    assert fired.scheduled_for == utc(2026, 1, 5, 12)
    assert fired.late_seconds == pytest.approx(120, abs=RETRY.total_seconds())
    assert harness.missed(env) == []


async def test_catalog_lag_past_grace_is_recorded_missed_with_the_reason(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly", in_catalog=False)
    await harness.run_until(utc(2026, 1, 5, 12, 20))
    assert harness.fired(env) == []
    [missed] = harness.missed(env)
    assert (missed.first, missed.count) == (utc(2026, 1, 5, 12), 1)
    assert missed.reason == "the environment is not in the scheduler's catalog view"
    assert missed.detected_at == utc(2026, 1, 5, 12) + GRACE
    # It goes on with the next fire time (and misses it too while the view lacks it).
    assert harness.timer.next_wake(ids.schedule_id(env), "db") == utc(2026, 1, 5, 13)


async def test_a_failing_fire_is_retried_and_then_fires(make_harness: HarnessFactory) -> None:
    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly")
    harness.targets.failures = 2
    errors = FIRE_ERRORS._value.get()
    await harness.run_until(utc(2026, 1, 5, 12, 1, 30))
    assert FIRE_ERRORS._value.get() == errors + 2
    [fired] = harness.fired(env)
    # Retried after RETRY, then (the second consecutive failure) after twice that.
    assert fired.late_seconds == 3 * RETRY.total_seconds()


async def test_revoked_partitions_stop_firing_and_assigned_ones_load(
    make_harness: HarnessFactory,
) -> None:
    from tidemark_scheduler.ownership import partition_of

    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="hourly")
    partition = partition_of(env)
    await harness.ownership.revoked([partition])
    assert len(harness.timer) == 0
    await harness.run_until(utc(2026, 1, 5, 12, 5))
    assert harness.fired(env) == []
    await harness.ownership.assigned([partition])
    await harness.ownership.wait_loaded()
    await harness.run_until(utc(2026, 1, 5, 12, 6))
    assert [f.late_seconds for f in harness.fired(env)] == [300.0]


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner
    from tidemark_scheduler.ownership import partition_of

    for _ in range(50):
        env = uuid.uuid4()
        assert partition_of(env, 6) == DefaultPartitioner()(str(env).encode(), list(range(6)), [])


async def test_an_every_minute_schedule_is_loaded_from_snapshots(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    env = uuid.uuid4()
    await harness.configure(env, dbFrequency="custom", dbCron="* * * * *")
    await harness.run_until(utc(2026, 1, 5, 14, 0))
    assert len(harness.fired(env)) == 120 + 1
    snapshots = list(harness.app.snapshots.get(ids.schedule_id(env)))  # type: ignore[union-attr]
    assert snapshots, "no snapshot was taken"
    schedule = harness.app.get_schedule(ids.schedule_id(env))
    assert schedule is not None
    assert schedule.version - snapshots[-1].originator_version < 100


async def test_retention_runs_after_every_configure_also_a_redelivered_one(
    make_harness: HarnessFactory,
) -> None:
    from tidemark_contracts import Envelope
    from tidemark_contracts.schedule import ConfigureSchedule
    from tidemark_platform.consumer import Delivery
    from tidemark_scheduler.handlers import make_handlers

    harness = make_harness()
    env = uuid.uuid4()
    enforced: list[tuple[uuid.UUID, datetime]] = []

    async def enforce(environment_id: uuid.UUID, now: datetime) -> None:
        enforced.append((environment_id, now))

    handlers = make_handlers(
        harness.app, harness.ownership, lambda: None, now=harness.clock.now, after_configure=enforce
    )
    command = harness.command(env, dbFrequency="hourly")
    envelope = Envelope.wrap(
        command, producer="test", organization_id=command.organization_id, environment_id=env
    )
    delivery = Delivery(envelope, Tracking("c/schedule.commands:1", 5), 1)
    await handlers[ConfigureSchedule](command, delivery)
    await handlers[ConfigureSchedule](command, delivery)  # redelivered: nothing recorded
    assert enforced == [(env, harness.clock.now())] * 2
    assert harness.app.get_schedule(ids.schedule_id(env)).version == 1  # type: ignore[union-attr]


async def test_many_schedules_due_together_fire_once_each_in_batches(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    envs = [uuid.uuid4() for _ in range(60)]
    for env in envs:
        await harness.configure(env, dbFrequency="custom", dbCron="* * * * *")
    await harness.run_until(utc(2026, 1, 5, 12, 2, 30))
    minutes = [utc(2026, 1, 5, 12, m) for m in range(3)]
    for env in envs:
        assert [f.scheduled_for for f in harness.fired(env)] == minutes
        assert harness.missed(env) == []


async def test_a_batch_that_lost_a_race_decides_each_fire_again(
    make_harness: HarnessFactory,
) -> None:
    from tidemark_scheduler.application import FireRequest

    harness = make_harness(utc(2026, 1, 5, 11, 59, 30), running=False)
    first, second = uuid.uuid4(), uuid.uuid4()
    for env in (first, second):
        await harness.configure(env, dbFrequency="hourly")
    harness.clock.set(utc(2026, 1, 5, 12, 0, 1))
    ids_ = [ids.schedule_id(first), ids.schedule_id(second)]
    read_before = harness.app.get_schedules(ids_)  # one instance reads both ...
    assert await harness.firing(ids_[0], "db") == utc(2026, 1, 5, 13)  # ... another fires one
    due = utc(2026, 1, 5, 12)
    targets = await harness.targets.lookup([(harness.organization_id, first, ())])
    outcomes = harness.app.fire_many(
        read_before,
        [FireRequest(s, "db", due, targets[first]) for s in ids_],  # type: ignore[arg-type]
        harness.clock.now(),
        GRACE,
    )
    assert outcomes[ids_[0], "db"].stale
    assert outcomes[ids_[1], "db"].fired_for == due
    for env in (first, second):
        assert [f.scheduled_for for f in harness.fired(env)] == [due]


async def test_a_command_is_timed_by_the_owner_of_the_partition_it_arrived_on(
    make_harness: HarnessFactory,
) -> None:
    # schedule.commands has 12 partitions (more than the contract's 6): the producer put the
    # environment's command on partition 9, so the consumer of 9 owns the schedule.
    from tidemark_scheduler.ownership import partition_of

    env = next(e for e in iter(uuid.uuid4, None) if partition_of(e, 12) == 9)
    schedule_id = ids.schedule_id(env)
    nine = make_harness(utc(2026, 1, 5, 11, 59, 30), partitions=[9])
    await nine.configure(env, dbFrequency="hourly", partition=9)
    assert nine.timer.owns(schedule_id)
    # The owner of the partition a hash over 6 would name does not load it; after a
    # rebalance the new owner of 9 does, from the partition kept at configure time.
    hashed = make_harness(clock=nine.clock, app=nine.app, targets=nine.targets, partitions=[])
    await hashed.ownership.assigned([partition_of(env)])
    await hashed.ownership.wait_loaded()
    assert not hashed.timer.owns(schedule_id)
    await nine.ownership.revoked([9])
    assert not nine.timer.owns(schedule_id)
    later = make_harness(clock=nine.clock, app=nine.app, targets=nine.targets, partitions=[])
    await later.ownership.assigned([9])
    await later.ownership.wait_loaded()
    assert later.timer.owns(schedule_id)
    await later.run_until(utc(2026, 1, 5, 12, 0, 30))
    assert [f.scheduled_for for f in later.fired(env)] == [utc(2026, 1, 5, 12)]


async def test_a_command_on_another_partition_moves_the_schedule_there(
    make_harness: HarnessFactory,
) -> None:
    # Partitions were added: the environment's commands, on partition ``old`` so far,
    # now arrive on ``new``.
    from tidemark_scheduler.ownership import partition_of

    env = uuid.uuid4()
    schedule_id = ids.schedule_id(env)
    old = partition_of(env)
    new = old + 6
    both = make_harness(utc(2026, 1, 5, 11, 59, 30), partitions=[old, new])
    await both.configure(env, dbFrequency="hourly", partition=old)
    await both.configure(env, dbFrequency="hourly", partition=new)
    # Timed under ``new`` now: losing ``old`` does not drop it.
    await both.ownership.revoked([old])
    assert both.timer.owns(schedule_id)
    # An instance owning only ``old`` stops timing it when a command arrives elsewhere,
    # and does not load it again; the owner of ``new`` does.
    one = make_harness(clock=both.clock, app=both.app, targets=both.targets, partitions=[])
    await one.ownership.assigned([old])
    await one.ownership.wait_loaded()
    assert not one.timer.owns(schedule_id)
    await both.ownership.revoked([new])
    await one.ownership.assigned([new])
    await one.ownership.wait_loaded()
    assert one.timer.owns(schedule_id)
    await one.ownership.revoked([new])
    await one.configure(env, dbFrequency="hourly", partition=old)
    assert one.timer.owns(schedule_id)  # back on ``old`` (ours)
    await one.configure(env, dbFrequency="hourly", partition=new)
    assert not one.timer.owns(schedule_id)  # moved to ``new``, which another instance owns
    assert len(one.timer) == 0


async def test_a_failing_schedule_does_not_hold_back_its_batch_and_ends_missed(
    make_harness: HarnessFactory,
) -> None:
    from tidemark_scheduler.firing import FIRE_FAILED

    harness = make_harness(utc(2026, 1, 5, 11, 59, 30))
    healthy = [uuid.uuid4() for _ in range(5)]
    failing = uuid.uuid4()
    for env in [*healthy, failing]:
        await harness.configure(env, dbFrequency="hourly")
    harness.targets.poisoned.add(failing)  # any lookup that includes it raises
    errors = FIRE_ERRORS._value.get()
    await harness.run_until(utc(2026, 1, 5, 12, 0, 1))
    for env in healthy:
        assert [(f.scheduled_for, f.late_seconds) for f in harness.fired(env)] == [
            (utc(2026, 1, 5, 12), 0.0)
        ]
    assert harness.fired(failing) == []
    await harness.run_until(utc(2026, 1, 5, 12, 30))
    assert harness.fired(failing) == []
    [missed] = harness.missed(failing)
    assert (missed.first, missed.count, missed.reason) == (utc(2026, 1, 5, 12), 1, FIRE_FAILED)
    assert missed.detected_at == utc(2026, 1, 5, 12) + GRACE
    # Retried with backoff (12:00, :00:30, :01:30, :03:30, :07:30, :11:30, the grace's end
    # at :15), then given up until its next fire time.
    assert FIRE_ERRORS._value.get() == errors + 7
    assert harness.timer.next_wake(ids.schedule_id(failing), "db") == utc(2026, 1, 5, 13)
    for env in healthy:
        assert harness.missed(env) == []


async def restart(down: Harness, clock: FakeClock, make_harness: HarnessFactory) -> Harness:
    """A scheduler instance taking over ``down``'s store and loading every partition."""
    up = make_harness(clock=clock, app=down.app, targets=down.targets, partitions=())
    await up.ownership.assigned([0, 1, 2, 3, 4, 5])
    await up.ownership.wait_loaded()
    return up


async def test_a_timing_put_during_downtime_records_the_old_times_missed(
    make_harness: HarnessFactory,
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 9, 30))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    await down.configure(env, dbFrequency="hourly")
    # Down from before 10:00; at 11:30 a PUT moves the cron to half past.
    clock.set(utc(2026, 1, 5, 11, 30))
    await down.configure(env, dbFrequency="custom", dbCron="30 * * * *")
    clock.set(utc(2026, 1, 5, 12, 35))
    up = await restart(down, clock, make_harness)
    await up.run_until(utc(2026, 1, 5, 13, 31))
    [missed] = up.missed(env)
    assert (missed.first, missed.last, missed.count, missed.reason) == (
        utc(2026, 1, 5, 10),
        utc(2026, 1, 5, 11),
        2,
        RECONFIGURED,
    )
    assert missed.detected_at == utc(2026, 1, 5, 11, 30)
    assert [(f.scheduled_for, f.late_seconds) for f in up.fired(env)] == [
        (utc(2026, 1, 5, 12, 30), 300.0),
        (utc(2026, 1, 5, 13, 30), 0.0),
    ]


async def test_a_pause_during_downtime_records_the_times_before_it_missed_not_during_it(
    make_harness: HarnessFactory,
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 9, 30))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    await down.configure(env, dbFrequency="hourly")
    clock.set(utc(2026, 1, 5, 11, 30))
    await down.configure(env, dbFrequency="hourly", paused=True)
    clock.set(utc(2026, 1, 5, 14, 10))
    await down.configure(env, dbFrequency="hourly", paused=False)
    up = await restart(down, clock, make_harness)
    await up.run_until(utc(2026, 1, 5, 15, 1))
    [missed] = up.missed(env)
    assert (missed.first, missed.last, missed.count) == (
        utc(2026, 1, 5, 10),
        utc(2026, 1, 5, 11),
        2,
    )
    assert [f.scheduled_for for f in up.fired(env)] == [utc(2026, 1, 5, 15)]


async def test_a_zone_change_to_the_same_offset_never_fires_a_time_again(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(utc(2026, 1, 5, 12, 0, 30))
    env = uuid.uuid4()
    await harness.configure(env, timezone="Europe/Berlin", dbFrequency="custom", dbCron="0 2 * * *")
    await harness.run_until(utc(2026, 1, 6, 0, 59, 50))
    # The PUT is made just before 02:00 Berlin, and reaches the scheduler just after it fired.
    command = harness.command(
        env, timezone="Europe/Paris", dbFrequency="custom", dbCron="0 2 * * *"
    )
    await harness.run_until(utc(2026, 1, 6, 1, 0, 10))
    await harness.deliver(command)
    await harness.run_until(utc(2026, 1, 7, 1, 0, 10))
    assert [f.scheduled_for for f in harness.fired(env)] == [
        utc(2026, 1, 6, 1),
        utc(2026, 1, 7, 1),
    ]
    assert harness.missed(env) == []


async def test_catch_up_after_a_month_down_walks_a_bounded_number_of_fire_times(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(utc(2026, 1, 5, 11, 59, 30))
    down = make_harness(clock=clock, running=False)
    env = uuid.uuid4()
    # Every minute of 01:xx UTC: 60 fire times a day; 30 days down is 1,800 of them, the
    # last of which (01:59 today) is ~11 hours before the restart.
    await down.configure(env, dbFrequency="custom", dbCron="* 1 * * *")
    clock.set(utc(2026, 2, 4, 12, 40))
    walked = 0
    real = cron.fire_times

    def counting(expr: str, zone: str, after: datetime, until: datetime) -> Iterator[datetime]:
        nonlocal walked
        for at in real(expr, zone, after, until):
            walked += 1
            yield at

    monkeypatch.setattr(cron, "fire_times", counting)
    up = await restart(down, clock, make_harness)
    await up.settle()
    [missed] = up.missed(env)
    assert (missed.first, missed.last, missed.count, missed.reason) == (
        utc(2026, 1, 6, 1),
        utc(2026, 2, 4, 1, 59),
        1_800,
        OUTSIDE_GRACE,
    )
    assert up.fired(env) == []
    schedule = up.app.get_schedule(ids.schedule_id(env))
    assert schedule is not None
    assert schedule.next_due["db"] == utc(2026, 2, 5, 1)

    # Down for a year: 21,900 fire times; the count stops at the cap, the ends stay exact.
    clock.set(utc(2027, 2, 4, 12, 40))
    walked = 0
    await up.settle()
    assert walked < MISSED_COUNT_CAP + 200
    latest = up.missed(env)[-1]
    assert (latest.first, latest.last, latest.count) == (
        utc(2026, 2, 5, 1),
        utc(2027, 2, 4, 1, 59),
        MISSED_COUNT_CAP,
    )
    assert latest.reason == capped(OUTSIDE_GRACE, MISSED_COUNT_CAP)
    assert f"at least {MISSED_COUNT_CAP}" in latest.reason
