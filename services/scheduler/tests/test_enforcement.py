"""Retention enforcement on the scheduler's in-memory event store (eventsourcing POPO) and a
list-backed view: what it expires, what it never expires, and that it expires once."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.persistence import Tracking
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tidemark_contracts import BACKUP_COMMANDS, SCHEDULE_EVENTS, Envelope
from tidemark_contracts.backup import BackupTrigger, BackupType
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleSettings
from tidemark_platform.consumer import Delivery
from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.enforcement import RetentionEnforcer, retention_plan
from tidemark_scheduler.handlers import make_handlers
from tidemark_schedules import ids
from tidemark_schedules.retention import BackupFacts

ORG = uuid.uuid4()
T0 = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
DESTINATION = uuid.uuid4()
OFFSETS = itertools.count(1)  # positions on schedule.commands, increasing across tests


class ListedBackups:
    """The view as a list: the completed backups of each environment."""

    def __init__(self, backups: Sequence[BackupFacts] = ()) -> None:
        self.backups = list(backups)

    async def completed_backups(self, environment_id: uuid.UUID) -> Sequence[BackupFacts]:
        return [b for b in self.backups if b.status == "completed"]


def backup(
    created_at: datetime,
    type: BackupType = "db",
    trigger: BackupTrigger = "scheduled",
    status: str = "completed",
) -> BackupFacts:
    return BackupFacts(
        backup_id=uuid.uuid4(),
        type=type,
        trigger=trigger,
        status=status,  # type: ignore[arg-type]
        created_at=created_at,
        size_bytes=10,
    )


def configure(
    app: SchedulerApplication, environment_id: uuid.UUID, revision: int = 1, **fields: Any
) -> None:
    body = {
        "db_frequency": "daily",
        "db_cron": "0 3 * * *",
        "destination_ids": [DESTINATION],
        **fields,
    }
    command = ConfigureSchedule(
        schedule_id=ids.schedule_id(environment_id),
        organization_id=ORG,
        project_id=uuid.uuid4(),
        environment_id=environment_id,
        revision=revision,
        settings=ScheduleSettings(**body),
        requested_by="user",
        created_at=T0,
        updated_at=T0,
    )
    assert app.configure(command, Tracking("schedule.commands:0", next(OFFSETS)))


def relayed(app: SchedulerApplication) -> list[Envelope]:
    envelopes = []
    for notification in app.recorder.select_notifications(start=1, limit=100_000):
        mapped = app.to_envelope(app.mapper.to_domain_event(notification))
        if mapped is not None:
            envelopes.append(mapped[1])
    return envelopes


def expired_ids(app: SchedulerApplication) -> list[uuid.UUID]:
    return [
        uuid.UUID(e.payload["backupId"])
        for e in relayed(app)
        if e.message_type == "schedule.BackupExpired"
    ]


def daily(days: int, **kwargs: Any) -> list[BackupFacts]:
    """One backup a day at 03:00 UTC from T0, oldest first."""
    return [backup(T0 + timedelta(days=i), **kwargs) for i in range(days)]


async def test_without_a_schedule_nothing_is_expired() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    enforcer = RetentionEnforcer(app, ListedBackups(daily(10)))
    outcome = await enforcer.enforce(environment_id, T0 + timedelta(days=10))
    assert outcome.plan is None
    assert outcome.expired == 0
    assert relayed(app) == []


async def test_backups_the_rules_no_longer_keep_are_expired_and_deleted_by_the_scheduler() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, retain_daily=2)
    backups = daily(5)
    enforcer = RetentionEnforcer(app, ListedBackups(backups))
    outcome = await enforcer.enforce(environment_id, T0 + timedelta(days=5))
    assert outcome.expired == 3
    envelopes = relayed(app)
    expired = [e for e in envelopes if e.message_type == "schedule.BackupExpired"]
    deletions = [e for e in envelopes if e.message_type == "backup.DeleteBackup"]
    oldest = {b.backup_id for b in backups[:3]}
    assert {uuid.UUID(e.payload["backupId"]) for e in expired} == oldest
    assert {uuid.UUID(e.payload["backupId"]) for e in deletions} == oldest
    for event in expired:
        assert event.payload["rule"]  # names the rule that no longer keeps it
        assert event.payload["decidedAt"].startswith("2026-01-10T03:00:00")
        assert event.environment_id == environment_id
    for command in deletions:
        assert command.payload["requestedBy"] == "scheduler:retention"
        assert command.key == str(environment_id).encode()
    # Each leaves on its own topic through the relay (the event store is the outbox).
    topics = {
        e.message_type: t.name
        for n in app.recorder.select_notifications(start=1, limit=100)
        if (mapped := app.to_envelope(app.mapper.to_domain_event(n))) is not None
        for t, e in [mapped]
    }
    assert topics["schedule.BackupExpired"] == SCHEDULE_EVENTS.name
    assert topics["backup.DeleteBackup"] == BACKUP_COMMANDS.name


async def test_enforcing_again_expires_nothing_twice() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, retain_daily=2)
    enforcer = RetentionEnforcer(app, ListedBackups(daily(5)))
    now = T0 + timedelta(days=5)
    assert (await enforcer.enforce(environment_id, now)).expired == 3
    events = len(relayed(app))
    again = await enforcer.enforce(environment_id, now + timedelta(minutes=1))
    assert again.expired == 0
    assert len(again.plan.delete) == 3  # type: ignore[union-attr]  # decided again, not recorded
    assert len(relayed(app)) == events


async def test_no_rule_for_a_type_expires_nothing_of_it() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, retain_full_daily=1)
    enforcer = RetentionEnforcer(app, ListedBackups(daily(5, type="db")))
    outcome = await enforcer.enforce(environment_id, T0 + timedelta(days=5))
    assert outcome.expired == 0
    assert expired_ids(app) == []


async def test_a_schedule_change_expires_what_the_new_retention_no_longer_keeps() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    backups = daily(6)
    enforcer = RetentionEnforcer(app, ListedBackups(backups))
    configure(app, environment_id, retain_daily=10)
    assert (await enforcer.enforce(environment_id, T0 + timedelta(days=6))).expired == 0
    configure(app, environment_id, revision=2, retain_daily=2)
    assert (await enforcer.enforce(environment_id, T0 + timedelta(days=6))).expired == 4
    assert set(expired_ids(app)) == {b.backup_id for b in backups[:4]}


async def test_manual_backups_the_newest_of_a_type_and_the_pitr_base_are_never_expired() -> None:
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, retain_daily=3, wal_enabled=True, wal_retention_days=7)
    fulls = daily(30, type="full")
    manual = [backup(T0 + timedelta(days=i, hours=1), trigger="manual") for i in range(0, 30, 5)]
    manual_full = backup(T0 + timedelta(days=29, hours=5), type="full", trigger="manual")
    # The newest db backup is a manual one; the scheduled db backups are older.
    dbs = daily(4)
    others = [
        backup(T0 + timedelta(days=2), status=s)  # type: ignore[arg-type]
        for s in ("pending", "running", "failed", "deleting", "deleted")
    ]
    listed = [*fulls, *manual, manual_full, *dbs, *others]
    now = T0 + timedelta(days=29, hours=6)
    enforcer = RetentionEnforcer(app, ListedBackups(listed))
    outcome = await enforcer.enforce(environment_id, now)
    expired = set(expired_ids(app))
    # The PITR base: the newest full at or before now - 7 days (day 22, 03:00 UTC).
    pitr_base = fulls[22]
    assert pitr_base.backup_id not in expired
    assert ({b.backup_id for b in manual} | {manual_full.backup_id}).isdisjoint(expired)
    assert max(fulls, key=lambda b: b.created_at).backup_id not in expired
    # Fulls: days 27-29 by the daily rule, day 22 as the PITR base; the other 26 go.
    assert {b.backup_id for b in fulls} - expired == {fulls[i].backup_id for i in (22, 27, 28, 29)}
    assert outcome.expired == len(expired)
    assert not expired & {b.backup_id for b in others}


async def test_two_instances_enforcing_at_once_expire_each_backup_once() -> None:
    """Both decide on the same schedule version before either saves: the aggregate's
    optimistic concurrency refuses the second save, which on the reloaded schedule
    finds the backups expired and records nothing."""

    class BothLoadFirst(SchedulerApplication):
        """Holds each instance's first load in ``expire_backups`` until both have loaded."""

        def __init__(self) -> None:
            super().__init__()
            self.loaded = threading.Barrier(2, timeout=10)
            self.lock = threading.Lock()
            self.waits = 2
            self.expiring = threading.local()

        def expire_backups(self, *args: Any, **kwargs: Any) -> int:
            self.expiring.now = True
            try:
                return super().expire_backups(*args, **kwargs)
            finally:
                self.expiring.now = False

        def get_schedule(self, schedule_id: uuid.UUID) -> Any:
            schedule = super().get_schedule(schedule_id)
            with self.lock:
                wait = getattr(self.expiring, "now", False) and self.waits > 0
                self.waits -= int(wait)
            if wait:
                self.loaded.wait()  # both instances hold the same version now
            return schedule

    app, environment_id = BothLoadFirst(), uuid.uuid4()
    configure(app, environment_id, retain_daily=2)
    backups = daily(7)
    first, second = (RetentionEnforcer(app, ListedBackups(backups)) for _ in range(2))
    now = T0 + timedelta(days=7)
    outcomes = await asyncio.gather(
        first.enforce(environment_id, now), second.enforce(environment_id, now)
    )
    assert sorted(o.expired for o in outcomes) == [0, 5]
    assert sorted(expired_ids(app), key=str) == sorted((b.backup_id for b in backups[:5]), key=str)
    deletions = [e for e in relayed(app) if e.message_type == "backup.DeleteBackup"]
    assert len(deletions) == 5


