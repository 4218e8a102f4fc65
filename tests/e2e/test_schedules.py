"""Schedules over HTTP on the real stack (Kafka, PostgreSQL, every service): the PUT's command
on schedule.commands, the gateway's projection of ScheduleConfigured from schedule.events,
the hostile bodies, destinations a schedule holds, the manual backup's default
destinations, the retention preview on real backups, and the cron presets.

The scheduler that consumes ConfigureSchedule is not needed here: the events it would
publish are built from the commands and published as it would (with an aggregate id of
their own, so they never collide with a real scheduler's versions)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from tidemark_contracts import SCHEDULE_COMMANDS, SCHEDULE_EVENTS, Envelope, utc_now
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleConfigured
from tidemark_devstack.e2e import Api, publish, send_backup_command, topic_records

pytestmark = pytest.mark.integration


def path(env: dict[str, Any]) -> str:
    return f"/api/v1/environments/{env['id']}/backups/schedule"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def commands_of(kafka_bootstrap: str, env: dict[str, Any]) -> list[ConfigureSchedule]:
    records = asyncio.run(topic_records(kafka_bootstrap, SCHEDULE_COMMANDS.name))
    envelopes = [Envelope.from_bytes(r.value) for r in records if r.value is not None]
    return [
        ConfigureSchedule.model_validate(e.payload)
        for e in envelopes
        if e.message_type == ConfigureSchedule.message_type and str(e.environment_id) == env["id"]
    ]


def wait_for_commands(kafka_bootstrap: str, env: dict[str, Any], n: int) -> list[ConfigureSchedule]:
    """The environment's commands once the outbox relay has published ``n`` of them."""
    deadline = time.monotonic() + 60
    while len(commands := commands_of(kafka_bootstrap, env)) < n:
        assert time.monotonic() < deadline, f"{len(commands)} of {n} commands published"
        time.sleep(0.5)
    return commands


def publish_configured(kafka_bootstrap: str, event: ScheduleConfigured) -> None:
    """Publish ``event`` on schedule.events as the scheduler's relay would."""
    envelope = Envelope.wrap(
        event,
        producer="scheduler",
        organization_id=event.organization_id,
        environment_id=event.environment_id,
        aggregate_id=uuid.uuid4(),
        aggregate_version=1,
    )
    asyncio.run(publish(kafka_bootstrap, envelope, SCHEDULE_EVENTS.name))


def test_put_and_get_round_trip_with_a_command_per_revision_on_kafka(
    api: Api, source_database: str, kafka_bootstrap: str
) -> None:
    env = api.environment(source_database)
    first, second = api.destination("a", is_default=False), api.destination("b")
    put = api.put(
        path(env),
        json={
            "destinationIds": [first["id"], second["id"]],
            "timezone": "America/New_York",
            "dbFrequency": "custom",
            "dbCron": "15 */4 * * *",
            "retainDaily": 7,
            "retainDbHourly": 24,
        },
    )
    assert put.status_code == 200, put.text
    got = api.get(path(env))
    assert got.status_code == 200, got.text
    assert got.json() == put.json()
    assert got.json()["dbCron"] == "15 */4 * * *"
    assert got.json()["nextDbBackupAt"].endswith("Z")
    assert got.json()["nextFullBackupAt"] is None

    again = api.put(path(env), json={"destinationIds": [second["id"]], "paused": True})
    assert again.status_code == 200, again.text
    assert again.json()["createdAt"] == put.json()["createdAt"]
    assert again.json()["nextDbBackupAt"] is None

    commands = wait_for_commands(kafka_bootstrap, env, 2)
    assert [c.revision for c in commands] == [1, 2]
    assert commands[0].settings.db_cron == "15 */4 * * *"
    assert commands[0].settings.timezone == "America/New_York"
    assert commands[1].settings.paused
    assert commands[1].settings.destination_ids == [uuid.UUID(second["id"])]
    assert {c.organization_id for c in commands} == {api.org_id}


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"keepForever": True}, "keepForever"),
    ({"dbFrequency": "custom", "dbCron": "0 0 31 2 *"}, "dbCron"),
    ({"dbFrequency": "custom", "dbCron": "@hourly"}, "dbCron"),
    ({"timezone": "Europe/Atlantis"}, "timezone"),
    ({"retainWeekly": -1}, "retainWeekly"),
    ({"retainDbDaily": -5}, "retainDbDaily"),
    ({"walEnabled": True, "walRetentionDays": 0}, "walRetentionDays"),
    ({"walEnabled": True, "walRetentionDays": 36}, "walRetentionDays"),
    ({"fullFrequency": "daily"}, "fullFrequency"),
    ({"walEnabled": True}, "walEnabled"),
]


