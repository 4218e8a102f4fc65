"""A db backup end to end: HTTP → outbox → Kafka → backup-runner → events → read model."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg.conninfo import conninfo_to_dict
from tidemark_devstack.e2e import Api, table_fingerprints

pytestmark = pytest.mark.integration


def pg_restore_binary() -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_restore"))
    return str(candidates[-1]) if candidates else "pg_restore"


def test_db_backup_completes_and_restores_to_the_same_rows(
    api: Api,
    source_database: str,
    create_database: Callable[..., str],
    tmp_path: Path,
) -> None:
    environment = api.environment(source_database)
    destination = api.destination("team/artifacts")

    accepted = api.request_backup(environment["id"], label="before migration")
    assert accepted.status_code == 202, accepted.text
    pending = accepted.json()
    assert pending["status"] == "pending"
    assert pending["label"] == "before migration"
    assert pending["trigger"] == "manual"
    assert accepted.headers["location"] == f"/api/v1/backups/{pending['id']}"
    # Read-your-write: the backup exists the moment the command is accepted.
    assert api.get(accepted.headers["location"]).json()["status"] in (
        "pending",
        "running",
        "completed",
    )

    backup = api.wait_for(pending["id"])
    assert backup["status"] == "completed", backup
    assert backup["error"] is None
    assert backup["compression"] == "zstd"
    assert backup["startedAt"]
    assert backup["completedAt"]
    assert backup["durationMs"] >= 0
    assert backup["completedAt"].endswith("Z")
    [stored] = backup["destinations"]
    assert stored["destinationId"] == destination["id"]
    assert stored["status"] == "uploaded"
    # Relative to the destination, never the runner's own path.
    assert stored["location"] == f"{environment['id']}/{backup['id']}.db.pgdump.zst"
    artifact = api.directory(destination) / stored["location"]
    assert artifact == (
        api.destination_root / str(api.org_id) / "team/artifacts" / stored["location"]
    )
    assert artifact.is_file()
    data = artifact.read_bytes()
    assert backup["sizeBytes"] == stored["sizeBytes"] == len(data)
    assert backup["checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"

    listed = api.get(f"/api/v1/environments/{environment['id']}/backups").json()
    assert listed["total"] == 1
    assert [b["id"] for b in listed["items"]] == [backup["id"]]
    assert listed["items"][0]["status"] == "completed"

    dump = tmp_path / "restore.pgdump"
    dump.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    scratch = create_database("scratch")
    info = conninfo_to_dict(scratch)
    subprocess.run(
        [
            pg_restore_binary(),
            "--no-owner",
            "--exit-on-error",
            f"--dbname={scratch}",
            str(dump),
        ],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": str(info.get("password", ""))},
    )
    source = table_fingerprints(source_database)
    assert set(source) == {"customers", "orders"}
    assert source["orders"][0] == 10_000
    assert table_fingerprints(scratch) == source


def test_wrong_password_ends_failed_with_the_reason(api: Api, source_database: str) -> None:
    wrong = api.secret("wrong-password", "not-the-password")
    environment = api.environment(source_database, password_ref=wrong)
    api.destination()
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "failed"
    assert "password authentication failed" in backup["error"]
    assert "not-the-password" not in backup["error"]
    assert backup["destinations"][0]["status"] == "failed"
    assert backup["sizeBytes"] is None
    assert backup["checksum"] is None
    leftovers = [p for p in api.organization_directory.rglob("*") if p.is_file()]
    assert leftovers == [], "a failed backup leaves no artifact behind"


def test_database_gone_ends_failed_with_the_reason(
    api: Api, database_url: str, create_database: Callable[..., str]
) -> None:
    url = create_database("gone", owner_password="s3cret-source-Pa55word")
    environment = api.environment(url)
    api.destination()
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')  # type: ignore[arg-type]
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "failed"
    assert "does not exist" in backup["error"]


def test_unwritable_destination_ends_failed_and_leaves_nothing(
    api: Api, source_database: str
) -> None:
    environment = api.environment(source_database)
    blocker = api.directory(api.destination("not-a-directory"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the destination directory should be")
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "failed"
    assert "Not a directory: <organization>/not-a-directory" in backup["error"]
    assert str(api.destination_root) not in backup["error"], "no path of the runner's"
    assert blocker.read_text().startswith("a file")


def test_a_destination_directory_replaced_by_a_symlink_ends_failed_and_writes_nothing_outside(
    api: Api, source_database: str, tmp_path: Path
) -> None:
    environment = api.environment(source_database)
    destination = api.directory(api.destination("nightly"))
    # After registration, the directory becomes a link to somewhere outside the root.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    destination.parent.mkdir(parents=True)
    destination.symlink_to(elsewhere, target_is_directory=True)
    backup = api.wait_for(api.request_backup(environment["id"]).json()["id"])
    assert backup["status"] == "failed"
    assert "<organization>/nightly is a symbolic link" in backup["error"]
    assert str(api.destination_root) not in backup["error"]
    assert list(elsewhere.rglob("*")) == [], "nothing written outside"
    assert backup["destinations"][0]["status"] == "failed"
    assert backup["destinations"][0]["location"] is None


def test_backup_goes_to_the_requested_destinations_only(api: Api, source_database: str) -> None:
    environment = api.environment(source_database)
    default = api.destination("default")
    first = api.destination("first", is_default=False)
    second = api.destination("second", is_default=False)
    accepted = api.request_backup(environment["id"], destinationIds=[first["id"], second["id"]])
    assert accepted.status_code == 202, accepted.text
    backup = api.wait_for(accepted.json()["id"])
    assert backup["status"] == "completed", backup
    assert {d["destinationId"] for d in backup["destinations"]} == {first["id"], second["id"]}
    directories = {first["id"]: api.directory(first), second["id"]: api.directory(second)}
    copies = [
        (directories[d["destinationId"]] / d["location"]).read_bytes()
        for d in backup["destinations"]
    ]
    assert copies[0] == copies[1]
    assert not api.directory(default).exists()
