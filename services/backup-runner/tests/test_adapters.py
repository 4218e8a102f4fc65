"""Credentials, artifact writers and pg_dump's diagnostics."""

from __future__ import annotations

from pathlib import Path

import pytest
from tidemark_backup_runner.pgtools import libpq_env, summarize_stderr
from tidemark_backup_runner.secrets import SecretError, resolve_secret
from tidemark_backup_runner.storage.local import LocalArtifactWriter
from tidemark_contracts.backup import DatabaseTarget


def test_credential_references_resolve_from_env_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_TEST_SECRET", "from-env")
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert resolve_secret("env:TM_TEST_SECRET") == "from-env"
    assert resolve_secret(f"file:{secret_file}") == "from-file"
    assert resolve_secret(None) is None


@pytest.mark.parametrize("ref", ["env:TM_TEST_UNSET", "file:/nonexistent/pw", "hunter2", "env:"])
def test_unresolvable_references_say_which_without_a_secret(ref: str) -> None:
    with pytest.raises(SecretError) as raised:
        resolve_secret(ref)
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
