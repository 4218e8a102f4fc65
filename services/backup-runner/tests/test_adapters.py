"""Credentials, artifact writers and pg_dump's diagnostics."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from tidemark_backup_runner.pgtools import libpq_env, summarize_stderr, target_conninfo
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
    policy = CredentialPolicy(file_root=tmp_path, allow_operator_refs=True)
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
    policy = CredentialPolicy(file_root=tmp_path, allow_operator_refs=True)
    with pytest.raises(SecretError, match="outside the prefix") as raised:
        resolve_secret("env:DATABASE_URL", ORG, policy)
    assert "control-plane" not in str(raised.value)
    with pytest.raises(SecretError, match="credential directory"):
        resolve_secret(f"file:{theirs}", ORG, policy)
    escape = f"file:{tmp_path}/{ORG}/../{OTHER_ORG}/pw"
    with pytest.raises(SecretError, match="credential directory"):
        resolve_secret(escape, ORG, policy)
    with pytest.raises(SecretError, match="disabled"):
        resolve_secret(f"file:{theirs}", OTHER_ORG, CredentialPolicy(allow_operator_refs=True))


def test_operator_references_are_off_unless_the_operator_enables_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMARK_SECRET_TEST", "from-env")
    (tmp_path / str(ORG)).mkdir()
    (tmp_path / str(ORG) / "pw").write_text("from-file")
    policy = CredentialPolicy(file_root=tmp_path)
    for ref in ["env:TIDEMARK_SECRET_TEST", f"file:{tmp_path / str(ORG) / 'pw'}"]:
        with pytest.raises(SecretError, match="TIDEMARK_ALLOW_OPERATOR_SECRET_REFS"):
            resolve_secret(ref, ORG, policy)


def test_a_stored_secret_needs_the_vault_and_a_valid_name() -> None:
    policy = CredentialPolicy()
    with pytest.raises(SecretError, match="not available on this runner"):
        resolve_secret("secret:db", ORG, policy)
    with pytest.raises(SecretError, match="not a valid secret:NAME") as raised:
        resolve_secret("secret:../../etc", ORG, policy)
    assert "../../etc" not in str(raised.value)


@pytest.mark.parametrize(
    "ref",
    ["env:TIDEMARK_SECRET_UNSET", "file:/nonexistent/pw", "hunter2-plain-value", "env:"],
)
def test_unresolvable_references_never_repeat_the_reference(ref: str, tmp_path: Path) -> None:
    policy = CredentialPolicy(file_root=Path("/nonexistent"), allow_operator_refs=True)
    with pytest.raises(SecretError) as raised:
        resolve_secret(ref, ORG, policy)
    # A reference may be a secret pasted into the wrong field: it must not become an event.
    secretive = ref.partition(":")[2] or ref
    assert ref == "env:" or secretive not in str(raised.value)


def test_the_password_reaches_libpq_only_through_the_environment() -> None:
    target = DatabaseTarget(host="h", port=1, dbname="d", user="u", password_ref="env:X")
    assert libpq_env("pw")["PGPASSWORD"] == "pw"
    assert "pw" not in target_conninfo(target, application_name="a")


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
    writer = LocalArtifactWriter(tmp_path, ORG, "backups", "env/b.pgdump.zst")
    writer.open()
    writer.write(b"abc")
    final = tmp_path / str(ORG) / "backups/env/b.pgdump.zst"
    assert not final.exists()
    # The location is the artifact's place in the destination, not the runner's path.
    assert writer.commit() == "env/b.pgdump.zst"
    assert final.read_bytes() == b"abc"
    assert [p.name for p in final.parent.iterdir()] == ["b.pgdump.zst"]
    writer.abort()  # after commit: nothing of ours to remove
    assert final.exists()


def test_an_aborted_artifact_leaves_nothing(tmp_path: Path) -> None:
    writer = LocalArtifactWriter(tmp_path, ORG, "backups", "env/b.pgdump.zst")
    writer.abort()  # before open: a no-op
    writer.open()
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_discard_removes_a_committed_artifact_and_earlier_partials(tmp_path: Path) -> None:
    earlier = LocalArtifactWriter(tmp_path, ORG, "backups", "env/b.pgdump.zst")
    earlier.open()
    earlier.write(b"left by a runner that died")
    committed = LocalArtifactWriter(tmp_path, ORG, "backups", "env/b.pgdump.zst")
    committed.open()
    committed.write(b"complete but never recorded")
    committed.commit()
    unrelated = tmp_path / str(ORG) / "backups/env/other.pgdump.zst"
    unrelated.write_bytes(b"another backup")
    LocalArtifactWriter(tmp_path, ORG, "backups", "env/b.pgdump.zst").discard()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [unrelated]


def test_a_credential_file_that_is_not_utf8_is_refused_without_its_bytes(
    tmp_path: Path,
) -> None:
    (tmp_path / str(ORG)).mkdir()
    secret_file = tmp_path / str(ORG) / "pw"
    secret_file.write_bytes(b"s3cr\xff\xfet-bytes\n")
    with pytest.raises(SecretError) as raised:
        resolve_secret(
            f"file:{secret_file}",
            ORG,
            CredentialPolicy(file_root=tmp_path, allow_operator_refs=True),
        )
    message = str(raised.value)
    assert "not UTF-8" in message
    assert "s3cr" not in message
    assert "\\xff" not in message
    assert raised.value.__cause__ is None  # the decoder's error (with the bytes) is not chained
    assert raised.value.__suppress_context__


KEY = "env/b.db.pgdump.zst"


def in_destination(tmp_path: Path, name: str) -> Path:
    """Where a file of the artifact's directory is (destination ``backups`` of ORG)."""
    return tmp_path / str(ORG) / "backups" / "env" / name


