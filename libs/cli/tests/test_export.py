"""`tidemark events export | verify` on real event stores (PostgreSQL), with a history
written by the services' own applications."""

from __future__ import annotations

import json
import os
import pty
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tidemark_cli.app import app
from tidemark_cli.audit import table_of
from tidemark_cli.sources import BY_STORE, SOURCES
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

STORE_INDEX = {source.store: index for index, source in enumerate(SOURCES)}


def export(url: str, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """Run the export in this process (typer's runner) and return its parsed lines."""
    out = tmp_path / f"export-{uuid.uuid4().hex[:6]}.jsonl"
    result = CliRunner().invoke(
        app,
        ["events", "export", *args, "--output", str(out)],
        env={"DATABASE_URL": url, "TIDEMARK_STATE_DIR": "/nonexistent"},
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return [json.loads(line) for line in out.read_bytes().splitlines()]


def events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert lines[0]["kind"] == "header"
    assert lines[-1]["kind"] == "trailer"
    assert lines[-1]["count"] == len(lines) - 2
    return lines[1:-1]


def short_type(line: dict[str, Any]) -> str:
    return str(line["type"]).rsplit(":", 1)[1]


def order_of(line: dict[str, Any]) -> tuple[str, int, int]:
    return line["recordedAt"], STORE_INDEX[line["store"]], line["position"]


def test_export_lists_every_stores_events_of_an_organization_in_the_order_they_happened(
    stores: Any, tmp_path: Path
) -> None:
    org = uuid.uuid4()
    made = stores.history(org)
    other = stores.history()  # another organization's history, interleaved in time after
    lines = events(export(stores.url, tmp_path, "--organization", str(org)))

    assert [order_of(line) for line in lines] == sorted(order_of(line) for line in lines)
    assert {line["store"] for line in lines} == {
        "gateway_catalog",
        "scheduler_store",
        "backup_runner",
        "restore_runner",
        "alerts",
    }
    mine = {str(v) for v in made.values() if not isinstance(v, list)} | {
        str(b) for b in made["backups"]
    }
    theirs = {str(v) for v in other.values() if not isinstance(v, list)} | {
        str(b) for b in other["backups"]
    }
    text = json.dumps(lines)
    assert not any(i in text or uuid.UUID(i).hex in text for i in theirs)
    assert (
        str(org)
        in {str(line["event"].get("organization_id", {}).get("_data_", "")) for line in lines}
        or org.hex in text
    )
    deleted, failed, kept = (str(b) for b in made["backups"])
    steps = {
        b: [short_type(x) for x in lines if x["aggregateId"] == b] for b in (deleted, failed, kept)
    }
    assert steps[deleted] == [
        "Backup.Requested",
        "Backup.Started",
        "Backup.Uploaded",
        "Backup.Completed",
        "Backup.DeletionRequested",
        "Backup.Deleted",
    ]
    assert steps[failed] == ["Backup.Requested", "Backup.Started", "Backup.Failed"]
    position = {id(x): n for n, x in enumerate(lines)}
    failure = next(
        x for x in lines if x["aggregateId"] == failed and short_type(x) == "Backup.Failed"
    )
    alert = next(x for x in lines if x["store"] == "alerts" and "Alert" in short_type(x))
    assert position[id(failure)] < position[id(alert)]
    assert any(x["aggregateId"] == str(made["restore"]) for x in lines)
    assert mine  # the history's ids, some of which every line above refers to
    # every line carries what the format promises
    for line in lines:
        assert line["service"] == BY_STORE[line["store"]].service
        assert line["recordedAt"].endswith("Z")
        assert len(line["recordedAt"]) == 27
        assert isinstance(line["aggregateVersion"], int)
        assert isinstance(line["event"], dict)


def test_events_recorded_at_the_same_time_are_ordered_by_store_then_position(
    stores: Any, tmp_path: Path
) -> None:
    org = uuid.uuid4()
    stores.history(org)
    same = "2026-03-01T12:00:00.000001+00:00"
    with psycopg.connect(stores.url, autocommit=True) as conn:
        for source in SOURCES:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = convert_to(regexp_replace(convert_from(state, 'UTF8'),"
                    ' \'^\\{{"timestamp":\\{{"_type_":"datetime_iso","_data_":"[^"]*"\','
                    ' \'{{"timestamp":{{"_type_":"datetime_iso","_data_":"\' || %s || \'"\'),'
                    " 'UTF8')"
                ).format(table_of(source)),
                (same,),
            )
    lines = events(export(stores.url, tmp_path, "--organization", str(org)))
    assert {line["recordedAt"] for line in lines} == {"2026-03-01T12:00:00.000001Z"}
    keys = [(STORE_INDEX[line["store"]], line["position"]) for line in lines]
    assert keys == sorted(keys)
    assert len({store for store, _ in keys}) == 5


def test_a_time_stored_in_another_layout_is_still_ordered_by_its_time(
    stores: Any, tmp_path: Path
) -> None:
    """A time on the second (Python drops the microseconds) or in another zone: parsed."""
    org = uuid.uuid4()
    made = stores.history(org)
    backup = made["backups"][2]
    table = table_of(BY_STORE["backup_runner"])
    with psycopg.connect(stores.url, autocommit=True) as conn:
        for version, moment in ((1, "2030-01-01T01:00:00+01:00"), (2, "2030-01-01T00:00:00+00:00")):
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = convert_to(regexp_replace(convert_from(state, 'UTF8'),"
                    ' \'"_data_":"[^"]*"\', \'"_data_":"\' || %s || \'"\'), \'UTF8\')'
                    " WHERE originator_id = %s AND originator_version = %s"
                ).format(table),
                (moment, backup, version),
            )
    lines = events(export(stores.url, tmp_path, "--aggregate", str(backup)))
    assert [(line["aggregateVersion"], line["recordedAt"]) for line in lines[-2:]] == [
        (1, "2030-01-01T00:00:00.000000Z"),
        (2, "2030-01-01T00:00:00.000000Z"),
    ]
    assert [order_of(line) for line in lines] == sorted(order_of(line) for line in lines)


def test_each_filter_takes_the_aggregates_whose_first_event_names_the_id(
    stores: Any, tmp_path: Path
) -> None:
    org = uuid.uuid4()
    one = stores.history(org)
    two = stores.history(org)  # the same organization, another project

    def aggregates(*args: str) -> set[str]:
        return {line["aggregateId"] for line in events(export(stores.url, tmp_path, *args))}

    by_org = aggregates("--organization", str(org))
    by_project = aggregates("--project", str(one["project"]))
    by_env = aggregates("--environment", str(one["environment"]))
    by_target = aggregates("--environment", str(one["other_environment"]))
    by_backup = aggregates("--aggregate", str(one["backups"][0]))

    ones_backups = {str(b) for b in one["backups"]}
    twos_backups = {str(b) for b in two["backups"]}
    assert ones_backups | twos_backups <= by_org
    # the project: itself, its environments (from the catalog) and all that names them
    assert {
        str(one["project"]),
        str(one["environment"]),
        str(one["other_environment"]),
    } <= by_project
    assert ones_backups | {str(one["restore"])} <= by_project
    assert not by_project & (twos_backups | {str(two["project"]), str(two["restore"])})
    # an environment: its backups and the restore from it; the restore into the other one
    assert ones_backups | {str(one["restore"]), str(one["environment"])} <= by_env
    assert str(one["other_environment"]) not in by_env
    assert str(one["restore"]) in by_target
    assert not by_target & ones_backups
    assert by_backup == {str(one["backups"][0])}
    assert by_org > by_project > by_env


def test_free_text_holding_another_organizations_id_puts_nothing_in_its_export(
    stores: Any, tmp_path: Path
) -> None:
    victim = uuid.uuid4()
    stores.history(victim)
    # Another organization's requests name the victim's id in free text, both spellings.
    for spelling in (str(victim), victim.hex):
        stores.history(requested_by=spelling)
    exported = events(export(stores.url, tmp_path, "--organization", str(victim)))
    assert exported
    text = json.dumps(exported, separators=(",", ":"))
    assert '"requested_by":"bench"' in text  # the victim's own requests are there
    # None of the other organization's requests, whose first events name the victim's id.
    assert f'"requested_by":"{victim}"' not in text
    assert f'"requested_by":"{victim.hex}"' not in text


def test_since_and_until_bound_the_recorded_time(stores: Any, tmp_path: Path) -> None:
    org = uuid.uuid4()
    stores.history(org)
    every = events(export(stores.url, tmp_path, "--organization", str(org)))
    times = sorted({line["recordedAt"] for line in every})
    since, until = times[3], times[-3]
    bounded = events(
        export(stores.url, tmp_path, "--organization", str(org), "--since", since, "--until", until)
    )
    assert [line["recordedAt"] for line in bounded] == [
        line["recordedAt"] for line in every if since <= line["recordedAt"] < until
    ]
    assert bounded
    assert len(bounded) < len(every)
    day = every[0]["recordedAt"][:10]
    assert len(
        events(export(stores.url, tmp_path, "--organization", str(org), "--since", day))
    ) == len(every)
    assert events(export(stores.url, tmp_path, "--organization", str(org), "--until", day)) == []


def test_the_export_holds_no_credential(stores: Any, tmp_path: Path, database_url: str) -> None:
    """The stores hold references (``secret:NAME``), never what they resolve to; and the
    control plane's own database password never enters an event either."""
    org = uuid.uuid4()
    stores.history(org, password_ref="secret:shop-db")
    raw = b"".join(
        (json.dumps(line, separators=(",", ":")) + "\n").encode()
        for line in export(stores.url, tmp_path, "--organization", str(org))
    )
    assert b"secret:shop-db" in raw  # the reference is there ...
    for password in (
        conninfo_to_dict(database_url).get("password"),
        conninfo_to_dict(stores.url).get("password"),
    ):
        assert password
        assert password.encode() not in raw


def test_an_untouched_export_verifies_also_against_the_store(
    stores: Any, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    org = uuid.uuid4()
    stores.history(org)
    out = tmp_path / "audit.jsonl"
    ran = cli(
        "events",
        "export",
        "--organization",
        str(org),
        "--output",
        str(out),
        database_url=stores.url,
    )
    assert ran.code == 0, ran.stderr
    assert ran.stdout == b""  # the file has the data; stdout nothing
    lines = out.read_bytes().splitlines()
    checked = cli(
        "events", "verify", str(out), "--against-store", "--json", database_url=stores.url
    )
    assert checked.code == 0, checked.stderr
    assert json.loads(checked.stdout) == {
        "ok": True,
        "lines": len(lines),
        "events": len(lines) - 2,
        "againstStore": True,
    }


def test_verify_against_the_store_names_the_line_whose_stored_row_was_altered(
    stores: Any, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    org = uuid.uuid4()
    made = stores.history(org)
    out = tmp_path / "audit.jsonl"
    assert (
        cli(
            "events", "export", "--organization", str(org), "-o", str(out), database_url=stores.url
        ).code
        == 0
    )
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    failed = str(made["backups"][1])
    target = next(
        x for x in lines if x.get("aggregateId") == failed and x["type"].endswith("Backup.Failed")
    )
    table = table_of(BY_STORE["backup_runner"])
    with psycopg.connect(stores.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
                "'password authentication failed', 'no error at all'), 'UTF8') "
                "WHERE notification_id = %s"
            ).format(table),
            (target["position"],),
        )
    checked = cli("events", "verify", str(out), "--against-store", database_url=stores.url)
    assert checked.code == 1
    assert checked.stdout == b""
    message = checked.stderr.strip()
    assert "\n" not in message
    assert f"line {target['seq']} differs from the store" in message
    assert f"backup_runner position {target['position']}" in message
    # without --against-store the file itself is still intact
    assert cli("events", "verify", str(out), database_url=None).code == 0

    with psycopg.connect(stores.url, autocommit=True) as conn:
        first = lines[1]
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE notification_id = %s").format(
                table_of(BY_STORE[first["store"]])
            ),
            (first["position"],),
        )
    gone = cli("events", "verify", str(out), "--against-store", "--json", database_url=stores.url)
    assert gone.code == 1
    verdict = json.loads(gone.stdout)
    assert verdict["line"] == 2
    assert "is not in the store" in verdict["detail"]


def test_verify_names_a_tampered_line_in_one_line_and_exits_1(
    stores: Any, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    org = uuid.uuid4()
    stores.history(org)
    out = tmp_path / "audit.jsonl"
    assert (
        cli(
            "events", "export", "--organization", str(org), "-o", str(out), database_url=stores.url
        ).code
        == 0
    )
    lines = out.read_bytes().splitlines(keepends=True)
    lines[4], lines[5] = lines[5], lines[4]
    out.write_bytes(b"".join(lines))
    checked = cli("events", "verify", str(out), database_url=None)
    assert checked.code == 1
    assert checked.stderr.count("\n") == 1
    assert "line 5 reordered" in checked.stderr
    as_json = cli("events", "verify", str(out), "--json", database_url=None)
    assert as_json.code == 1
    assert json.loads(as_json.stdout)["problem"] == "reordered"


def test_export_to_stdout_is_the_lines_only(stores: Any, cli: Callable[..., Any]) -> None:
    org = uuid.uuid4()
    made = stores.history(org)
    ran = cli("events", "export", "--aggregate", str(made["restore"]), database_url=stores.url)
    assert ran.code == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [x["kind"] for x in lines] == [
        "header",
        "event",
        "event",
        "event",
        "event",
        "event",
        "trailer",
    ]
    assert lines[0]["filters"] == {"aggregate": str(made["restore"])}
    assert ran.stderr == ""


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--organization", "not-an-id"], "--organization: not an id"),
        (["--environment", "secret:pw-like-value"], "--environment: not an id"),
        (["--since", "2026-11-30T10:00:00Z", "--until", "2026-11-29"], "--since is after --until"),
        (["--since", "yesterday"], "--since: not an ISO-8601 time"),
        (["--organization", str(uuid.uuid4()), "--project", str(uuid.uuid4())], "at most one"),
    ],
)
def test_bad_input_is_a_usage_error_in_one_line_and_writes_nothing(
    args: list[str], says: str, tmp_path: Path, cli: Callable[..., Any], database_url: str
) -> None:
    out = tmp_path / "audit.jsonl"
    ran = cli("events", "export", *args, "--output", str(out), database_url=database_url)
    assert ran.code == 2
    assert ran.stderr.count("\n") == 1
    assert ran.stderr.startswith("tidemark: ")
    assert says in ran.stderr
    assert "not-an-id" not in ran.stderr
    assert "pw-like-value" not in ran.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_path_fails_in_one_line(
    tmp_path: Path, cli: Callable[..., Any], database_url: str
) -> None:
    ran = cli(
        "events",
        "export",
        "--output",
        str(tmp_path / "missing" / "a.jsonl"),
        database_url=database_url,
    )
    assert ran.code == 1
    assert ran.stderr.count("\n") == 1
    assert "cannot write" in ran.stderr


