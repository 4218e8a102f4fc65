"""Downloading a restore's artifact: every copy is tried until one matches the recorded
checksum, and a copy that cannot be read (a bad checksum, a missing file, an s3
destination whose keys do not resolve) is a reason, never a crash."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from tidemark_backup_runner.secrets import SecretError
from tidemark_contracts.backup import DestinationTarget
from tidemark_contracts.restore import ArtifactCopy
from tidemark_restore_runner.artifacts import VerificationFailed, download_verified

ORG = uuid.UUID(int=42)
BODY = b"the artifact" * 1000
CHECKSUM = f"sha256:{hashlib.sha256(BODY).hexdigest()}"


def local_copy(root: Path, path: str, body: bytes | None) -> ArtifactCopy:
    if body is not None:
        (root / str(ORG) / path / "env").mkdir(parents=True)
        (root / str(ORG) / path / "env" / "b.db.pgdump.zst").write_bytes(body)
    destination = DestinationTarget.of(uuid.uuid4(), path, "local", {"path": path})
    return ArtifactCopy(destination=destination, location="env/b.db.pgdump.zst")


def s3_copy() -> ArtifactCopy:
    destination = DestinationTarget.of(
        uuid.uuid4(),
        "bucket",
        "s3",
        {
            "bucket": "b",
            "endpointUrl": "http://127.0.0.1:9",
            "accessKeyRef": "secret:gone",
            "secretKeyRef": "secret:gone",
        },
    )
    return ArtifactCopy(destination=destination, location="env/b.db.pgdump.zst")


def refuse(ref: str | None) -> str | None:
    raise SecretError("the credential secret:gone cannot be used: no such secret")


def test_the_first_copy_that_matches_is_used_after_those_that_fail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    copies = [
        s3_copy(),
        local_copy(root, "altered", b"not the artifact"),
        local_copy(root, "missing", None),
        local_copy(root, "good", BODY),
    ]
    into = tmp_path / "artifact"
    seen: list[int] = []

    origin = download_verified(
        copies, ORG, CHECKSUM, into, seen.append, local_root=root, credentials=refuse
    )

    assert origin == "destination 'good'"
    assert into.read_bytes() == BODY
    assert seen[-1] == len(BODY)


def test_no_matching_copy_fails_with_every_reason_and_no_secret_or_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    copies = [s3_copy(), local_copy(root, "altered", b"not the artifact")]
    into = tmp_path / "artifact"

    with pytest.raises(VerificationFailed) as failed:
        download_verified(
            copies, ORG, CHECKSUM, into, lambda _: None, local_root=root, credentials=refuse
        )

    reason = str(failed.value)
    assert reason.startswith("the artifact could not be verified, the target was not touched")
    assert "destination 'bucket': the credential secret:gone cannot be used" in reason
    assert "destination 'altered': checksum mismatch" in reason
    assert str(tmp_path) not in reason
    assert not into.exists()
