"""Reading artifacts back for restores: local (real files) and s3 (a real S3 endpoint)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from tidemark_backup_runner.storage import StorageFailed, reader_for, writer_for
from tidemark_contracts.backup import DestinationTarget
from tidemark_devstack.pytest_plugin import S3Endpoint

ORG = uuid.uuid4()
KEY = "env/b.db.pgdump.zst"
DATA = os.urandom(3 * 1024 * 1024 + 17)


def local(path: str = "team/backups") -> DestinationTarget:
    return DestinationTarget.of(uuid.uuid4(), "disk", "local", {"path": path})


def stored(root: Path, destination: DestinationTarget, data: bytes = DATA) -> str:
    writer = writer_for(destination, ORG, KEY, "t", local_root=root)
    writer.open()
    writer.write(data)
    return writer.commit()


def test_a_local_artifact_reads_back_byte_for_byte_in_chunks(tmp_path: Path) -> None:
    destination = local()
    location = stored(tmp_path, destination)
    reader = reader_for(destination, ORG, local_root=tmp_path, credentials=None)
    chunks = list(reader.read(location, chunk_size=1 << 20))
    assert b"".join(chunks) == DATA
    assert len(chunks) == 4


def test_a_missing_local_artifact_is_not_found_without_a_path(tmp_path: Path) -> None:
    destination = local()
    stored(tmp_path, destination)
    reader = reader_for(destination, ORG, local_root=tmp_path, credentials=None)
    with pytest.raises(StorageFailed) as raised:
        list(reader.read("env/other.db.pgdump.zst"))
    assert "not found" in str(raised.value)
    assert str(tmp_path) not in str(raised.value)
    with pytest.raises(StorageFailed) as raised:
        list(reader.read("elsewhere/x.zst"))
    assert "not found" in str(raised.value)


def test_a_local_artifact_behind_a_link_is_refused(tmp_path: Path) -> None:
    destination = local("team/backups")
    outside = tmp_path / "outside"
    (outside / "env").mkdir(parents=True)
    (outside / "env" / "b.db.pgdump.zst").write_bytes(b"secret data")
    (tmp_path / "root" / str(ORG) / "team").mkdir(parents=True)
    (tmp_path / "root" / str(ORG) / "team" / "backups").symlink_to(outside)
    reader = reader_for(destination, ORG, local_root=tmp_path / "root", credentials=None)
    with pytest.raises(StorageFailed) as raised:
        list(reader.read(KEY))
    assert "symbolic link" in str(raised.value)
    assert str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize("location", ["../x", "/etc/passwd", "env/../../x", ""])
def test_a_location_that_leaves_the_destination_is_refused(tmp_path: Path, location: str) -> None:
    reader = reader_for(local(), ORG, local_root=tmp_path, credentials=None)
    with pytest.raises(StorageFailed, match="not a relative path"):
        list(reader.read(location))


def test_a_runner_without_a_destination_root_refuses_local_reads() -> None:
    with pytest.raises(StorageFailed, match="no destination root"):
        reader_for(local(), ORG, local_root=None, credentials=None)


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint) -> str:
    client: Any = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    )
    name = f"read-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def s3_destination(endpoint: S3Endpoint, bucket: str) -> DestinationTarget:
    return DestinationTarget.of(
        uuid.uuid4(),
        "bucket",
        "s3",
        {
            "bucket": bucket,
            "prefix": "base",
            "endpointUrl": endpoint.url,
            "region": endpoint.region,
            "accessKeyRef": "secret:ak",
            "secretKeyRef": "secret:sk",
        },
    )


def test_an_s3_artifact_reads_back_byte_for_byte(s3_endpoint: S3Endpoint, bucket: str) -> None:
    destination = s3_destination(s3_endpoint, bucket)
    values = {"secret:ak": s3_endpoint.access_key, "secret:sk": s3_endpoint.secret_key}
    writer = writer_for(destination, ORG, KEY, "t", credentials=values.get)
    writer.open()
    writer.write(DATA)
    location = writer.commit()
    reader = reader_for(destination, ORG, local_root=None, credentials=values.get)
    assert b"".join(reader.read(location)) == DATA
    with pytest.raises(StorageFailed) as raised:
        list(reader.read("env/missing.zst"))
    assert "not found" in str(raised.value)


def test_an_s3_read_with_wrong_keys_fails_without_echoing_them(
    s3_endpoint: S3Endpoint, bucket: str
) -> None:
    destination = s3_destination(s3_endpoint, bucket)
    values = {"secret:ak": "AKIAWRONGWRONG", "secret:sk": "s3cr3t-never-shown"}
    reader = reader_for(destination, ORG, local_root=None, credentials=values.get)
    with pytest.raises(StorageFailed) as raised:
        list(reader.read(KEY))
    assert "s3cr3t-never-shown" not in str(raised.value)
    assert "AKIAWRONGWRONG" not in str(raised.value)
    assert "get_object failed" in str(raised.value) or "not found" in str(raised.value)


def test_an_s3_reader_without_credentials_is_refused(s3_endpoint: S3Endpoint, bucket: str) -> None:
    reader = reader_for(s3_destination(s3_endpoint, bucket), ORG, local_root=None, credentials=None)
    with pytest.raises(StorageFailed, match="resolves no credentials"):
        list(reader.read(KEY))
