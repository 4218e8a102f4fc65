"""A tenant's database settings reach libpq as one connection string of exactly their parts."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from tidemark_backup_runner.pgtools import (
    LIBPQ_FILES,
    SESSION_OPTIONS,
    TargetError,
    check_target,
    connect,
    dump_database,
    libpq_env,
    require_password,
    target_conninfo,
)
from tidemark_backup_runner.storage.local import LocalArtifactWriter
from tidemark_contracts.backup import DatabaseTarget

HOSTILE_NAMES = [
    "host=/var/run/postgresql user=postgres",
    "postgresql://postgres@/x?host=/tmp",
    "postgres://postgres@localhost/postgres",
    "POSTGRESQL://postgres@/x",
    "service=x",
    "passfile=/etc/shadow",
    "sslkey=/home/runner/.postgresql/postgresql.key",
    "d dbname=x",
    "d\x00host=/tmp",
    "d\nhost=/tmp",
    "d\rx",
    "d\tx",
    "d\x7f",
    "",
]
HOSTILE_HOSTS = [
    "/var/run/postgresql",
    "/tmp",
    "@abstract",
    "user@db.example",
    "db1,db2",
    "db host",
    "db.example user=postgres",
    "host=/tmp",
    "db.example\x00",
    "db.example\n",
    "-db",
    "a..b",
    ":::",
    "",
    "x" * 254,
]
ODD_BUT_PLAIN_NAMES = [
    "it's",
    'say "hi"',
    "back\\slash\\",
    "\\'",
    " leading and trailing ",
    "naïve-ünïcode",
    "semi;colon",
    "?query&x",
    "postgres:/not-a-uri",
]

ORG = uuid.uuid4()


def target(**fields: object) -> DatabaseTarget:
    values: dict[str, object] = {"host": "db.example", "port": 5432, "dbname": "d", "user": "u"}
    return DatabaseTarget.model_validate({**values, **fields})


@pytest.mark.parametrize("field", ["dbname", "user"])
@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_a_name_libpq_would_read_as_settings_is_refused_naming_the_field(
    field: str, value: str
) -> None:
    with pytest.raises(TargetError) as raised:
        target_conninfo(target(**{field: value}), application_name="a")
    message = str(raised.value)
    assert f"database.{field} " in message
    if value:
        assert value not in message, "the refused value is not repeated"
    with pytest.raises(TargetError):
        check_target(target(**{field: value}))


@pytest.mark.parametrize("value", HOSTILE_HOSTS)
def test_a_host_that_is_no_dns_name_or_ip_literal_is_refused(value: str) -> None:
    with pytest.raises(TargetError) as raised:
        target_conninfo(target(host=value), application_name="a")
    assert "database.host " in str(raised.value)
    if value:
        assert value not in str(raised.value)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(TargetError, match=r"database\.port "):
        target_conninfo(target(port=port), application_name="a")


@pytest.mark.parametrize("name", ODD_BUT_PLAIN_NAMES)
@pytest.mark.parametrize("host", ["db.example", "db.example.", "my_db", "10.1.2.3", "::1"])
def test_libpq_reads_exactly_our_parts_back(name: str, host: str) -> None:
    built = target_conninfo(
        target(host=host, port=6543, dbname=name, user=name), application_name="tidemark x"
    )
    parsed = conninfo_to_dict(built)
    home = parsed.pop("passfile")
    assert isinstance(home, str)
    files = {key: parsed.pop(key) for key in LIBPQ_FILES if key != "passfile"}
    assert parsed == {
        "host": host,
        "port": "6543",
        "dbname": name,
        "user": name,
        "gssencmode": "disable",
        "application_name": "tidemark x",
        "connect_timeout": "10",
    }
    # libpq's files of the runner's user are replaced by names in an empty directory.
    directory = Path(home).parent
    assert all(Path(str(path)).parent == directory for path in files.values())
    assert directory.is_dir()
    assert list(directory.iterdir()) == []
    assert directory != Path.home()


def test_extra_options_are_read_back_exactly_too() -> None:
    extra = {"password": 'p\'w\\ "x" host=/tmp', "options": "-c statement_timeout=5"}
    parsed = conninfo_to_dict(target_conninfo(target(), application_name="a", extra=extra))
    assert parsed["password"] == extra["password"]
    assert parsed["options"] == extra["options"]
    assert parsed["host"] == "db.example"


def test_every_option_libpq_takes_from_the_environment_is_given_on_the_runners_sessions() -> None:
    # A new libpq with a new PG* variable fails this test instead of reaching tenants.
    ours = {"host", "port", "dbname", "user", "password", "application_name", "connect_timeout"}
    ours |= set(LIBPQ_FILES) | {"sslcrldir", "options"}
    from_env = {
        option.keyword.decode()
        for option in psycopg.pq.Conninfo.get_defaults()
        if option.envvar is not None
    }
    assert from_env - ours - set(SESSION_OPTIONS) == {"service"}


def test_pg_dump_gets_an_allow_listed_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PGPASSFILE": "/runner/.pgpass",
        "PGSERVICEFILE": "/runner/.pg_service.conf",
        "PGSERVICE": "runner",
        "PGHOST": "/var/run/postgresql",
        "PGUSER": "postgres",
        "PGPASSWORD": "the-runners",
        "PGSSLKEY": "/runner/key",
        "DATABASE_URL": "postgresql://control:plane@db/tidemark",
    }.items():
        monkeypatch.setenv(name, value)
    env = libpq_env("tenant-pw")
    assert set(env) == {"HOME", "LC_ALL", "PGPASSWORD"}
    assert env["PGPASSWORD"] == "tenant-pw"
    assert Path(env["HOME"]).is_dir()
    assert list(Path(env["HOME"]).iterdir()) == []


@pytest.mark.parametrize("password", [None, "", "a\x00b"])
def test_a_missing_or_unusable_password_is_an_error_not_a_fallback(
    password: str | None,
) -> None:
    with pytest.raises(TargetError, match="passwordRef") as raised:
        require_password(password)
    if password:
        assert password not in str(raised.value)
    assert require_password("pw") == "pw"


def test_the_runners_own_sessions_refuse_a_runner_that_sets_pgservice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its service would fill every option not given; libpq cannot be told to ignore it.
    monkeypatch.setenv("PGSERVICE", "runner")
    with pytest.raises(TargetError, match="PGSERVICE"):
        connect(target(host="127.0.0.1", port=1), "pw", statement_timeout_ms=1000)


@pytest.mark.parametrize("password", ["pw", ""])
def test_a_refused_target_or_password_never_starts_pg_dump(tmp_path: Path, password: str) -> None:
    started = tmp_path / "started"
    fake = tmp_path / "pg_dump"
    fake.write_text(f"#!/bin/sh\ntouch {started}\n")
    fake.chmod(0o755)
    writer = LocalArtifactWriter(tmp_path, ORG, "out", "a.zst")
    hostile = target(host="127.0.0.1", port=1, dbname="host=/tmp user=postgres")
    refused = hostile if password else target(host="127.0.0.1", port=1)
    with pytest.raises(TargetError):
        dump_database(refused, password, [writer], lambda _: None, pg_dump=str(fake))
    assert not started.exists()
    assert not (tmp_path / "out").exists(), "no artifact was even opened"