def test_every_hostile_field_is_422_and_changes_nothing(
    api: Api, api_for: Any, source_database: str
) -> None:
    env = api.environment(source_database)  # without a cluster
    destination = api.destination()
    for hostile, field in HOSTILE:
        response = api.put(path(env), json={"destinationIds": [destination["id"]], **hostile})
        body = problem(response, 422)
        assert field in [e["field"] for e in body["errors"]], (hostile, body)
    # A destination of another organization, by its index.
    theirs = api_for().destination()
    response = api.put(path(env), json={"destinationIds": [destination["id"], theirs["id"]]})
    assert [e["field"] for e in problem(response, 422)["errors"]] == ["destinationIds[1]"]
    problem(api.get(path(env)), 404)


def test_a_foreign_environment_has_no_schedule_to_read_or_write(
    api: Api, api_for: Any, source_database: str
) -> None:
    env = api.environment(source_database)
    destination = api.destination()
    assert api.put(path(env), json={"destinationIds": [destination["id"]]}).status_code == 200
    stranger = api_for()
    stranger_destination = stranger.destination()
    problem(stranger.get(path(env)), 404)
    problem(stranger.put(path(env), json={"destinationIds": [stranger_destination["id"]]}), 404)
    problem(stranger.post(f"{path(env)}/retention-preview", json={}), 404)
    assert api.get(path(env)).json()["destinationIds"] == [destination["id"]]


