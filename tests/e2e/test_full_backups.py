"""Full backups over HTTP, on real Kafka and PostgreSQL: a cluster of its own with a files
directory is backed up, restored by hand exactly as the README says, and has the source's
rows and files; and every way it can go wrong ends ``failed`` saying why, or 422."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tidemark_devstack.e2e import (
    SOURCE_PASSWORD,
    SOURCE_SCHEMA,
    Api,
    full_environment,
    table_fingerprints,
)
from tidemark_devstack.paths import free_port
from tidemark_devstack.source_cluster import (
    SourceCluster,
    as_postgres_user,
    remove_source_cluster,
    run,
    start_source_cluster,
)
from tidemark_devstack.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source_cluster() -> Iterator[SourceCluster]:
    """The environment's own cluster (a base backup copies a whole cluster)."""
    cluster = start_source_cluster(password=SOURCE_PASSWORD, schema_sql=SOURCE_SCHEMA)
    yield cluster
    remove_source_cluster(cluster)


def files_directory(stack: Stack, api: Api, name: str = "site") -> Path:
    """``<files root>/<organization>/<name>`` with a few files, a subdirectory, a binary
    file and a symbolic link (stored as a link)."""
    assert stack.files_root is not None
    directory = stack.files_root / str(api.org_id) / name
    (directory / "uploads" / "2026").mkdir(parents=True)
    (directory / "index.html").write_text("<h1>shop</h1>\n")
    (directory / "uploads" / "2026" / "photo.bin").write_bytes(os.urandom(300_000))
    (directory / "uploads" / "empty").write_bytes(b"")
    (directory / "latest").symlink_to("uploads/2026/photo.bin")
    return directory


