"""Every failure ends, seen from outside: over Kafka and the gateway's HTTP API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from tidemark_contracts import Envelope
from tidemark_devstack.e2e import Api, dead_letters_counted, publish
from tidemark_devstack.stack import RunningService, Stack

pytestmark = pytest.mark.integration

RUNNER = "backup-runner"


def test_a_backup_command_that_fails_validation_ends_failed_with_the_reason(
    api: Api, stack: Stack, source_database: str, kafka_bootstrap: str
) -> None:
    runner = stack.service(RUNNER)
    parked_before = dead_letters_counted(
        httpx.get(f"{runner.url}/metrics", timeout=5).text, "invalid_payload"
    )
    environment = api.environment(source_database)
    destination = api.destination()
    command = api.backup_command(environment, destination)
    valid = Envelope.wrap(
        command,
        producer="e2e",
        organization_id=api.org_id,
        environment_id=command.environment_id,
        aggregate_id=command.backup_id,
    )
    # The ids decode, the body does not: a port that is no number (and a value that must
    # never be repeated anywhere).
    payload = {
        **valid.payload,
        "database": {**valid.payload["database"], "port": "s3cr3t-e2e-port"},
    }
    invalid = valid.model_copy(update={"payload": payload})
    asyncio.run(publish(kafka_bootstrap, invalid))

    backup = api.wait_for(str(command.backup_id), missing_ok=True, timeout=60)
    assert backup["status"] == "failed", backup
    assert backup["error"].startswith("the backup request is invalid: "), backup["error"]
    assert "database.port" in backup["error"]
    assert "s3cr3t" not in backup["error"]
    assert backup["organizationId"] == str(api.org_id)
    assert backup["environmentId"] == environment["id"]
    assert [d["destinationId"] for d in backup["destinations"]] == [destination["id"]]
    assert backup["startedAt"] is None
    # Ended, not parked: the runner parked nothing for it.
    assert (
        dead_letters_counted(httpx.get(f"{runner.url}/metrics", timeout=5).text, "invalid_payload")
        == parked_before
    )
    # And the environment's next backup is not held up by it.
    after = api.request_backup(environment["id"]).json()["id"]
    assert api.wait_for(after, timeout=90)["status"] == "completed"


@pytest.fixture
def runner_with(stack: Stack) -> Iterator[Callable[..., RunningService]]:
    """Restart the session's runner with extra settings; the usual one again afterwards."""
    saved = dict(stack.extra_env)

    def restart(**settings: str) -> RunningService:
        stack.stop(only=RUNNER)
        stack.extra_env.update(settings)
        stack.start(only=RUNNER, instance=0)
        stack.wait_ready(timeout=120)
        return stack.service(RUNNER)

    yield restart
    stack.stop(only=RUNNER)
    stack.extra_env.clear()
    stack.extra_env.update(saved)
    stack.start(only=RUNNER, instance=0)
    stack.wait_ready(timeout=120)


CONCURRENT = 20


def test_twenty_concurrent_long_dumps_leave_health_answering_within_100_ms(
    api: Api,
    runner_with: Callable[..., RunningService],
    source_database: str,
    database_url: str,
) -> None:
    runner = runner_with(
        TIDEMARK_BACKUP_RUNNER_MAX_CONCURRENT_BACKUPS=str(CONCURRENT), PYTHONFAULTHANDLER="1"
    )
    environment = api.environment(source_database)
    api.destination()
    dbname = psycopg.conninfo.conninfo_to_dict(source_database)["dbname"]
    # pg_dump must wait for this lock: every dump is held, connected, for as long as needed.
    blocker = psycopg.connect(source_database)
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        backup_ids = [api.request_backup(environment["id"]).json()["id"] for _ in range(CONCURRENT)]
        # All twenty really run at once: each has its pg_dump session waiting on the lock.
        deadline = time.monotonic() + 120
        while True:
            with psycopg.connect(database_url) as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name LIKE 'tidemark-backup %%' AND wait_event_type = 'Lock'",
                    (dbname,),
                ).fetchone()
            assert waiting is not None
            if waiting[0] == CONCURRENT:
                break
            assert time.monotonic() < deadline, f"only {waiting[0]} dumps ever ran at once"
            time.sleep(0.2)
        for backup_id in backup_ids:
            assert api.wait_for(backup_id, statuses=("running",), timeout=30)["status"] == "running"
        timings = []
        with httpx.Client(base_url=runner.url, timeout=5) as client:
            client.get("/health")  # the connection is opened outside the measurement
            for _ in range(10):
                started = time.perf_counter()
                response = client.get("/health")
                timings.append(time.perf_counter() - started)
                assert response.status_code == 200
                time.sleep(0.1)
            # The work table and the event store still answer too (the default executor).
            ready = client.get("/ready")
        assert max(timings) < 0.1, [round(t * 1000, 1) for t in timings]
        assert ready.status_code == 200, ready.text
    finally:
        blocker.rollback()
        blocker.close()
    for backup_id in backup_ids:
        assert api.wait_for(backup_id, timeout=180)["status"] == "completed"