def wait_for_schedule(api: Api, env: dict[str, Any], revision_check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        response = api.get(path(env))
        if response.status_code == 200 and revision_check(response.json()):
            body: dict[str, Any] = response.json()
            return body
        assert time.monotonic() < deadline, response.text
        time.sleep(0.3)


def test_the_gateway_projects_schedule_configured_from_kafka_by_revision(
    api: Api, source_database: str, kafka_bootstrap: str
) -> None:
    env = api.environment(source_database)
    destination = api.destination()
    now = utc_now()
    settings = {"destinationIds": [destination["id"]], "dbCron": "0 2 * * *"}

    def event(revision: int, **changes: Any) -> ScheduleConfigured:
        return ScheduleConfigured.model_validate(
            {
                "scheduleId": str(uuid.uuid4()),
                "organizationId": str(api.org_id),
                "projectId": env["projectId"],
                "environmentId": env["id"],
                "revision": revision,
                "settings": {**settings, **changes},
                "requestedBy": "someone",
                "createdAt": now.isoformat(),
                "updatedAt": (now + timedelta(seconds=revision)).isoformat(),
            }
        )

    # An environment whose schedule the gateway never wrote: the event alone makes it.
    publish_configured(kafka_bootstrap, event(2, retainDaily=5))
    shown = wait_for_schedule(api, env, lambda s: s["retainDaily"] == 5)
    assert shown["dbFrequency"] == "daily"
    # An older revision, published after it, changes nothing; a newer one replaces it.
    publish_configured(kafka_bootstrap, event(1, retainDaily=1))
    publish_configured(kafka_bootstrap, event(3, retainDaily=9))
    shown = wait_for_schedule(api, env, lambda s: s["retainDaily"] != 5)
    assert shown["retainDaily"] == 9
    # A PUT continues from the projected revision.
    assert api.put(path(env), json={"destinationIds": [destination["id"]]}).status_code == 200
    assert [c.revision for c in wait_for_commands(kafka_bootstrap, env, 1)] == [4]


def test_a_destination_in_a_schedule_is_409_to_delete_until_the_schedule_drops_it(
    api: Api, source_database: str
) -> None:
    env = api.environment(source_database)
    kept, used = api.destination("kept"), api.destination("used")
    body = {"destinationIds": [kept["id"], used["id"]]}
    assert api.put(path(env), json=body).status_code == 200
    refused = problem(api.delete(f"/api/v1/destinations/{used['id']}"), 409)
    assert "a schedule of the organization uses it" in refused["detail"]
    assert api.put(path(env), json={"destinationIds": [kept["id"]]}).status_code == 200
    assert api.delete(f"/api/v1/destinations/{used['id']}").status_code == 204
    problem(api.get(f"/api/v1/destinations/{used['id']}"), 404)


def test_a_manual_backup_without_destinations_goes_where_the_schedule_sends_its_own(
    api: Api, source_database: str
) -> None:
    env = api.environment(source_database)
    api.destination("default", is_default=True)
    scheduled = api.destination("scheduled", is_default=False)
    assert api.put(path(env), json={"destinationIds": [scheduled["id"]]}).status_code == 200
    accepted = api.request_backup(env["id"])
    assert accepted.status_code == 202, accepted.text
    backup = api.wait_for(accepted.json()["id"])
    assert backup["status"] == "completed", backup
    assert [d["destinationId"] for d in backup["destinations"]] == [scheduled["id"]]
    assert (api.directory(scheduled) / backup["destinations"][0]["location"]).is_file()


def test_the_retention_preview_on_real_backups(
    api: Api, source_database: str, kafka_bootstrap: str
) -> None:
    env = api.environment(source_database)
    destination = api.destination()
    manual = api.request_backup(env["id"])
    assert manual.status_code == 202, manual.text
    base = api.backup_command(env, destination)
    now = utc_now()
    # Scheduled backups of four consecutive days (as the scheduler requests them: the
    # fire time is the backup's time), around the gateway, then the manual one.
    scheduled = [
        base.model_copy(
            update={
                "backup_id": uuid.uuid4(),
                "trigger": "scheduled",
                "requested_by": "scheduler",
                "requested_at": now - timedelta(days=days, hours=1),
            }
        )
        for days in (4, 3, 2, 1)
    ]
    for command in scheduled:
        send_backup_command(kafka_bootstrap, command)
    done = {str(c.backup_id): api.wait_for(str(c.backup_id), missing_ok=True) for c in scheduled}
    manual_backup = api.wait_for(manual.json()["id"])
    assert {b["status"] for b in [*done.values(), manual_backup]} == {"completed"}

    response = api.post(f"{path(env)}/retention-preview", json={"retainDaily": 2})
    assert response.status_code == 200, response.text
    preview = response.json()
    assert set(preview) == {"keep", "delete", "summary"}
    kept = {k["backupId"]: k for k in preview["keep"]}
    deleted = [d["backupId"] for d in preview["delete"]]
    oldest_two = [str(c.backup_id) for c in scheduled[:2]]
    newest_two = [str(c.backup_id) for c in scheduled[2:]]
    assert deleted == oldest_two[::-1]  # newest first
    assert set(kept) == {*newest_two, manual_backup["id"]}
    assert "manual" in kept[manual_backup["id"]]["reasons"]
    for entry in preview["keep"]:
        assert set(entry) == {"backupId", "createdAt", "type", "reasons"}
        assert entry["reasons"]
    for entry in preview["delete"]:
        assert {"backupId", "createdAt", "type"} <= set(entry)
        assert entry["createdAt"] == done[entry["backupId"]]["createdAt"]
    assert preview["summary"] == {
        "keep": 3,
        "delete": 2,
        "freedBytes": sum(done[b]["sizeBytes"] for b in oldest_two),
    }
    # Nothing set: nothing deleted. The preview deleted nothing either.
    nothing = api.post(f"{path(env)}/retention-preview", json={}).json()
    assert nothing["delete"] == []
    assert nothing["summary"]["keep"] == 5
    assert {api.wait_for(b)["status"] for b in done} == {"completed"}


def test_the_cron_presets_are_not_taken_for_a_backup_id(api: Api) -> None:
    response = api.get("/api/v1/backups/cron-presets")
    assert response.status_code == 200, response.text
    presets = {p["id"]: p for p in response.json()}
    assert {"hourly", "every-6-hours", "every-12-hours", "daily", "weekly", "monthly"} <= set(
        presets
    )
    assert presets["daily"]["frequency"] == "daily"
    assert presets["every-12-hours"]["cron"] == "0 */12 * * *"
