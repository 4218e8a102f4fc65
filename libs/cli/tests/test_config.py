"""Finding the system: environment variables first, else ``make run``'s run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tidemark_cli.config import discover
from tidemark_cli.errors import CliError

MANIFEST = {
    "state": "running",
    "gatewayUrl": "http://127.0.0.1:8000",
    "databaseUrl": "postgresql://tidemark:pw@127.0.0.1:5999/postgres",
    "kafkaBootstrapServers": "127.0.0.1:9999",
    "token": "tok-from-run",
}


def write_run(directory: Path, manifest: dict[str, str] = MANIFEST) -> Path:
    state = directory / ".state"
    state.mkdir(parents=True)
    path = state / "run.json"
    path.write_text(json.dumps(manifest))
    return path


def test_a_run_json_in_a_parent_directory_is_found(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    target = discover(env={}, cwd=below)
    assert target.run_file == run
    assert target.database_url == MANIFEST["databaseUrl"]
    assert target.kafka_bootstrap == "127.0.0.1:9999"
    assert target.need_api() == ("http://127.0.0.1:8000", "tok-from-run")


def test_any_environment_setting_names_a_deployment_and_run_json_is_not_read(
    tmp_path: Path,
) -> None:
    write_run(tmp_path)
    target = discover(env={"TIDEMARK_TOKEN": "tok-env"}, cwd=tmp_path)
    assert target.run_file is None
    assert target.token == "tok-env"
    # The deployment's token is never sent to the local stack's API: there is no API URL.
    with pytest.raises(CliError, match="no API URL: TIDEMARK_API_URL is not set"):
        target.need_api()
    target = discover(env={"DATABASE_URL": "postgresql://x"}, cwd=tmp_path)
    assert target.database_url == "postgresql://x"
    with pytest.raises(CliError, match="no Kafka"):
        target.need_kafka()  # never the local stack's Kafka with a deployment's database


def test_tidemark_state_dir_names_the_run_json_and_nothing_else_is_searched(tmp_path: Path) -> None:
    write_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = discover(env={"TIDEMARK_STATE_DIR": str(elsewhere)}, cwd=tmp_path)
    assert target.run_file is None
    with pytest.raises(CliError, match="no database: DATABASE_URL is not set and no `make run`"):
        target.need_database()


def test_a_missing_setting_is_one_clear_error_naming_its_variable(tmp_path: Path) -> None:
    write_run(tmp_path, {"state": "stopped", "gatewayUrl": "http://127.0.0.1:8000"})
    target = discover(env={}, cwd=tmp_path)
    with pytest.raises(
        CliError, match=r"no token: TIDEMARK_TOKEN is not set and .*run\.json has none"
    ):
        target.need_api()
    with pytest.raises(CliError, match="no Kafka: KAFKA_BOOTSTRAP_SERVERS"):
        target.need_kafka()


def test_an_unreadable_run_json_is_an_error_without_its_contents(tmp_path: Path) -> None:
    path = write_run(tmp_path)
    path.write_text('{"databaseUrl": "postgresql://u:hunter2@h/db", broken')
    with pytest.raises(CliError) as raised:
        discover(env={}, cwd=tmp_path)
    assert "hunter2" not in raised.value.message
    assert "JSONDecodeError" in raised.value.message


def test_text_from_servers_is_printed_as_it_is_never_as_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tidemark_cli import output

    output.print_table(("error",), [("[/var/lib/x] Field required [type=missing]",)])
    output.stdout.print("[bold]not bold[/bold]")
    printed = capsys.readouterr().out
    assert "[/var/lib/x] Field required [type=missing]" in printed
    assert "[bold]not bold[/bold]" in printed
