"""Credentials, artifact writers and pg_dump's diagnostics."""

from __future__ import annotations

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
