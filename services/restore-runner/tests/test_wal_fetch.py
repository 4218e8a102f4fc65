"""What a point-in-time restore fetches WAL from: every registered destination the gateway
found holding the planned segments (not only the base's), the runner's view following a
segment archived again by a new history, and the bounded wait for that view to hold the
plan's last segment."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import zstandard
from tidemark_contracts import Envelope
from tidemark_contracts.backup import DestinationTarget
from tidemark_contracts.restore import ArtifactCopy, RestoreSource
from tidemark_contracts.wal import WalSegmentArchived, WalSegmentCopy
from tidemark_platform.database import connection_pool
from tidemark_recovery.wal import segment_name
from tidemark_restore_runner.artifacts import segment_fetcher, wait_for_segment, wal_sources
from tidemark_restore_runner.view import BackupEventsView, BackupsReader

ORG = uuid.uuid4()
T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def local(path: str) -> DestinationTarget:
    return DestinationTarget.of(uuid.uuid4(), f"d-{path}", "local", {"path": path})


def source(base: DestinationTarget, wal: list[DestinationTarget]) -> RestoreSource:
    return RestoreSource(
        backup_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        type="full",
        size_bytes=1,
        checksum="sha256:" + "a" * 64,
        compression="zstd",
        copies=[ArtifactCopy(destination=base, location="x.full.tar.zst")],
        wal_destinations=wal,
        wal_until_segment=segment_name(1, 3),
    )


def test_a_segment_stored_only_in_another_registered_destination_is_fetched(
    tmp_path: Path,
) -> None:
    base, other = local("base"), local("wal-only")
    name = segment_name(1, 3)
    wal = b"\x01" * 1024
    stored = zstandard.ZstdCompressor().compress(wal)
    location = f"env/wal/{name}.zst"
    path = tmp_path / "root" / str(ORG) / "wal-only" / location
    path.parent.mkdir(parents=True)
    path.write_bytes(stored)
    segments = {
        name: {
            "checksum": f"sha256:{hashlib.sha256(stored).hexdigest()}",
            "copies": [{"destinationId": str(other.destination_id), "location": location}],
        }
    }
    into = tmp_path / name
    # The base's destinations alone do not reach it.
    only_base = segment_fetcher(
        segments,
        {str(base.destination_id): base},
        ORG,
        local_root=tmp_path / "root",
        credentials=None,
    )
    assert not only_base(name, into)
    fetch = segment_fetcher(
        segments,
        wal_sources(source(base, [other, base])),
        ORG,
        local_root=tmp_path / "root",
        credentials=None,
    )
    assert fetch(name, into)
    assert into.read_bytes() == wal
    assert set(wal_sources(source(base, [other, base]))) == {
        str(base.destination_id),
        str(other.destination_id),
    }


def test_the_fields_are_optional_for_older_commands() -> None:
    dumped = source(local("b"), []).model_dump(mode="json", by_alias=True)
    del dumped["walDestinations"], dumped["walUntilSegment"]
    parsed = RestoreSource.model_validate(dumped)
    assert (parsed.wal_destinations, parsed.wal_until_segment) == ([], None)


async def test_the_wait_ends_once_the_view_holds_the_segment_or_times_out() -> None:
    calls = 0

    async def eventually() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    assert await wait_for_segment(eventually, seconds=5, poll=0.01)
    assert calls == 3

    async def never() -> bool:
        return False

    started = time.monotonic()
    assert not await wait_for_segment(never, seconds=0.2, poll=0.05)
    assert 0.2 <= time.monotonic() - started < 2


@pytest.fixture
def view_schema(database_url: str, schema: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
        conn.execute(BackupEventsView().ddl(f'"{schema}"').encode())
    return f'"{schema}"'


def archived(env: uuid.UUID, checksum: str, at: datetime) -> WalSegmentArchived:
    name = segment_name(1, 3)
    return WalSegmentArchived(
        environment_id=env,
        timeline=1,
        segment=name,
        start_lsn="0/3000000",
        end_lsn="0/4000000",
        size_bytes=10,
        checksum=checksum,
        first_record_at=at,
        last_record_at=at,
        copies=[WalSegmentCopy(destination_id=uuid.uuid4(), location=f"{env}/wal/{name}.zst")],
        archived_at=at,
    )


@pytest.mark.integration
async def test_the_view_follows_a_segment_archived_again_after_a_reset(
    database_url: str, view_schema: str
) -> None:
    env = uuid.uuid4()
    view = BackupEventsView()
    pool = connection_pool(database_url)
    await pool.open()
    try:
        reader = BackupsReader(pool, view_schema)
        assert not await reader.has_segment(env, segment_name(1, 3))
        old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
        for message in (
            archived(env, old, T0),
            archived(env, new, T0 + timedelta(minutes=5)),
            archived(env, old, T0),  # a redelivery of the older one changes nothing
        ):
            envelope = Envelope.wrap(message, producer="t", organization_id=ORG, environment_id=env)
            async with pool.connection() as conn:
                await view.apply(conn, view_schema, envelope, message)
        rows = await reader.segments(env)
        assert [r["checksum"] for r in rows] == [new]
        assert await reader.has_segment(env, segment_name(1, 3))
    finally:
        await pool.close()