def sealed_writer(tmp_path: Path, tag: str, data: bytes) -> LocalArtifactWriter:
    writer = LocalArtifactWriter(tmp_path, ORG, "backups", KEY, tag)
    writer.open()
    writer.write(data)
    checksum = f"sha256:{hashlib.sha256(data).hexdigest()}"
    writer.seal({"sizeBytes": len(data), "checksum": checksum, "attempt": 1})
    return writer


def test_a_sealed_copy_survives_abort_and_is_found_and_adopted_by_a_later_writer(
    tmp_path: Path,
) -> None:
    sealed_writer(tmp_path, "owner-a-1", b"the whole dump").abort()
    later = LocalArtifactWriter(tmp_path, ORG, "backups", KEY, "owner-b-2")
    copy = later.sealed()
    assert copy is not None
    assert copy.size_bytes == len(b"the whole dump")
    assert copy.checksum == f"sha256:{hashlib.sha256(b'the whole dump').hexdigest()}"
    location = later.adopt(copy)
    assert location == KEY, "the location is relative to the destination"
    assert in_destination(tmp_path, "b.db.pgdump.zst").read_bytes() == b"the whole dump"
    # Renamed into place, it still proves itself until the backup is recorded.
    again = later.sealed()
    assert again is not None
    assert again.name == "b.db.pgdump.zst"
    later.forget_proofs()
    assert later.sealed() is None
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["b.db.pgdump.zst"]


@pytest.mark.parametrize("damage", ["truncated", "altered", "manifest unreadable", "unsealed"])
def test_a_copy_that_does_not_match_its_manifest_proves_nothing(
    tmp_path: Path, damage: str
) -> None:
    writer = sealed_writer(tmp_path, "owner-a-1", b"the whole dump")
    partial, manifest = (in_destination(tmp_path, n) for n in (writer.partial, writer.manifest))
    if damage == "truncated":
        partial.write_bytes(b"the whole")
    elif damage == "altered":
        partial.write_bytes(b"the whole dumq")
    elif damage == "manifest unreadable":
        manifest.write_text("{not json")
    else:
        manifest.unlink()
    later = LocalArtifactWriter(tmp_path, ORG, "backups", KEY, "owner-b-2")
    assert later.sealed() is None
    later.discard()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