def test_a_failed_export_leaves_no_file_behind(
    tmp_path: Path, cli: Callable[..., Any], database_url: str
) -> None:
    info = conninfo_to_dict(database_url)
    unreachable = f"postgresql://{info['user']}:{info['password']}@127.0.0.1:1/{info['dbname']}"
    out = tmp_path / "audit.jsonl"
    ran = cli("events", "export", "--output", str(out), database_url=unreachable)
    assert ran.code == 1
    assert ran.stderr.startswith("tidemark: database:")
    assert ran.stderr.count("\n") == 1
    assert str(info["password"]) not in ran.stderr
    assert list(tmp_path.iterdir()) == []


def test_verify_of_a_missing_file_fails_in_one_line(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    ran = cli("events", "verify", str(tmp_path / "nope.jsonl"), database_url=None)
    assert ran.code == 1
    assert ran.stderr.count("\n") == 1
    assert "cannot read" in ran.stderr


def test_a_progress_bar_is_drawn_on_a_terminal_when_the_output_is_a_file(
    stores: Any, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    org = uuid.uuid4()
    stores.history(org)
    out = tmp_path / "audit.jsonl"
    primary, secondary = pty.openpty()
    try:
        ran = cli(
            "events",
            "export",
            "--organization",
            str(org),
            "-o",
            str(out),
            database_url=stores.url,
            stderr=secondary,
        )
        os.close(secondary)
        drawn = b""
        try:
            while chunk := os.read(primary, 65536):
                drawn += chunk
        except OSError:
            pass  # the terminal closed: all of it read
    finally:
        os.close(primary)
    assert ran.code == 0
    assert b"exporting" in drawn
    assert b"exported" in drawn
    assert out.read_bytes().startswith(b'{"seq":1,"kind":"header"')