def take_full_backup(
    api: Api, environment: dict[str, Any], destination: dict[str, Any]
) -> dict[str, Any]:
    response = api.post(
        f"/api/v1/environments/{environment['id']}/backups",
        json={"type": "full", "destinationIds": [destination["id"]]},
    )
    assert response.status_code == 202, response.text
    return api.wait_for(response.json()["id"], timeout=180)


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``root``: (kind, content digest or link target)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            entries[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[relative] = ("dir", "")
        else:
            entries[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def test_a_full_backup_restored_by_hand_as_the_readme_says_has_the_sources_rows_and_files(
    stack: Stack, api: Api, source_cluster: SourceCluster
) -> None:
    files = files_directory(stack, api)
    response = full_environment(
        api, source_cluster.database_url, source_cluster.cluster_spec(), files_path="site"
    )
    assert response.status_code == 201, response.text
    environment = response.json()
    assert environment["filesPath"] == "site"
    destination = api.destination(f"full-{environment['id'][:8]}")

    backup = take_full_backup(api, environment, destination)

    assert backup["status"] == "completed", backup["error"]
    assert backup["type"] == "full"
    assert backup["walStartLsn"]
    assert backup["walEndLsn"]
    location = backup["destinations"][0]["location"]
    assert location == f"{environment['id']}/{backup['id']}.full.tar.zst"
    artifact = api.directory(destination) / location
    # The README's steps, one by one, with the tools it names.
    work = Path(tempfile.mkdtemp(prefix="tidemark-restore-"))
    work.chmod(0o755)
    restored_port = free_port()
    data_directory = work / "data"
    started = False
    try:
        # 1. the artifact is the recorded one
        digest = run(["sha256sum", str(artifact)]).stdout.split()[0]
        assert f"sha256:{digest}" == backup["checksum"]
        # 2. extract
        restore = work / "restore"
        restore.mkdir()
        run(["sh", "-c", f"zstd -dc '{artifact}' | tar -xf - -C '{restore}'"])
        assert sorted(p.name for p in restore.iterdir()) == ["files", "manifest.json", "pgdata"]
        # 3. verify every file against the manifest
        run(
            [
                "sh",
                "-c",
                "jq -r '.files[] | select(.sha256) | \"\\(.sha256)  \\(.path)\"' manifest.json"
                " | sha256sum -c --quiet",
            ],
            cwd=restore,
        )
        manifest = json.loads((restore / "manifest.json").read_text())
        assert manifest["backupId"] == backup["id"]
        assert (manifest["walStartLsn"], manifest["walEndLsn"]) == (
            backup["walStartLsn"],
            backup["walEndLsn"],
        )
        listed = {entry["path"] for entry in manifest["files"]}
        assert {"pgdata/PG_VERSION", "files/index.html", "files/latest"} <= listed
        # 4. move pgdata into place; 5. owner and 0700; 6. no postmaster.pid
        shutil.move(str(restore / "pgdata"), data_directory)
        if os.geteuid() == 0:
            run(["chown", "-R", "postgres:postgres", str(data_directory)])
        run(["chmod", "700", str(data_directory)])
        run(["rm", "-f", str(data_directory / "postmaster.pid")])
        # 7. start it as the postgres user, on a port (and socket directory) of its own
        server = work / "server"  # its log and socket, writable by the postgres user
        server.mkdir()
        if os.geteuid() == 0:
            run(["chown", "postgres:postgres", str(server)])
        pg_ctl = str(source_cluster.postgres.bin_dir / "pg_ctl")
        run(
            as_postgres_user(
                [
                    pg_ctl,
                    "-D",
                    str(data_directory),
                    "-l",
                    str(server / "restore.log"),
                    "-o",
                    f"-p {restored_port} -k {server}",
                    "-w",
                    "start",
                ]
            )
        )
        started = True
        source = conninfo_to_dict(source_cluster.database_url)
        restored_url = make_conninfo(
            "", **{**source, "port": str(restored_port), "host": "127.0.0.1"}
        )
        with psycopg.connect(restored_url) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row == (False,)
        assert table_fingerprints(restored_url) == table_fingerprints(source_cluster.database_url)
        # 8. the files, as they were (the link as a link)
        assert tree(restore / "files") == tree(files)
        assert os.readlink(restore / "files" / "latest") == "uploads/2026/photo.bin"
    finally:
        if started:
            subprocess.run(
                as_postgres_user([pg_ctl, "-D", str(data_directory), "-m", "immediate", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)


def test_a_full_backup_with_a_wrong_password_fails_saying_so(
    stack: Stack, api: Api, source_cluster: SourceCluster
) -> None:
    wrong = api.secret("wrong-password", "not-the-password")
    response = full_environment(
        api, source_cluster.database_url, source_cluster.cluster_spec(), password_ref=wrong
    )
    assert response.status_code == 201, response.text
    environment = response.json()
    destination = api.destination(f"full-{environment['id'][:8]}")

    backup = take_full_backup(api, environment, destination)

    assert backup["status"] == "failed"
    assert "pg_basebackup exited with 1" in backup["error"]
    assert "password authentication failed" in backup["error"]
    assert "not-the-password" not in backup["error"]
    assert backup["walStartLsn"] is None
    assert not list(api.directory(destination).rglob("*.full.tar.zst*"))


@pytest.mark.parametrize(
    "files_path", ["/etc", "../other-organization", "site/../../x", "site/./x", "."]
)
def test_a_files_path_outside_the_organizations_directory_is_422(
    api: Api, source_cluster: SourceCluster, files_path: str
) -> None:
    response = full_environment(
        api, source_cluster.database_url, source_cluster.cluster_spec(), files_path=files_path
    )

    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["filesPath"]
    if files_path != ".":
        assert files_path not in json.dumps(problem)


@pytest.mark.parametrize("where", ["files path itself", "a parent of the files path"])
def test_a_files_path_through_a_symbolic_link_fails_the_backup_clearly(
    stack: Stack, api: Api, source_cluster: SourceCluster, tmp_path: Path, where: str
) -> None:
    assert stack.files_root is not None
    organization = stack.files_root / str(api.org_id)
    organization.mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "site").mkdir(parents=True)
    (outside / "site" / "secret.txt").write_text("not the tenant's")
    if where == "files path itself":
        (organization / "site").symlink_to(outside / "site")
        files_path = "site"
    else:
        (organization / "www").symlink_to(outside)
        files_path = "www/site"
    response = full_environment(
        api, source_cluster.database_url, source_cluster.cluster_spec(), files_path=files_path
    )
    assert response.status_code == 201, response.text
    environment = response.json()
    destination = api.destination(f"full-{environment['id'][:8]}")

    backup = take_full_backup(api, environment, destination)

    assert backup["status"] == "failed"
    assert "symbolic link" in backup["error"]
    assert "not follow" in backup["error"]
    assert str(outside) not in backup["error"]
    assert not list(api.directory(destination).rglob("*.full.tar.zst*"))


def test_a_files_path_that_does_not_exist_fails_the_backup_clearly(
    stack: Stack, api: Api, source_cluster: SourceCluster
) -> None:
    response = full_environment(
        api, source_cluster.database_url, source_cluster.cluster_spec(), files_path="missing"
    )
    assert response.status_code == 201, response.text
    environment = response.json()
    destination = api.destination(f"full-{environment['id'][:8]}")

    started = time.monotonic()
    backup = take_full_backup(api, environment, destination)

    assert backup["status"] == "failed"
    assert "does not exist" in backup["error"]
    # Refused before pg_basebackup ran: never started.
    assert backup["startedAt"] is None
    assert time.monotonic() - started < 60
