"""S3 destinations over HTTP, on real Kafka and PostgreSQL and moto's S3 server on loopback:
one artifact streamed to a local and an S3 destination at once, and every way an S3
destination can fail (refusing writes, missing, gone mid-upload) failing only itself,
with nothing of the artifact left in the store."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import psycopg
import pytest
from tidemark_devstack.e2e import Api, send_backup_command
from tidemark_devstack.pytest_plugin import S3Endpoint
from tidemark_devstack.s3 import CuttableProxy

pytestmark = pytest.mark.integration

# ~20 MiB that no compressor shrinks: an artifact of three 8 MiB parts (a multipart upload).
LARGE_ROWS = 20
LARGE_SCHEMA = f"""
CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
INSERT INTO blobs
    SELECT g, decode(string_agg(md5(random()::text || s::text), ''), 'hex')
    FROM generate_series(1, {LARGE_ROWS}) g, generate_series(1, 65536) s GROUP BY g;
"""


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> Any:
    """A boto3 client straight to the S3 server (never through a test's proxy)."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"tidemark-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(s3_endpoint: S3Endpoint) -> Iterator[CuttableProxy]:
    parts = urlsplit(s3_endpoint.url)
    assert parts.hostname is not None
    assert parts.port is not None
    front = CuttableProxy((parts.hostname, parts.port))
    yield front
    front.close()


@pytest.fixture
def large_database(create_database: Callable[..., str]) -> str:
    from tidemark_devstack.e2e import SOURCE_PASSWORD

    url = create_database("big", owner_password=SOURCE_PASSWORD)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LARGE_SCHEMA)
    return url


def s3_destination(
    api: Api, endpoint: S3Endpoint, bucket: str, *, url: str | None = None, prefix: str = "tm"
) -> dict[str, Any]:
    access = api.secret("s3-access", endpoint.access_key)
    secret = api.secret("s3-secret", endpoint.secret_key)
    response = api.post(
        "/api/v1/destinations",
        json={
            "name": f"s3-{uuid.uuid4().hex[:8]}",
            "type": "s3",
            "config": {
                "bucket": bucket,
                "prefix": prefix,
                "endpointUrl": url or endpoint.url,
                "region": endpoint.region,
                "accessKeyRef": access,
                "secretKeyRef": secret,
            },
            "isDefault": False,
        },
    )
    assert response.status_code == 201, response.text
    resource: dict[str, Any] = response.json()
    return resource