# -- the preview is what enforcement deletes ---------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"]
COUNT = st.one_of(st.none(), st.integers(0, 4))


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[BackupFacts], dict[str, Any], datetime]:
    start = datetime(2025, 10, 1, tzinfo=UTC)
    # Distinct times: "the newest" and "the PITR base" are then one backup each.
    minutes = draw(st.lists(st.integers(0, 60 * 24 * 120), max_size=40, unique=True))
    backups = [
        backup(
            start + timedelta(minutes=minute),
            type=draw(st.sampled_from(["db", "full"])),
            trigger=draw(st.sampled_from(["scheduled", "scheduled", "scheduled", "manual"])),
            status=draw(st.sampled_from(["completed"] * 5 + ["failed", "deleted"])),
        )
        for minute in minutes
    ]
    fields: dict[str, Any] = {
        name: draw(COUNT)
        for name in (
            "retain_hourly",
            "retain_daily",
            "retain_weekly",
            "retain_monthly",
            "retain_db_daily",
            "retain_full_weekly",
            "retain_daily_days",
            "retain_weekly_days",
        )
    }
    fields["timezone"] = draw(st.sampled_from(ZONES))
    fields["wal_enabled"] = draw(st.booleans())
    if fields["wal_enabled"]:
        fields["wal_retention_days"] = draw(st.integers(1, 35))
    now = start + timedelta(days=draw(st.integers(0, 150)))
    return backups, fields, now


