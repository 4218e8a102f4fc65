"""The alerts store and the catalog lookups on real PostgreSQL: a subject's index that took
many successes loads from a snapshot and still decides right; a concurrent change of a
subject is refused, not lost; names come only from the event's own organization, and a
registration that lags is waited for a bounded time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from tidemark_alerts.application import SNAPSHOT_EVERY, AlertsApplication, ConcurrentChange
from tidemark_alerts.domain import Place, environment_subject
from tidemark_alerts.places import Places
from tidemark_contracts import Envelope
from tidemark_contracts.backup import BackupCompleted, BackupFailed, DatabaseTarget
from tidemark_contracts.catalog import EnvironmentRegistered
from tidemark_platform.catalog import CatalogView
from tidemark_platform.consumer import NotYet
from tidemark_platform.database import Pool, connection_pool
from tidemark_platform.projection import ProjectionRunner

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
CHECKSUM = "sha256:" + "0" * 64


@pytest.fixture
def database(create_database: Callable[..., str]) -> str:
    return create_database("alerts_store")


@pytest.fixture
def store(database: str) -> Iterator[AlertsApplication]:
    app: AlertsApplication = AlertsApplication.on_postgres(database, "alerts")
    yield app
    app.close()


def completed(env: uuid.UUID, at: datetime) -> BackupCompleted:
    return BackupCompleted(
        backup_id=uuid.uuid4(),
        environment_id=env,
        size_bytes=1,
        checksum=CHECKSUM,
        compression="zstd",
        completed_at=at,
        duration_ms=1,
    )


def failed(env: uuid.UUID, at: datetime) -> BackupFailed:
    return BackupFailed(backup_id=uuid.uuid4(), environment_id=env, error="x", failed_at=at)


def test_a_busy_subject_loads_from_a_snapshot_and_still_decides_right(
    store: AlertsApplication, database: str
) -> None:
    org, env = uuid.uuid4(), uuid.uuid4()
    offsets = iter(range(1, 10_000))
    for minute in range(SNAPSHOT_EVERY * 2 + 3):
        at = T0 + timedelta(minutes=minute)
        store.backup_completed(completed(env, at), org, uuid.uuid4(), Tracking("t", next(offsets)))
    with psycopg.connect(database) as conn:
        count = conn.execute("SELECT count(*) FROM alerts.alerts_snapshots").fetchone()
    assert count is not None
    assert count[0] >= 2
    # A fresh process loads the index from its snapshot: an older failure is still late...
    fresh: AlertsApplication = AlertsApplication.on_postgres(database, "alerts")
    try:
        late = fresh.backup_failed(
            failed(env, T0), org, Place(), uuid.uuid4(), Tracking("t", next(offsets))
        )
        assert late is None
        # ... and a newer one raises the subject's first alert.
        effect = fresh.backup_failed(
            failed(env, T0 + timedelta(days=1)),
            org,
            Place(),
            uuid.uuid4(),
            Tracking("t", next(offsets)),
        )
        assert effect is not None
        assert effect.change == "raised"
        index = fresh.get_subject(org, environment_subject(env, "backup"))
        assert index is not None
        assert index.episode == 1
        assert index.version == SNAPSHOT_EVERY * 2 + 5
    finally:
        fresh.close()


def test_two_instances_changing_one_subject_refuse_the_later_save(
    store: AlertsApplication, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, env = uuid.uuid4(), uuid.uuid4()
    other: AlertsApplication = AlertsApplication.on_postgres(database, "alerts")
    try:
        subject = environment_subject(env, "backup")
        assert store.backup_failed(failed(env, T0), org, Place(), uuid.uuid4(), Tracking("a", 1))
        loaded_meanwhile = other.get_subject(org, subject)
        assert store.backup_failed(
            failed(env, T0 + timedelta(minutes=1)), org, Place(), uuid.uuid4(), Tracking("a", 2)
        )
        # ``other`` decides on the index as it loaded it before that repetition.
        monkeypatch.setattr(other, "get_subject", lambda *_: loaded_meanwhile)
        with pytest.raises(ConcurrentChange):
            other.backup_failed(
                failed(env, T0 + timedelta(minutes=2)),
                org,
                Place(),
                uuid.uuid4(),
                Tracking("b", 1),
            )
        alert = store.get_alert(loaded_meanwhile.open_alert_id)  # type: ignore[union-attr,arg-type]
        assert alert is not None
        assert alert.occurrences == 2
        # The consumer takes it for a wait, never a failure to park (a parked success
        # would leave its alert open for good), and the retry, on the subject as it now
        # is, counts the occurrence.
        assert issubclass(ConcurrentChange, NotYet)
        monkeypatch.undo()
        assert other.backup_failed(
            failed(env, T0 + timedelta(minutes=2)), org, Place(), uuid.uuid4(), Tracking("b", 1)
        )
        alert = store.get_alert(loaded_meanwhile.open_alert_id)  # type: ignore[union-attr,arg-type]
        assert alert is not None
        assert alert.occurrences == 3
    finally:
        other.close()


@pytest.fixture
async def catalog(database: str) -> AsyncIterator[tuple[Pool, ProjectionRunner]]:
    pool = connection_pool(database, min_size=1, max_size=2)
    await pool.open(wait=True, timeout=30)
    view = ProjectionRunner(pool, "alerts", CatalogView())
    async with pool.connection() as conn:
        await view.migrate(conn)
    yield pool, view
    await pool.close()


def registered(org: uuid.UUID, env: uuid.UUID, name: str) -> Envelope:
    message = EnvironmentRegistered(
        environment_id=env,
        organization_id=org,
        project_id=uuid.uuid4(),
        name=name,
        database=DatabaseTarget(host="127.0.0.1", port=5432, dbname="d", user="u"),
        registered_at=T0,
    )
    return Envelope.wrap(message, producer="api-gateway", organization_id=org, environment_id=None)


async def test_names_come_only_from_the_events_organization(
    catalog: tuple[Pool, ProjectionRunner],
) -> None:
    pool, view = catalog
    org, other, env = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await view.apply_now(registered(other, env, "their-name"))
    places = Places(pool, "alerts", wait_seconds=0.3, poll_seconds=0.05)
    assert await places.of(org, env) == Place()
    found = await places.of(other, env)
    assert found.environment_name == "their-name"
    assert found.project_id is not None


async def test_a_lagging_registration_is_waited_for_a_bounded_time(
    catalog: tuple[Pool, ProjectionRunner],
) -> None:
    pool, view = catalog
    org, env, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    places = Places(pool, "alerts", wait_seconds=5.0, poll_seconds=0.05)

    async def register_late() -> None:
        await asyncio.sleep(0.5)
        await view.apply_now(registered(org, env, "shop"))

    task = asyncio.create_task(register_late())
    place = await places.of(org, env)
    await task
    assert place.environment_name == "shop"
    started = time.monotonic()
    short = Places(pool, "alerts", wait_seconds=0.5, poll_seconds=0.05)
    assert await short.of(org, never) == Place()
    assert 0.5 <= time.monotonic() - started < 3.0