def by_id(backup: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    [found] = [d for d in backup["destinations"] if d["destinationId"] == destination["id"]]
    return found


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def pending_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def sha256_of_object(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def test_a_backup_to_local_and_s3_lands_verified_in_both_with_one_checksum(
    api: Api, source_database: str, s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    environment = api.environment(source_database)
    local = api.destination("both", is_default=False)
    remote = s3_destination(api, s3_endpoint, bucket, prefix="/team//nightly/")
    response = api.request_backup(environment["id"], destinationIds=[local["id"], remote["id"]])
    assert response.status_code == 202, response.text
    backup = api.wait_for(response.json()["id"])
    assert backup["status"] == "completed", backup
    in_s3, on_disk = by_id(backup, remote), by_id(backup, local)
    assert in_s3["status"] == on_disk["status"] == "uploaded"
    assert in_s3["location"] == on_disk["location"]
    # The prefix's slashes are normalized; nothing else of the artifact stays in the bucket.
    key = f"team/nightly/{in_s3['location']}"
    assert keys(s3, bucket) == [key]
    assert pending_uploads(s3, bucket) == []
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == backup["sizeBytes"]
    local_file = api.directory(local) / on_disk["location"]
    local_sum = f"sha256:{hashlib.sha256(local_file.read_bytes()).hexdigest()}"
    assert sha256_of_object(s3, bucket, key) == backup["checksum"] == local_sum
    # Deleting it removes both copies (the S3 keys opened for the organization again).
    answer = api.delete(f"/api/v1/backups/{backup['id']}")
    assert answer.status_code == 202, answer.text
    deleted = api.wait_for(backup["id"], statuses=("deleted",), timeout=60)
    assert deleted["error"] is None
    assert [d["status"] for d in deleted["destinations"]] == ["deleted", "deleted"]
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    assert not local_file.exists()


def test_an_s3_endpoint_refusing_writes_fails_only_that_destination(
    api: Api,
    source_database: str,
    s3_endpoint: S3Endpoint,
    s3: Any,
    bucket: str,
    proxy: CuttableProxy,
) -> None:
    proxy.refuse_puts()
    environment = api.environment(source_database)
    local = api.destination("refused", is_default=False)
    remote = s3_destination(api, s3_endpoint, bucket, url=proxy.endpoint)
    response = api.request_backup(environment["id"], destinationIds=[remote["id"], local["id"]])
    assert response.status_code == 202, response.text
    backup = api.wait_for(response.json()["id"])
    assert backup["status"] == "completed", backup
    assert backup["error"] is None
    failed, stored = by_id(backup, remote), by_id(backup, local)
    assert failed["status"] == "failed"
    assert failed["location"] is None
    assert "403" in failed["error"]
    assert stored["status"] == "uploaded"
    stored_bytes = (api.directory(local) / stored["location"]).read_bytes()
    assert f"sha256:{hashlib.sha256(stored_bytes).hexdigest()}" == backup["checksum"]
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    # Neither a credential nor its reference is in what the failure says.
    text = str(backup)
    assert s3_endpoint.secret_key not in text
    assert s3_endpoint.access_key not in text
    assert "secret:s3-" not in text


def test_a_backup_whose_only_destination_is_a_missing_bucket_fails(
    api: Api, source_database: str, s3_endpoint: S3Endpoint, s3: Any
) -> None:
    missing = f"tidemark-missing-{uuid.uuid4().hex[:8]}"
    environment = api.environment(source_database)
    remote = s3_destination(api, s3_endpoint, missing)
    response = api.request_backup(environment["id"], destinationIds=[remote["id"]])
    assert response.status_code == 202, response.text
    backup = api.wait_for(response.json()["id"])
    assert backup["status"] == "failed", backup
    assert "NoSuchBucket" in backup["error"]
    failed = by_id(backup, remote)
    assert failed["status"] == "failed"
    assert "NoSuchBucket" in failed["error"]
    assert backup["checksum"] is None
    assert missing not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


@pytest.mark.parametrize("with_local", [True, False], ids=["with-local", "s3-only"])
def test_an_endpoint_gone_mid_upload_leaves_no_object_and_no_pending_upload(
    api: Api,
    large_database: str,
    s3_endpoint: S3Endpoint,
    s3: Any,
    bucket: str,
    proxy: CuttableProxy,
    with_local: bool,
) -> None:
    # Held once the first 8 MiB part went up and the second is under way.
    proxy.stall_after(9 * 1024 * 1024)
    environment = api.environment(large_database)
    remote = s3_destination(api, s3_endpoint, bucket, url=proxy.endpoint)
    local = api.destination(f"cut-{uuid.uuid4().hex[:6]}", is_default=False)
    ids = [remote["id"], local["id"]] if with_local else [remote["id"]]
    response = api.request_backup(environment["id"], destinationIds=ids)
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]
    assert proxy.stalled.wait(60), "the upload never got under way"
    # The upload is in progress: a multipart upload of this backup's artifact with a part.
    deadline = time.monotonic() + 10
    while not (uploads := s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])):
        assert time.monotonic() < deadline, "no multipart upload was started"
        time.sleep(0.1)
    [upload] = uploads
    assert backup_id in upload["Key"]
    parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    assert len(parts.get("Parts", [])) >= 1
    assert api.get(f"/api/v1/backups/{backup_id}").json()["status"] == "running"

    proxy.cut()
    backup = api.wait_for(backup_id, timeout=120)
    failed = by_id(backup, remote)
    assert failed["status"] == "failed"
    assert failed["error"]
    if with_local:
        assert backup["status"] == "completed", backup
        assert by_id(backup, local)["status"] == "uploaded"
    else:
        assert backup["status"] == "failed", backup
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_a_command_sending_an_s3_destinations_keys_to_another_endpoint_is_refused(
    api: Api, source_database: str, s3_endpoint: S3Endpoint, bucket: str, kafka_bootstrap: str
) -> None:
    """A command in the organization's name, with its registered s3 destination's key
    references but an endpoint of the sender's choosing: the runner's registrations check
    refuses it before any credential is resolved, so the keys never leave."""
    environment = api.environment(source_database)
    remote = s3_destination(api, s3_endpoint, bucket)
    command = api.backup_command(environment, remote)
    with socket.socket() as elsewhere:
        elsewhere.bind(("127.0.0.1", 0))
        elsewhere.listen()
        elsewhere.setblocking(False)
        url = f"http://127.0.0.1:{elsewhere.getsockname()[1]}"
        [registered] = command.destinations
        moved = registered.model_copy(
            update={"config": registered.config.model_copy(update={"endpoint_url": url})}
        )
        command = command.model_copy(update={"destinations": [moved]})
        send_backup_command(kafka_bootstrap, command)
        backup = api.wait_for(str(command.backup_id), missing_ok=True)
        assert backup["status"] == "failed", backup
        assert "registered" in backup["error"]
        assert backup["startedAt"] is None
        with pytest.raises(BlockingIOError):
            elsewhere.accept()  # nobody came