def naive_pitr_base(backups: list[BackupFacts], fields: dict[str, Any], now: datetime) -> set[Any]:
    """interfaces8.md's words: the newest completed full at or before now - walRetentionDays,
    else the oldest completed full; nothing when WAL is off."""
    if not fields["wal_enabled"]:
        return set()
    fulls = sorted(
        (b for b in backups if b.type == "full" and b.status == "completed"),
        key=lambda b: b.created_at,
    )
    edge = now - timedelta(days=fields["wal_retention_days"])
    old_enough = [b for b in fulls if b.created_at <= edge]
    chosen = old_enough[-1:] or fulls[:1]
    return {b.backup_id for b in chosen}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_enforcement_expires_exactly_the_previews_delete_set_and_nothing_protected(
    history: tuple[list[BackupFacts], dict[str, Any], datetime],
) -> None:
    backups, fields, now = history
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, **fields)
    preview = retention_plan(
        [b for b in backups if b.status == "completed"],
        ScheduleSettings(destination_ids=[DESTINATION], **fields),
        now,
    )
    outcome = asyncio.run(
        RetentionEnforcer(app, ListedBackups(backups)).enforce(environment_id, now)
    )
    expired = set(expired_ids(app))
    assert expired == {d.backup.backup_id for d in preview.delete}
    assert outcome.expired == len(expired)
    completed = [b for b in backups if b.status == "completed"]
    assert not expired & {b.backup_id for b in backups if b.trigger == "manual"}
    assert not expired & {b.backup_id for b in backups if b.status != "completed"}
    assert not expired & naive_pitr_base(backups, fields, now)
    for backup_type in ("db", "full"):
        of_type = [b for b in completed if b.type == backup_type]
        if of_type:
            assert max(of_type, key=lambda b: b.created_at).backup_id not in expired


