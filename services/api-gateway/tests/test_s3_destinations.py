"""An s3 destination's configuration at registration, and its outcome in the read model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from tidemark_api_gateway.projection import next_row
from tidemark_api_gateway.schemas import CreateDestination
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
    DestinationRef,
)

REFS = {"accessKeyRef": "secret:s3-access", "secretKeyRef": "secret:s3-secret"}


def s3(**config: Any) -> dict[str, Any]:
    return {"name": "d", "type": "s3", "config": {"bucket": "tidemark-backups", **REFS, **config}}


def refused(body: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as raised:
        CreateDestination.model_validate(body)
    return raised.value.errors()


def test_a_full_s3_config_is_accepted_as_given() -> None:
    body = s3(prefix="team/nightly", endpointUrl="https://minio.example.com:9000", region="eu-1")
    spec = CreateDestination.model_validate(body).root
    assert spec.config.model_dump(by_alias=True) == {
        "bucket": "tidemark-backups",
        "prefix": "team/nightly",
        "endpointUrl": "https://minio.example.com:9000",
        "region": "eu-1",
        **REFS,
    }
    assert CreateDestination.model_validate(s3(endpointUrl="http://127.0.0.1:9000/s3"))


@pytest.mark.parametrize(
    "bucket",
    [
        "ab",
        "a" * 64,
        "Tidemark",
        "tide_mark",
        "-tidemark",
        "tidemark-",
        "tide..mark",
        "tide.-mark",
        "192.168.1.10",
        "xn--tidemark",
        "tidemark-s3alias",
        "tide mark",
    ],
)
def test_a_bucket_name_breaking_s3s_rules_is_refused_without_repeating_it(bucket: str) -> None:
    [error] = refused(s3(bucket=bucket))
    assert error["loc"][-1] == "bucket"
    assert bucket not in error["msg"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://store.example.com",
        "store.example.com",
        "http://",
        "https://AKIAEXAMPLE:hunter2@store.example.com",
        "https://store.example.com/?x-amz-credential=AKIAEXAMPLE",
        "https://store.example.com/#frag",
        "https://store.example.com:99999",
        "https://store example.com",
    ],
)
def test_an_endpoint_that_is_not_a_plain_http_url_is_refused_without_repeating_it(
    url: str,
) -> None:
    [error] = refused(s3(endpointUrl=url))
    assert error["loc"][-1] == "endpointUrl"
    assert "hunter2" not in error["msg"]
    assert "AKIAEXAMPLE" not in error["msg"]


@pytest.mark.parametrize("region", ["", "US EAST", "eu_1", "x" * 64, "-eu"])
def test_an_odd_region_is_refused(region: str) -> None:
    [error] = refused(s3(region=region))
    assert error["loc"][-1] == "region"


@pytest.mark.parametrize("field", ["accessKeyRef", "secretKeyRef"])
def test_both_key_references_are_required_and_plain_keys_refused(field: str) -> None:
    body = s3()
    del body["config"][field]
    [missing] = refused(body)
    assert (missing["loc"][-1], missing["type"]) == (field, "missing")
    plain = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    [error] = refused(s3(**{field: plain}))
    assert error["loc"][-1] == field
    assert plain not in error["msg"]


def test_a_prefix_with_a_backslash_or_control_character_is_refused() -> None:
    for prefix in ("a\\b", "a\x00b", "a\nb"):
        [error] = refused(s3(prefix=prefix))
        assert error["loc"][-1] == "prefix"


# --- the read model ---------------------------------------------------------------------

ENV, BACKUP, LOCAL, REMOTE = (uuid.uuid4() for _ in range(4))
T0 = datetime(2026, 11, 29, 10, tzinfo=UTC)


def test_a_failed_destination_says_why_and_the_backup_completes_with_the_other() -> None:
    row = next_row(
        None,
        BackupRequested(
            backup_id=BACKUP,
            organization_id=uuid.uuid4(),
            project_id=uuid.uuid4(),
            environment_id=ENV,
            type="db",
            trigger="manual",
            requested_by="u",
            requested_at=T0,
            destinations=[
                DestinationRef(destination_id=LOCAL, name="disk", type="local"),
                DestinationRef(destination_id=REMOTE, name="bucket", type="s3"),
            ],
        ),
    )
    row = next_row(row, BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0))
    row = next_row(
        row,
        BackupUploadFailed(
            backup_id=BACKUP,
            environment_id=ENV,
            destination_id=REMOTE,
            error="put_object failed: AccessDenied (HTTP 403)",
            failed_at=T0,
        ),
    )
    row = next_row(
        row,
        BackupUploaded(
            backup_id=BACKUP,
            environment_id=ENV,
            destination_id=LOCAL,
            location="e/b.db.pgdump.zst",
            size_bytes=5,
            uploaded_at=T0,
        ),
    )
    row = next_row(
        row,
        BackupCompleted(
            backup_id=BACKUP,
            environment_id=ENV,
            size_bytes=5,
            checksum="sha256:" + "a" * 64,
            compression="zstd",
            completed_at=T0,
            duration_ms=1,
        ),
    )
    assert row["status"] == "completed"
    local, remote = row["destinations"]
    assert (local["status"], local["location"]) == ("uploaded", "e/b.db.pgdump.zst")
    assert remote["status"] == "failed"
    assert remote["location"] is None
    assert remote["error"] == "put_object failed: AccessDenied (HTTP 403)"
    # A later attempt starts the destination over.
    again = next_row(
        row, BackupStarted(backup_id=BACKUP, environment_id=ENV, started_at=T0, attempt=2)
    )
    assert [d["status"] for d in again["destinations"]] == ["pending", "pending"]
    assert again["destinations"][1]["error"] is None


def test_a_prefix_with_dot_segments_is_refused_without_repeating_it() -> None:
    # Path-style addressing puts the key in the URL's path: a store or proxy that
    # normalizes it would write '../other-bucket/x' into another bucket.
    for prefix in ("..", "../other-bucket", "a/./b", "team/..", "./x"):
        [error] = refused(s3(prefix=prefix))
        assert error["loc"][-1] == "prefix"
        # The reason, never the refused value.
        assert error["msg"] == "Value error, must not contain '.' or '..' segments"
    for prefix in ("a.b", "..a", "team/.hidden", "v1.2/..x"):
        assert CreateDestination.model_validate(s3(prefix=prefix)).root.config.prefix == prefix
