"""PITR in the gateway on a real PostgreSQL: the WAL read model kept from the runner's
WalArchive events (through the backups view, under its positions and version guards), the
full backups' WAL range and timeline, and ``pitr_plan``/coverage read from them."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from psycopg.types.json import Jsonb
from tidemark_api_gateway.pitr import Coverage, pitr_plan, wal_destinations, windows
from tidemark_api_gateway.projection import BackupsView
from tidemark_api_gateway.readmodel import SCHEMA, migrate
from tidemark_contracts import Envelope, Message
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    DestinationRef,
)
from tidemark_contracts.wal import (
    WalArchivingStatusChanged,
    WalGapDetected,
    WalSegmentArchived,
    WalSegmentCopy,
    wal_archive_id,
)
from tidemark_platform.catalog import CatalogView
from tidemark_platform.database import connection_pool
from tidemark_platform.projection import Pool, ProjectionRunner
from tidemark_recovery.coverage import RestorePlan
from tidemark_recovery.wal import segment_name

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEST = uuid.uuid4()
CHECKSUM = "sha256:" + "b" * 64
OFFSETS = itertools.count(1)


@pytest.fixture
async def pool(create_database: Callable[..., str]) -> AsyncIterator[Pool]:
    pool = connection_pool(create_database("pitr"))
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def view(pool: Pool) -> ProjectionRunner:
    backups = ProjectionRunner(pool, SCHEMA, BackupsView())
    async with pool.connection() as conn:
        await migrate(conn, ProjectionRunner(pool, SCHEMA, CatalogView()), backups)
        await register(conn, DEST)
    return backups


async def register(conn: Any, destination: uuid.UUID, org: uuid.UUID | None = None) -> None:
    await conn.execute(
        f"INSERT INTO {SCHEMA}.destinations (id, organization_id, name, type, config, "
        "is_default, created_at) VALUES (%s, %s, %s, 'local', %s, false, now())",
        (destination, org or uuid.uuid4(), f"d-{destination.hex[:8]}", Jsonb({"path": "p"})),
    )


class Env:
    def __init__(self, view: ProjectionRunner) -> None:
        self.view = view
        self.org, self.project, self.id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.wal_version = 0

    async def apply(self, message: Message, aggregate: uuid.UUID, version: int) -> bool:
        envelope = Envelope.wrap(
            message,
            producer="test",
            organization_id=self.org,
            environment_id=self.id,
            aggregate_id=aggregate,
            aggregate_version=version,
        )
        return await self.view.apply_at(envelope, Tracking("backup.events:0", next(OFFSETS)))

    async def full_backup(self, completed_at: datetime, end_segno: int, timeline: int = 1) -> None:
        backup = uuid.uuid4()
        messages: list[Message] = [
            BackupRequested(
                backup_id=backup,
                organization_id=self.org,
                project_id=self.project,
                environment_id=self.id,
                type="full",
                trigger="manual",
                requested_by="someone",
                requested_at=completed_at,
                destinations=[DestinationRef(destination_id=DEST, name="disk", type="local")],
            ),
            BackupStarted(
                backup_id=backup, environment_id=self.id, started_at=completed_at, attempt=1
            ),
            BackupUploaded(
                backup_id=backup,
                environment_id=self.id,
                destination_id=DEST,
                location="x",
                size_bytes=1,
                uploaded_at=completed_at,
            ),
            BackupCompleted(
                backup_id=backup,
                environment_id=self.id,
                size_bytes=1,
                checksum=CHECKSUM,
                compression="zstd",
                completed_at=completed_at,
                duration_ms=1,
                wal_start_lsn=f"0/{end_segno * 0x1000000 + 0x28:X}",
                wal_end_lsn=f"0/{end_segno * 0x1000000 + 0x100:X}",
                wal_timeline=timeline,
            ),
        ]
        for version, message in enumerate(messages, start=1):
            assert await self.apply(message, backup, version)

    async def wal(self, message: Message) -> bool:
        self.wal_version += 1
        return await self.apply(message, wal_archive_id(self.id), self.wal_version)

    async def status(self, status: str) -> None:
        await self.wal(
            WalArchivingStatusChanged(
                environment_id=self.id,
                organization_id=self.org,
                status=status,  # type: ignore[arg-type]
                wal_retention_days=7,
                changed_at=T0,
            )
        )

    async def segment(
        self,
        segno: int,
        last: datetime | None,
        timeline: int = 1,
        *,
        archived_at: datetime = T0,
        destination: uuid.UUID = DEST,
    ) -> None:
        name = segment_name(timeline, segno)
        await self.wal(
            WalSegmentArchived(
                environment_id=self.id,
                timeline=timeline,
                segment=name,
                start_lsn=f"0/{segno * 0x1000000:X}",
                end_lsn=f"0/{(segno + 1) * 0x1000000:X}",
                size_bytes=100,
                checksum=CHECKSUM,
                first_record_at=last,
                last_record_at=last,
                copies=[
                    WalSegmentCopy(destination_id=destination, location=f"{self.id}/wal/{name}.zst")
                ],
                archived_at=archived_at,
            )
        )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def test_a_time_inside_the_window_is_planned_from_the_newest_base_before_it(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    await env.status("active")
    await env.full_backup(at(0), end_segno=3)
    for segno, minute in ((3, 1), (4, 2), (5, 3), (6, 4)):
        await env.segment(segno, at(minute))
    await env.full_backup(at(2.5), end_segno=5)
    async with pool.connection() as conn:
        plan = await pitr_plan(conn, env.id, at(3.5))
        found = await windows(conn, env.id)
    assert isinstance(plan, RestorePlan)
    assert plan.base.completed_at == at(2.5)
    assert plan.segments == (segment_name(1, 5), segment_name(1, 6))
    assert [(w.start, w.end) for w in found] == [(at(0), at(4))]


async def test_a_time_outside_coverage_answers_the_coverage(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    await env.full_backup(at(0), end_segno=3)
    await env.segment(3, at(1))
    await env.segment(4, at(2))
    async with pool.connection() as conn:
        late = await pitr_plan(conn, env.id, at(5))
        early = await pitr_plan(conn, env.id, at(-1))
    assert late == Coverage(at(0), at(2))
    assert early == Coverage(at(0), at(2))


async def test_an_environment_without_a_base_or_segments_has_no_coverage(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    await env.segment(3, at(1))  # WAL, but no full backup
    async with pool.connection() as conn:
        assert await pitr_plan(conn, env.id, at(1)) == Coverage(None, None)
        assert await pitr_plan(conn, uuid.uuid4(), at(1)) == Coverage(None, None)


async def test_a_gap_splits_the_coverage_and_is_kept(pool: Pool, view: ProjectionRunner) -> None:
    env = Env(view)
    await env.full_backup(at(0), end_segno=3)
    await env.segment(3, at(1))
    await env.segment(4, at(2))
    await env.wal(
        WalGapDetected(
            environment_id=env.id,
            after_segment=segment_name(1, 4),
            resumed_at=segment_name(1, 7),
            reason="lost",
            detected_at=at(6),
        )
    )
    await env.segment(7, at(6))
    await env.full_backup(at(6.5), end_segno=7)
    await env.segment(8, at(8))
    async with pool.connection() as conn:
        found = await windows(conn, env.id)
        in_gap = await pitr_plan(conn, env.id, at(4))
        gaps = await (
            await conn.execute(
                f"SELECT reason FROM {SCHEMA}.wal_gaps WHERE environment_id = %s", (env.id,)
            )
        ).fetchall()
    assert [(w.start, w.end) for w in found] == [(at(0), at(2)), (at(6.5), at(8))]
    assert in_gap == Coverage(at(6.5), at(8))
    assert [g["reason"] for g in gaps] == ["lost"]


async def test_a_base_on_another_timeline_does_not_reach_the_segments(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    await env.full_backup(at(0), end_segno=3, timeline=2)
    await env.segment(3, at(1))
    async with pool.connection() as conn:
        assert await windows(conn, env.id) == []
        row = await (
            await conn.execute(
                f"SELECT wal_timeline FROM {SCHEMA}.backups WHERE environment_id = %s", (env.id,)
            )
        ).fetchone()
    assert row == {"wal_timeline": 2}


async def test_the_archives_status_and_last_segment_follow_its_events_once(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    await env.status("active")
    await env.segment(3, at(1))
    await env.status("stalled")
    # The same event again (a relay re-publishing it) changes nothing.
    envelope = Envelope.wrap(
        WalArchivingStatusChanged(
            environment_id=env.id, organization_id=env.org, status="active", changed_at=T0
        ),
        producer="test",
        organization_id=env.org,
        environment_id=env.id,
        aggregate_id=wal_archive_id(env.id),
        aggregate_version=1,
    )
    assert not await view.apply_at(envelope, Tracking("backup.events:0", next(OFFSETS)))
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                f"SELECT status, last_segment, last_archived_at FROM {SCHEMA}.wal_archives "
                "WHERE environment_id = %s",
                (env.id,),
            )
        ).fetchone()
    assert row == {"status": "stalled", "last_segment": segment_name(1, 3), "last_archived_at": T0}


async def test_a_reset_archive_never_spans_two_histories(
    pool: Pool, view: ProjectionRunner
) -> None:
    # History 1: base at 3, segments 3..5. The environment is restored (LSN rewound): the
    # receiver records a reset at minute 10 and archives 4..6 again as history 2, whose
    # base (at 4) completed at minute 11.
    env = Env(view)
    await env.full_backup(at(0), end_segno=3)
    for segno, minute in ((3, 1), (4, 2), (5, 3)):
        await env.segment(segno, at(minute), archived_at=at(minute + 0.1))
    await env.wal(
        WalGapDetected(
            environment_id=env.id,
            after_segment=segment_name(1, 5),
            resumed_at=None,
            reason="the replication slot was gone",
            detected_at=at(10),
        )
    )
    await env.full_backup(at(11), end_segno=4)
    for segno, minute in ((4, 11.5), (5, 12), (6, 13)):
        await env.segment(segno, at(minute), archived_at=at(minute + 0.1))
    async with pool.connection() as conn:
        found = await windows(conn, env.id)
        between = await pitr_plan(conn, env.id, at(8))
        old = await pitr_plan(conn, env.id, at(0.5))
        new = await pitr_plan(conn, env.id, at(12.5))
        row = await (
            await conn.execute(
                f"SELECT last_record_at FROM {SCHEMA}.wal_segments "
                "WHERE environment_id = %s AND segment = %s",
                (env.id, segment_name(1, 5)),
            )
        ).fetchone()
    # The row of a name archived again follows the new history.
    assert row == {"last_record_at": at(12)}
    assert [(w.start, w.end) for w in found] == [(at(0), at(1)), (at(11), at(13))]
    assert between == Coverage(at(11), at(13))
    assert isinstance(old, RestorePlan)
    assert old.segments == (segment_name(1, 3),)
    assert isinstance(new, RestorePlan)
    assert new.base.completed_at == at(11)
    assert new.segments == tuple(segment_name(1, n) for n in (4, 5, 6))


async def test_only_segments_in_a_registered_destination_count(
    pool: Pool, view: ProjectionRunner
) -> None:
    env = Env(view)
    other = uuid.uuid4()
    async with pool.connection() as conn:
        await register(conn, other, env.org)
    removed = uuid.uuid4()  # its copies are out of reach
    await env.full_backup(at(0), end_segno=3)
    await env.segment(3, at(1), destination=other)
    await env.segment(4, at(2))
    await env.segment(5, at(3), destination=removed)
    await env.segment(6, at(4))
    async with pool.connection() as conn:
        found = await windows(conn, env.id)
        plan = await pitr_plan(conn, env.id, at(1.5))
        holders = await wal_destinations(
            conn, env.org, env.id, [segment_name(1, 3), segment_name(1, 4)]
        )
    assert [(w.start, w.end) for w in found] == [(at(0), at(2))]
    assert isinstance(plan, RestorePlan)
    # Only the organization's own registered destinations are named.
    assert [d["id"] for d in holders] == [other]