async def test_a_configure_schedule_delivered_to_the_handler_enforces_its_retention_at_once(
    make_harness: Any,
) -> None:
    """svc8's ConfigureSchedule handler with enforcement wired as in main.py: the PUT's
    retention applies without waiting for the next backup; a redelivery expires nothing
    more."""
    harness = make_harness(T0 + timedelta(days=5, hours=1))
    environment_id = uuid.uuid4()
    backups = daily(5)
    enforcer = RetentionEnforcer(harness.app, ListedBackups(backups))
    handlers = make_handlers(
        harness.app,
        harness.ownership,
        lambda: None,
        now=harness.clock.now,
        after_configure=enforcer.enforce,
    )
    command = harness.command(environment_id, dbFrequency="none", retainDaily=2)
    envelope = Envelope.wrap(
        command, producer="test", organization_id=ORG, environment_id=environment_id
    )
    delivery = Delivery(envelope, Tracking("c/schedule.commands:0", next(OFFSETS)), 1)
    await handlers[ConfigureSchedule](command, delivery)
    assert set(expired_ids(harness.app)) == {b.backup_id for b in backups[:3]}
    await handlers[ConfigureSchedule](command, delivery)
    assert len(expired_ids(harness.app)) == 3


async def test_a_decision_overtaken_by_a_put_records_nothing_and_the_put_decides_again() -> None:
    """A PUT that keeps more lands between the decision (on revision 1) and its recording:
    nothing of the stale decision is recorded; the PUT's own enforcement decides anew."""
    app, environment_id = SchedulerApplication(), uuid.uuid4()
    configure(app, environment_id, retain_daily=2)
    backups = daily(5)

    class PutWhileReading(ListedBackups):
        async def completed_backups(self, environment_id: uuid.UUID) -> Sequence[BackupFacts]:
            listed = await super().completed_backups(environment_id)
            configure(app, environment_id, revision=2, retain_daily=4)
            return listed

    now = T0 + timedelta(days=5)
    stale = await RetentionEnforcer(app, PutWhileReading(backups)).enforce(environment_id, now)
    assert len(stale.plan.delete) == 3  # type: ignore[union-attr]  # decided on revision 1
    assert stale.expired == 0
    assert expired_ids(app) == []
    again = await RetentionEnforcer(app, ListedBackups(backups)).enforce(environment_id, now)
    assert again.expired == 1
    assert expired_ids(app) == [backups[0].backup_id]
