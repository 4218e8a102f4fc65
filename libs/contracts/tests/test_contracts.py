"""Every message's JSON Schema is pinned, so a contract change is always a visible diff."""

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from tidemark_contracts import BACKUP_COMMANDS, BACKUP_EVENTS, Envelope, all_messages
from tidemark_contracts.backup import BackupCompleted, BackupStarted, RequestBackup
from tidemark_contracts.envelope import event_message_id
from tidemark_contracts.schemas import SCHEMA_DIR, message_schemas, render


@pytest.mark.parametrize("name", sorted(message_schemas()))
def test_message_schema_matches_the_pinned_copy(name: str) -> None:
    pinned = SCHEMA_DIR / f"{name}.json"
    assert pinned.exists(), f"{pinned} missing: run `make schemas` and review the diff"
    assert pinned.read_text() == render(message_schemas()[name]), (
        f"the contract {name} changed: run `make schemas`, review that the change is "
        "compatible (only optional fields added), and commit the new schema"
    )


def test_no_pinned_schema_without_a_message() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == set(message_schemas())


def test_every_message_has_a_type_and_an_explicit_version() -> None:
    types = [m.message_type for m in all_messages()]
    assert len(types) == len(set(types))
    for message in all_messages():
        assert message.model_fields["version"].default >= 1


def test_envelope_round_trips_and_is_keyed_by_environment() -> None:
    env_id, org_id = uuid.uuid4(), uuid.uuid4()
    started = BackupStarted(
        backup_id=uuid.uuid4(),
        environment_id=env_id,
        started_at=datetime(2026, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    envelope = Envelope.wrap(
        started, producer="test", organization_id=org_id, environment_id=env_id
    )
    decoded = Envelope.from_bytes(envelope.to_bytes())
    assert decoded == envelope
    assert decoded.key == str(env_id).encode()
    assert decoded.payload["startedAt"] == "2026-01-02T03:00:00.000000Z"
    assert BACKUP_EVENTS.message_class(decoded.message_type) is BackupStarted
    assert BackupStarted.model_validate(decoded.payload) == started


def test_readers_tolerate_fields_added_by_newer_writers() -> None:
    payload = {
        "backupId": str(uuid.uuid4()),
        "environmentId": str(uuid.uuid4()),
        "startedAt": "2026-01-01T00:00:00Z",
        "someFutureField": 1,
    }
    assert BackupStarted.model_validate(payload).started_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValidationError):
        BackupStarted(
            backup_id=uuid.uuid4(), environment_id=uuid.uuid4(), started_at=datetime(2026, 1, 1)
        )


def test_checksum_must_be_a_sha256_digest() -> None:
    with pytest.raises(ValidationError):
        BackupCompleted(
            backup_id=uuid.uuid4(),
            environment_id=uuid.uuid4(),
            size_bytes=1,
            checksum="md5:abc",
            compression="zstd",
            completed_at=datetime.now(UTC),
            duration_ms=1,
        )


def test_event_message_ids_are_stable_per_aggregate_version() -> None:
    aggregate = uuid.uuid4()
    assert event_message_id(aggregate, 2) == event_message_id(aggregate, 2)
    assert event_message_id(aggregate, 2) != event_message_id(aggregate, 3)


def test_a_backup_command_needs_a_destination() -> None:
    assert BACKUP_COMMANDS.message_class("backup.RequestBackup") is RequestBackup
    with pytest.raises(ValidationError, match="destinations"):
        RequestBackup.model_validate(
            {
                "backupId": str(uuid.uuid4()),
                "organizationId": str(uuid.uuid4()),
                "projectId": str(uuid.uuid4()),
                "environmentId": str(uuid.uuid4()),
                "type": "db",
                "trigger": "manual",
                "requestedBy": "u",
                "requestedAt": "2026-01-01T00:00:00Z",
                "database": {"host": "h", "port": 5432, "dbname": "d", "user": "u"},
                "destinations": [],
            }
        )


def test_the_committed_asyncapi_document_is_current() -> None:
    from tidemark_contracts.asyncapi import DOCUMENT, build, render

    assert DOCUMENT.read_text() == render(), "run `make schemas` and commit asyncapi.json"
    document = build()
    assert set(document["channels"]) == {
        "backup_commands",
        "backup_events",
        "backup_progress",
        "catalog_events",
        "schedule_commands",
        "schedule_events",
        "restore_commands",
        "restore_events",
        "restore_progress",
        "alert_commands",
        "alert_events",
        "service_heartbeats",
    }
    for message in document["components"]["messages"].values():
        model = message["payload"]["allOf"][1]["properties"]["payload"]["$ref"].rsplit("/", 1)[1]
        assert model in document["components"]["schemas"]


def test_the_asyncapi_operations_are_the_services_sends_and_receives() -> None:
    from tidemark_contracts.asyncapi import build
    from tidemark_contracts.services import SERVICES

    document = build()
    described = {(s.name, "send", t.name) for s in SERVICES for t in s.produces} | {
        (s.name, "receive", t.name) for s in SERVICES for t in s.consumes
    }
    documented = set()
    for operation in document["operations"].values():
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        (tag,) = operation["tags"]
        documented.add((tag["name"], operation["action"], channel["address"]))
        # Every message an operation names is one its channel carries.
        for ref in operation["messages"]:
            _, _, channel_id, _, key = ref["$ref"].split("/")
            assert document["channels"][channel_id] is channel
            assert key in channel["messages"]
    assert documented == described
    assert ("backup-runner", "receive", "backup.commands") in documented
    assert ("api-gateway", "send", "backup.commands") in documented


def test_every_topic_has_a_sender_and_every_consumed_topic_is_produced() -> None:
    from tidemark_contracts.services import SERVICES
    from tidemark_contracts.topics import ALL_TOPICS

    produced = {t.name for s in SERVICES for t in s.produces}
    consumed = {t.name for s in SERVICES for t in s.consumes}
    assert produced == {t.name for t in ALL_TOPICS}
    assert consumed <= produced


def test_a_webhook_signature_verifies_and_refuses_a_change_a_replay_and_another_secret() -> None:
    from tidemark_contracts.webhooks import SignatureError, sign, verify_signature

    body = b'{"id": "x"}'
    header = sign("s3cret", body, 1_000_000)
    assert verify_signature("s3cret", header, body, now=1_000_100) == 1_000_000
    # Several v1= values (a secret being rotated): any one that matches is enough.
    assert verify_signature("s3cret", "v1=00," + header, body, now=1_000_000) == 1_000_000
    refused = [
        ("s3cret", header, body + b" ", 1_000_000),  # the body changed
        ("other", header, body, 1_000_000),  # signed with another secret
        ("s3cret", header, body, 1_000_301),  # replayed after the window
        ("s3cret", header.replace("t=1000000", "t=1000001"), body, 1_000_000),  # new t
        ("s3cret", None, body, 1_000_000),
        ("s3cret", "t=1000000", body, 1_000_000),
    ]
    for secret, given, payload, now in refused:
        with pytest.raises(SignatureError):
            verify_signature(secret, given, payload, now=now)
