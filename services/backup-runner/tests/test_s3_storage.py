"""The S3 writer against a real S3 HTTP server on loopback (moto's, or the one named by
TIDEMARK_TEST_S3_ENDPOINT): what it leaves in the bucket after each way a write ends."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from tidemark_backup_runner.storage import writer_for
from tidemark_backup_runner.storage.s3 import (
    MIN_PART_SIZE,
    S3ArtifactWriter,
    StorageFailed,
    part_size_at,
)
from tidemark_contracts.backup import DestinationTarget, S3DestinationConfig
from tidemark_devstack.pytest_plugin import S3Endpoint
from tidemark_devstack.s3 import CuttableProxy

KEY = "env-1/backup-1.db.pgdump.zst"


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"unit-{uuid.uuid4().hex[:12]}"
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


def make_writer(
    endpoint: S3Endpoint,
    bucket: str,
    *,
    url: str | None = None,
    tag: str = "attempt-1",
    prefix: str = "base",
) -> S3ArtifactWriter:
    config = S3DestinationConfig(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=url or endpoint.url,
        region=endpoint.region,
        access_key_ref="secret:ak",
        secret_key_ref="secret:sk",
    )
    values = {"secret:ak": endpoint.access_key, "secret:sk": endpoint.secret_key}
    return S3ArtifactWriter(
        config, KEY, tag, values.get, label="destination 'unit'", part_size=MIN_PART_SIZE
    )


def manifest_of(data: bytes) -> dict[str, Any]:
    return {"sizeBytes": len(data), "checksum": f"sha256:{hashlib.sha256(data).hexdigest()}"}


def stream(writer: S3ArtifactWriter, data: bytes) -> None:
    writer.open()
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start : start + (1 << 20)])


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def pending(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_a_small_artifact_is_put_once_verified_and_published_at_the_prefixed_key(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = b"a small dump" * 100
    writer = make_writer(s3_endpoint, bucket, prefix="/team//nightly/")
    stream(writer, data)
    assert keys(s3, bucket) == []  # nothing visible, nothing uploaded before seal
    writer.seal(manifest_of(data))
    assert writer.commit() == KEY
    writer.forget_proofs()
    assert keys(s3, bucket) == [f"team/nightly/{KEY}"]
    assert s3.get_object(Bucket=bucket, Key=f"team/nightly/{KEY}")["Body"].read() == data


def test_a_large_artifact_goes_up_in_parts_and_only_the_final_key_stays(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    writer = make_writer(s3_endpoint, bucket)
    stream(writer, data)
    assert pending(s3, bucket) == ["base/env-1/.backup-1.db.pgdump.zst.attempt-1.partial"]
    writer.seal(manifest_of(data))
    assert pending(s3, bucket) == []
    writer.commit()
    writer.forget_proofs()
    assert keys(s3, bucket) == [f"base/{KEY}"]
    body = s3.get_object(Bucket=bucket, Key=f"base/{KEY}")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_abort_mid_upload_leaves_no_pending_upload_and_no_object(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    writer = make_writer(s3_endpoint, bucket)
    stream(writer, os.urandom(MIN_PART_SIZE + 1))
    assert len(pending(s3, bucket)) == 1
    writer.abort()
    writer.abort()  # safe again
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == []


def test_abort_is_retried_while_the_endpoint_is_away_for_a_moment(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str, proxy: CuttableProxy
) -> None:
    writer = make_writer(s3_endpoint, bucket, url=proxy.endpoint)
    stream(writer, os.urandom(MIN_PART_SIZE + 1))
    assert len(pending(s3, bucket)) == 1
    # More refusals than the client's own retries of one call: abort tries again itself.
    proxy.refuse_connections(4)
    writer.abort()
    assert proxy.refused == 4
    assert pending(s3, bucket) == []


def test_with_the_endpoint_gone_abort_stays_safe_and_discard_says_it_failed(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str, proxy: CuttableProxy
) -> None:
    writer = make_writer(s3_endpoint, bucket, url=proxy.endpoint)
    stream(writer, os.urandom(MIN_PART_SIZE + 1))
    proxy.close()
    writer.abort()  # does not raise: what it could not remove is discard's
    with pytest.raises(StorageFailed) as failed:
        writer.discard()
    message = str(failed.value)
    assert message.startswith("destination 'unit': ")
    for leaked in (s3_endpoint.access_key, s3_endpoint.secret_key, "secret:ak", "secret:sk"):
        assert leaked not in message
    # Once the store answers again, a discard (the deletion's) removes what is pending.
    make_writer(s3_endpoint, bucket, tag="cleanup").discard()
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == []


def test_a_sealed_copy_outlives_abort_and_a_later_attempt_adopts_it(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = os.urandom(50_000)
    first = make_writer(s3_endpoint, bucket, tag="attempt-1")
    stream(first, data)
    first.seal({**manifest_of(data), "attempt": 1})
    first.abort()
    later = make_writer(s3_endpoint, bucket, tag="attempt-2")
    copy = later.sealed()
    assert copy is not None
    assert (copy.size_bytes, copy.checksum) == (len(data), manifest_of(data)["checksum"])
    assert later.adopt(copy) == KEY
    later.forget_proofs()
    assert keys(s3, bucket) == [f"base/{KEY}"]
    # Already in place (adopted, its proof gone): nothing sealed is left to adopt.
    assert later.sealed() is None


def test_an_old_owner_committing_late_leaves_the_new_owners_adoption_intact(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    """A runner that lost the backup may still finish its commit on a thread (a blocking
    call outlives the cancelled task) while the new owner adopts the same sealed copy: the
    commit must not remove the copy's source, and only the recorded outcome's
    ``forget_proofs`` removes the temporary objects."""
    data = os.urandom(50_000)
    old = make_writer(s3_endpoint, bucket, tag="attempt-1")
    stream(old, data)
    old.seal({**manifest_of(data), "attempt": 1})
    new = make_writer(s3_endpoint, bucket, tag="attempt-2")
    copy = new.sealed()
    assert copy is not None
    assert old.commit() == KEY  # the late commit of the runner that lost the lease
    assert new.adopt(copy) == KEY  # still finds its source
    assert f"base/{KEY}" in keys(s3, bucket)
    new.forget_proofs()
    assert keys(s3, bucket) == [f"base/{KEY}"]
    body = s3.get_object(Bucket=bucket, Key=f"base/{KEY}")["Body"].read()
    assert body == data


def test_a_sealed_copy_whose_bytes_changed_is_not_adopted(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = os.urandom(50_000)
    first = make_writer(s3_endpoint, bucket)
    stream(first, data)
    first.seal(manifest_of(data))
    partial = "base/env-1/.backup-1.db.pgdump.zst.attempt-1.partial"
    s3.put_object(Bucket=bucket, Key=partial, Body=data[:-1] + b"\x00")
    assert make_writer(s3_endpoint, bucket, tag="attempt-2").sealed() is None


def test_seal_refuses_a_manifest_of_other_bytes_and_abort_removes_the_object(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = b"what was written"
    writer = make_writer(s3_endpoint, bucket)
    stream(writer, data)
    with pytest.raises(StorageFailed, match="manifest is not of what this writer stored"):
        writer.seal(manifest_of(b"something else"))
    writer.abort()
    assert keys(s3, bucket) == []


def test_discard_removes_every_attempt_and_pending_upload_and_tolerates_gone(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = os.urandom(20_000)
    done = make_writer(s3_endpoint, bucket, tag="attempt-1")
    stream(done, data)
    done.seal(manifest_of(data))
    done.commit()
    sealed = make_writer(s3_endpoint, bucket, tag="attempt-2")
    stream(sealed, data)
    sealed.seal(manifest_of(data))
    cut_off = make_writer(s3_endpoint, bucket, tag="attempt-3")
    stream(cut_off, os.urandom(MIN_PART_SIZE + 1))  # a runner that died mid-upload
    other = "base/env-1/backup-2.db.pgdump.zst"
    s3.put_object(Bucket=bucket, Key=other, Body=b"another backup's")
    # The final object, two manifests, two sealed partial copies (a commit leaves its
    # source to forget_proofs), and another backup.
    assert len(keys(s3, bucket)) == 6
    assert len(pending(s3, bucket)) == 1

    deleter = make_writer(s3_endpoint, bucket, tag="deletion")
    deleter.discard()
    assert keys(s3, bucket) == [other]
    assert pending(s3, bucket) == []
    deleter.discard()  # already gone
    missing = make_writer(s3_endpoint, f"unit-missing-{uuid.uuid4().hex[:8]}", tag="x")
    missing.discard()  # the whole bucket gone


def test_without_both_credentials_nothing_is_written_and_the_runners_own_are_not_used(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's own AWS credentials (which moto would accept) must never stand in.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_key)
    destination = DestinationTarget.of(
        uuid.uuid4(),
        "no-keys",
        "s3",
        {"bucket": bucket, "endpointUrl": s3_endpoint.url, "accessKeyRef": None},
    )
    writer = writer_for(destination, uuid.uuid4(), KEY, "t", credentials=lambda ref: None)
    with pytest.raises(StorageFailed, match=r"accessKeyRef and config\.secretKeyRef must both"):
        writer.open()
    unresolvable = writer_for(destination, uuid.uuid4(), KEY, "t")
    with pytest.raises(StorageFailed, match="resolves no credentials"):
        unresolvable.open()
    assert keys(s3, bucket) == []


def test_the_manifest_beside_a_sealed_copy_is_what_was_sealed(
    s3_endpoint: S3Endpoint, s3: Any, bucket: str
) -> None:
    data = b"x" * 1000
    writer = make_writer(s3_endpoint, bucket)
    stream(writer, data)
    manifest = {**manifest_of(data), "backupId": "b", "attempt": 1}
    writer.seal(manifest)
    key = "base/env-1/.backup-1.db.pgdump.zst.attempt-1.manifest"
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == manifest


def test_part_sizes_grow_so_ten_thousand_parts_carry_terabytes() -> None:
    first = 8 * 1024 * 1024
    assert part_size_at(1, first) == part_size_at(1000, first) == first
    assert part_size_at(1001, first) == 2 * first
    total = sum(part_size_at(n, first) for n in range(1, 10_001))
    assert total > 7 * 1024**4  # ~7.8 TiB, where fixed 8 MiB parts stop at ~78 GiB
    assert part_size_at(10_000, first) <= 5 * 1024**3  # S3's largest part
