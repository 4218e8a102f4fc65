"""`tidemark events republish`: options, reading the stores (real PostgreSQL) and publishing
(real Kafka). The whole path against the running services is tests/e2e/test_cli_republish.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication
from tidemark_api_gateway.domain import NameClaim, Project
from tidemark_cli import republish
from tidemark_cli.errors import CliError
from tidemark_cli.republish import FromPosition, FromTime, Outcome, Outgoing, StoreCount
from tidemark_cli.sources import SOURCES
from tidemark_contracts import Envelope, Topic
from tidemark_contracts.services import service
from tidemark_contracts.topics import ALERT_EVENTS, BACKUP_EVENTS, CATALOG_EVENTS
from tidemark_devstack.e2e import topic_records
from tidemark_platform.kafka import ensure_topics

# -- options (no I/O) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
        ("2026-11-30T10:00:00Z", datetime(2026, 11, 30, 10, tzinfo=UTC)),
        ("2026-11-30T10:00:00.250Z", datetime(2026, 11, 30, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-11-30T11:30:00+01:30", datetime(2026, 11, 30, 10, tzinfo=UTC)),
        ("2026-11-30T10:00:00", datetime(2026, 11, 30, 10, tzinfo=UTC)),
    ],
)
def test_times_are_read_as_utc(text: str, expected: datetime) -> None:
    parsed = republish.parse_time(text, "--from")
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2026-11-30T25:00Z", "s3cr3t-Value"])
def test_a_bad_time_is_refused_without_repeating_it(text: str) -> None:
    with pytest.raises(CliError) as refused:
        republish.parse_time(text, "--until")
    assert refused.value.message.startswith("--until: not a UTC date or time")
    assert text not in refused.value.message
    assert refused.value.code == 1


def test_from_reads_a_time_or_a_store_position() -> None:
    assert republish.parse_from("2026-11-30", BACKUP_EVENTS) == FromTime(
        datetime(2026, 11, 30, tzinfo=UTC)
    )
    assert republish.parse_from("backup_runner:1234", BACKUP_EVENTS) == FromPosition(
        "backup_runner", 1234
    )
    assert republish.parse_from("alert_webhooks:7", ALERT_EVENTS) == FromPosition(
        "alert_webhooks", 7
    )


def test_a_position_of_a_store_that_does_not_publish_to_the_topic_is_refused() -> None:
    with pytest.raises(CliError) as refused:
        republish.parse_from("scheduler_store:3", BACKUP_EVENTS)
    assert refused.value.message == (
        "--from: the store scheduler_store does not publish to backup.events "
        "(its stores: backup_runner)"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hunter2_pw:12", "--from: not an event store of Tidemark"),
        ("backup_runner:1x2", "--from: a position is STORE:POSITION"),
        ("restore_runner:", "--from: a position is STORE:POSITION"),
        ("backup_runner:0", "--from: positions start at 1"),
        ("password=hunter2", "--from: not a UTC date or time"),
    ],
)
def test_a_bad_from_is_refused_without_repeating_it(text: str, says: str) -> None:
    with pytest.raises(CliError) as refused:
        republish.parse_from(text, BACKUP_EVENTS)
    assert refused.value.message.startswith(says)
    assert "hunter2" not in refused.value.message
    assert text not in refused.value.message


@pytest.mark.parametrize(
    "name", ["backup.commands", "backup.progress", "nope", "backup.events.dlq"]
)
def test_only_event_topics_can_be_republished(name: str) -> None:
    with pytest.raises(CliError) as refused:
        republish.topic_named(name)
    assert refused.value.message.startswith("--topic: not an event topic of Tidemark; one of: ")
    assert name not in refused.value.message.split("one of: ")[0]


def test_every_store_is_declared_with_topics_its_service_produces() -> None:
    assert set(republish.PUBLISHES) == {s.store for s in SOURCES}
    for source in SOURCES:
        produced = service(source.service).produces
        for topic in republish.PUBLISHES[source.store]:
            assert topic in produced, (source.store, topic.name)
            assert topic.name.endswith(".events")
    assert [s.store for s in republish.stores_of(ALERT_EVENTS)] == ["alerts", "alert_webhooks"]
    assert [s.store for s in republish.stores_of(CATALOG_EVENTS)] == [CATALOG_SCHEMA]


def outgoing(store_index: int, position: int, at: datetime) -> Outgoing:
    return Outgoing(at, store_index, f"s{store_index}", position, b"k", b"v", (), "m")


def test_stores_are_merged_by_time_and_each_keeps_its_own_order() -> None:
    t0 = datetime(2026, 11, 30, tzinfo=UTC)
    first = [outgoing(0, 1, t0), outgoing(0, 2, t0 + timedelta(seconds=5))]
    # A store whose log is not in time order (two writers committed out of order) stays
    # in its own order: the order its relay published it in.
    second = [outgoing(1, 1, t0 + timedelta(seconds=2)), outgoing(1, 2, t0 + timedelta(seconds=1))]
    same_time = [outgoing(2, 9, t0)]
    order = [
        (o.store_index, o.position)
        for o in republish.merged([iter(first), iter(second), iter(same_time)])
    ]
    assert order == [(0, 1), (2, 9), (1, 1), (1, 2), (0, 2)]


def test_the_json_outcome_counts_per_store() -> None:
    outcome = Outcome("backup.events", False, {"backup_runner": StoreCount()})
    outcome.stores["backup_runner"].add(4)
    outcome.stores["backup_runner"].add(9)
    assert outcome.as_json() == {
        "topic": "backup.events",
        "dryRun": False,
        "published": 2,
        "wouldPublish": None,
        "stores": {"backup_runner": {"count": 2, "firstPosition": 4, "lastPosition": 9}},
    }


# -- the command line -------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    settings = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "TIDEMARK_API_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "tidemark_cli", *args],
        env={**settings, "TIDEMARK_STATE_DIR": "/nonexistent-tidemark-state", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tidemark: ")
    return lines[0]


def test_a_missing_option_is_a_usage_error() -> None:
    result = cli("events", "republish", "--topic", "backup.events")
    assert result.returncode == 2
    assert "Missing option '--from'" in result.stderr


def test_an_unknown_topic_is_one_line_and_exit_1() -> None:
    line = one_line_error(
        cli("events", "republish", "--topic", "secret.stuff", "--from", "2026-11-30")
    )
    assert "secret.stuff" not in line


def test_until_before_from_is_refused() -> None:
    line = one_line_error(
        cli(
            "events",
            "republish",
            "--topic",
            "backup.events",
            "--from",
            "2026-11-30",
            "--until",
            "2026-11-29",
        )
    )
    assert line == "tidemark: --until must be after --from"


def test_without_a_database_it_says_so_and_names_no_url() -> None:
    line = one_line_error(
        cli("events", "republish", "--topic", "backup.events", "--from", "2026-11-30")
    )
    assert line.startswith("tidemark: no database: DATABASE_URL is not set")


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    url = "postgresql://tidemark:pw-hunter2@127.0.0.1:1/postgres"
    line = one_line_error(
        cli(
            "events",
            "republish",
            "--topic",
            "backup.events",
            "--from",
            "2026-11-30",
            "--dry-run",
            env={"DATABASE_URL": url},
        )
    )
    assert line.startswith("tidemark: database: ")
    assert "hunter2" not in line


# -- real PostgreSQL and Kafka ------------------------------------------------------------


@pytest.fixture
def catalog_url(create_database: Callable[..., str]) -> str:
    return create_database("republish")


def register_projects(url: str, count: int) -> list[uuid.UUID]:
    """``count`` projects in the catalog store, each followed by a name claim (an event its
    relay does not publish); returns their ids in store order."""
    catalog = CatalogApplication.on_postgres(url, CATALOG_SCHEMA)
    try:
        ids = []
        for number in range(count):
            project_id = uuid.uuid4()
            organization_id = uuid.uuid4()
            project = Project(
                project_id=project_id,
                organization_id=organization_id,
                name=f"p{number}",
                registered_at=datetime.now(UTC),
            )
            claim = NameClaim(owner_id=project_id, claim_id=uuid.uuid4())
            catalog.save(project, claim)
            ids.append(project_id)
            time.sleep(0.01)
        return ids
    finally:
        catalog.close()


def positions_and_times(url: str) -> list[tuple[int, datetime, uuid.UUID]]:
    catalog = CatalogApplication.on_postgres(url, CATALOG_SCHEMA)
    try:
        rows = []
        for n in catalog.recorder.select_notifications(start=1, limit=1000):
            event = catalog.mapper.to_domain_event(n)
            rows.append((n.id, event.timestamp, event.originator_id))
        return rows
    finally:
        catalog.close()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_dry_run_counts_the_events_of_the_topic_from_a_time_and_until_a_time(
    catalog_url: str,
) -> None:
    ids = register_projects(catalog_url, 5)
    stored = positions_and_times(catalog_url)
    projects = [row for row in stored if row[2] in ids]
    assert len(projects) == 5
    assert len(stored) == 10  # and five claims between them
    since, until = projects[1][1], projects[4][1]

    outcome = republish.run(catalog_url, None, CATALOG_EVENTS, FromTime(since), until, dry_run=True)
    assert outcome.stores[CATALOG_SCHEMA].count == 3  # projects 1, 2, 3: from inclusive
    assert outcome.stores[CATALOG_SCHEMA].first_position == projects[1][0]
    assert outcome.stores[CATALOG_SCHEMA].last_position == projects[3][0]

    result = cli(
        "events",
        "republish",
        "--topic",
        "catalog.events",
        "--from",
        "2026-01-01",
        "--dry-run",
        "--json",
        env={"DATABASE_URL": catalog_url},
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["dryRun"] is True
    assert (body["published"], body["wouldPublish"]) == (0, 5)
    assert body["stores"] == {
        CATALOG_SCHEMA: {
            "count": 5,
            "firstPosition": projects[0][0],
            "lastPosition": projects[4][0],
        }
    }


@pytest.mark.integration
def test_a_dry_run_from_a_position_reads_that_store_from_there(catalog_url: str) -> None:
    ids = register_projects(catalog_url, 4)
    projects = [row for row in positions_and_times(catalog_url) if row[2] in ids]
    result = cli(
        "events",
        "republish",
        "--topic",
        "catalog.events",
        "--from",
        f"{CATALOG_SCHEMA}:{projects[2][0]}",
        "--dry-run",
        "--json",
        env={"DATABASE_URL": catalog_url},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stores"][CATALOG_SCHEMA] == {
        "count": 2,
        "firstPosition": projects[2][0],
        "lastPosition": projects[3][0],
    }


@pytest.mark.integration
def test_a_position_beyond_the_store_is_refused(catalog_url: str) -> None:
    register_projects(catalog_url, 1)
    line = one_line_error(
        cli(
            "events",
            "republish",
            "--topic",
            "catalog.events",
            "--from",
            f"{CATALOG_SCHEMA}:3",
            "--dry-run",
            env={"DATABASE_URL": catalog_url},
        )
    )
    assert line == f"tidemark: --from: {CATALOG_SCHEMA} has no event at position 3 (its last is 2)"


@pytest.mark.integration
def test_a_human_dry_run_prints_a_table(catalog_url: str) -> None:
    register_projects(catalog_url, 2)
    result = cli(
        "events",
        "republish",
        "--topic",
        "catalog.events",
        "--from",
        "2026-01-01",
        "--dry-run",
        env={"DATABASE_URL": catalog_url},
    )
    assert result.returncode == 0, result.stderr
    assert "catalog.events: would publish 2 event(s)" in result.stdout
    assert CATALOG_SCHEMA in result.stdout


@pytest.mark.integration
async def test_published_records_are_the_relays_own_key_value_and_headers(
    catalog_url: str, kafka_bootstrap: str
) -> None:
    ids = register_projects(catalog_url, 3)
    # A topic of this test's own: catalog.events is followed by other tests' services.
    copy = Topic(f"test.republish.{uuid.uuid4().hex[:8]}", "republish test", (), partitions=3)
    await ensure_topics(kafka_bootstrap, [copy], dead_letters=False)
    catalog = CatalogApplication.on_postgres(catalog_url, CATALOG_SCHEMA)
    try:
        events = list(republish.read_store(catalog, CATALOG_SCHEMA, 0, CATALOG_EVENTS))
        expected = {}
        for n in catalog.recorder.select_notifications(start=1, limit=100):
            mapped = catalog.to_envelope(catalog.mapper.to_domain_event(n))
            if mapped is not None:
                expected[n.id] = mapped[1]
    finally:
        catalog.close()
    assert [e.position for e in events] == sorted(expected)
    outcome = Outcome(copy.name, False, {CATALOG_SCHEMA: StoreCount()})
    await republish.publish_all(kafka_bootstrap, copy.name, iter(events), outcome)
    assert outcome.total == 3

    records = await topic_records(kafka_bootstrap, copy.name)
    assert len(records) == 3
    by_id = {Envelope.from_bytes(r.value).aggregate_id: r for r in records}
    assert set(by_id) == set(ids)
    for envelope in expected.values():
        record = by_id[envelope.aggregate_id]
        assert record.key == envelope.key
        assert record.value == envelope.to_bytes()
        assert list(record.headers) == [("message-type", envelope.message_type.encode())]


@pytest.mark.integration
async def test_a_topic_missing_on_kafka_is_refused_before_anything_is_sent(
    kafka_bootstrap: str,
) -> None:
    missing = f"test.republish.missing.{uuid.uuid4().hex[:8]}"
    sent: list[Any] = []

    def never() -> Iterator[Outgoing]:
        sent.append("read")
        yield from ()

    with pytest.raises(CliError) as refused:
        await republish.publish_all(kafka_bootstrap, missing, never(), Outcome(missing, False))
    assert refused.value.message.startswith(f"Kafka has no topic {missing}")
    assert sent == []


@pytest.mark.integration
def test_an_unreachable_kafka_is_one_line(catalog_url: str) -> None:
    register_projects(catalog_url, 1)
    line = one_line_error(
        cli(
            "events",
            "republish",
            "--topic",
            "catalog.events",
            "--from",
            "2026-01-01",
            env={"DATABASE_URL": catalog_url, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        )
    )
    assert line.startswith("tidemark: Kafka: ")
