"""Credentials, artifact writers and pg_dump's diagnostics."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from tidemark_backup_runner.pgtools import libpq_env, summarize_stderr
from tidemark_backup_runner.secrets import CredentialPolicy, SecretError, resolve_secret
from tidemark_backup_runner.storage.local import LocalArtifactWriter
from tidemark_contracts.backup import DatabaseTarget

ORG = uuid.uuid4()
OTHER_ORG = uuid.uuid4()


def test_credential_references_resolve_from_env_and_the_organizations_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMARK_SECRET_TEST", "from-env")
    (tmp_path / str(ORG)).mkdir()
    secret_file = tmp_path / str(ORG) / "pw"
    secret_file.write_text("from-file\n")
    policy = CredentialPolicy(file_root=tmp_path)
    assert resolve_secret("env:TIDEMARK_SECRET_TEST", ORG, policy) == "from-env"
    assert resolve_secret(f"file:{secret_file}", ORG, policy) == "from-file"
    assert resolve_secret(None, ORG, policy) is None


def test_a_reference_cannot_reach_the_runners_own_settings_or_another_organization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://control-plane:secret@db/tidemark")
    (tmp_path / str(OTHER_ORG)).mkdir()
    theirs = tmp_path / str(OTHER_ORG) / "pw"
    theirs.write_text("their secret")
    policy = CredentialPolicy(file_root=tmp_path)
    with pytest.raises(SecretError, match=r"TIDEMARK_SECRET_\*") as raised:
        resolve_secret("env:DATABASE_URL", ORG, policy)
    assert "control-plane" not in str(raised.value)
    with pytest.raises(SecretError, match="credential directory"):
        resolve_secret(f"file:{theirs}", ORG, policy)
    escape = f"file:{tmp_path}/{ORG}/../{OTHER_ORG}/pw"
    with pytest.raises(SecretError, match="credential directory"):
        resolve_secret(escape, ORG, policy)
    with pytest.raises(SecretError, match="disabled"):
        resolve_secret(f"file:{theirs}", OTHER_ORG, CredentialPolicy())


@pytest.mark.parametrize(
    "ref", ["env:TIDEMARK_SECRET_UNSET", "file:/nonexistent/pw", "hunter2", "env:"]
)
def test_unresolvable_references_say_which_without_a_secret(ref: str, tmp_path: Path) -> None:
    policy = CredentialPolicy(file_root=Path("/nonexistent"))
    with pytest.raises(SecretError) as raised:
        resolve_secret(ref, ORG, policy)
    assert repr(ref) in str(raised.value)


def test_the_password_reaches_libpq_only_through_the_environment() -> None:
    target = DatabaseTarget(host="h", port=1, dbname="d", user="u", password_ref="env:X")
    env = libpq_env(target, "pw")
    assert env["PGPASSWORD"] == "pw"
    assert "PGPASSWORD" not in libpq_env(target, None)


def test_pg_dump_diagnostics_are_summarized() -> None:
    stderr = (
        b'pg_dump: error: connection to server at "127.0.0.1", port 5432 failed: '
        b'FATAL:  password authentication failed for user "app"\n'
    )
    assert summarize_stderr(stderr) == (
        'connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  password authentication failed for user "app"'
    )
    assert summarize_stderr(b"") == "no diagnostic output"
    assert len(summarize_stderr(b"x" * 5000)) == 1000


def test_an_artifact_is_invisible_until_committed(tmp_path: Path) -> None:
    writer = LocalArtifactWriter(str(tmp_path), "org/env/b.pgdump.zst")
    writer.open()
    writer.write(b"abc")
    final = tmp_path / "org/env/b.pgdump.zst"
    assert not final.exists()
    assert writer.commit() == str(final)
    assert final.read_bytes() == b"abc"
    assert [p.name for p in final.parent.iterdir()] == ["b.pgdump.zst"]
    writer.abort()  # after commit: nothing of ours to remove
    assert final.exists()


def test_an_aborted_artifact_leaves_nothing(tmp_path: Path) -> None:
    writer = LocalArtifactWriter(str(tmp_path), "org/env/b.pgdump.zst")
    writer.abort()  # before open: a no-op
    writer.open()
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_discard_removes_a_committed_artifact_and_earlier_partials(tmp_path: Path) -> None:
    earlier = LocalArtifactWriter(str(tmp_path), "org/env/b.pgdump.zst")
    earlier.open()
    earlier.write(b"left by a runner that died")
    committed = LocalArtifactWriter(str(tmp_path), "org/env/b.pgdump.zst")
    committed.open()
    committed.write(b"complete but never recorded")
    committed.commit()
    unrelated = tmp_path / "org/env/other.pgdump.zst"
    unrelated.write_bytes(b"another backup")
    LocalArtifactWriter(str(tmp_path), "org/env/b.pgdump.zst").discard()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [unrelated]


def test_a_credential_file_that_is_not_utf8_is_refused_without_its_bytes(
    tmp_path: Path,
) -> None:
    (tmp_path / str(ORG)).mkdir()
    secret_file = tmp_path / str(ORG) / "pw"
    secret_file.write_bytes(b"s3cr\xff\xfet-bytes\n")
    with pytest.raises(SecretError) as raised:
        resolve_secret(f"file:{secret_file}", ORG, CredentialPolicy(file_root=tmp_path))
    message = str(raised.value)
    assert "not UTF-8" in message
    assert "s3cr" not in message
    assert "\\xff" not in message
    assert raised.value.__cause__ is None  # the decoder's error (with the bytes) is not chained
    assert raised.value.__suppress_context__


def sealed_writer(tmp_path: Path, tag: str, data: bytes) -> LocalArtifactWriter:
    writer = LocalArtifactWriter(str(tmp_path), "org/env/b.db.pgdump.zst", tag)
    writer.open()
    writer.write(data)
    checksum = f"sha256:{hashlib.sha256(data).hexdigest()}"
    writer.seal({"sizeBytes": len(data), "checksum": checksum, "attempt": 1})
    return writer


def test_a_sealed_copy_survives_abort_and_is_found_and_adopted_by_a_later_writer(
    tmp_path: Path,
) -> None:
    sealed_writer(tmp_path, "owner-a-1", b"the whole dump").abort()
    later = LocalArtifactWriter(str(tmp_path), "org/env/b.db.pgdump.zst", "owner-b-2")
    copy = later.sealed()
    assert copy is not None
    assert copy.size_bytes == len(b"the whole dump")
    assert copy.checksum == f"sha256:{hashlib.sha256(b'the whole dump').hexdigest()}"
    location = later.adopt(copy)
    assert Path(location).read_bytes() == b"the whole dump"
    # Renamed into place, it still proves itself until the backup is recorded.
    again = later.sealed()
    assert again is not None
    assert again.path == Path(location)
    later.forget_proofs()
    assert later.sealed() is None
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["b.db.pgdump.zst"]


@pytest.mark.parametrize("damage", ["truncated", "altered", "manifest unreadable", "unsealed"])
def test_a_copy_that_does_not_match_its_manifest_proves_nothing(
    tmp_path: Path, damage: str
) -> None:
    writer = sealed_writer(tmp_path, "owner-a-1", b"the whole dump")
    if damage == "truncated":
        writer.partial.write_bytes(b"the whole")
    elif damage == "altered":
        writer.partial.write_bytes(b"the whole dumq")
    elif damage == "manifest unreadable":
        writer.manifest.write_text("{not json")
    else:
        writer.manifest.unlink()
    later = LocalArtifactWriter(str(tmp_path), "org/env/b.db.pgdump.zst", "owner-b-2")
    assert later.sealed() is None
    later.discard()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
