"""``tidemark``: the operator CLI. One typer application; each area adds its commands.

- ``events export | verify | republish``: audit work, straight on the event stores and Kafka
- ``projections rebuild``: the read models rebuilt from the event stores, compared, swapped
- ``backups list | show | trigger | delete | follow``, ``restore``, ``alerts``: the HTTP API
- ``dlq list | redrive``: parked Kafka messages

Errors are one line on stderr and a non-zero exit: 1 for a failure, 2 for a usage error.
"""

from __future__ import annotations

import sys
from urllib.parse import quote

import typer

from tidemark_cli import alerts, backups, dlq, events, projections, republish, restores
from tidemark_cli.config import discover
from tidemark_cli.errors import CliError

app = typer.Typer(
    name="tidemark",
    help="Tidemark's operator CLI: audit export and verification, read-model rebuilds, "
    "re-publication, and everyday backup work.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
events.app.command("republish")(republish.republish)
app.add_typer(events.app, name="events")
app.add_typer(projections.app, name="projections")
app.add_typer(backups.app, name="backups")
app.command("restore")(restores.restore)
app.add_typer(alerts.app, name="alerts")
app.add_typer(dlq.app, name="dlq")


def main() -> None:
    try:
        app()
    except CliError as exc:
        fail(exc.message, exc.code)
    except Exception as exc:
        # What the network says, on one line (their texts name hosts and ports, never
        # passwords). Checked without importing the libraries: a command that did not load
        # one cannot have failed in it, and every import costs the CLI's start.
        what = _network_failure(exc)
        if what is None:
            raise
        fail(what)


def _network_failure(exc: Exception) -> str | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        if type(exc) is psycopg.ProgrammingError:
            # libpq's complaint about a connection string quotes it, password and all.
            return "database: the database URL is not a valid connection string"
        return f"database: {_without_database_secrets(_first_line(exc))}"
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.HTTPError):
        return f"HTTP API: {type(exc).__name__}: {_first_line(exc)}"
    kafka_errors = sys.modules.get("aiokafka.errors")
    if kafka_errors is not None and isinstance(exc, kafka_errors.KafkaError):
        return f"Kafka: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _without_database_secrets(text: str) -> str:
    """``text`` with the configured database URL and its password, in any spelling a
    message could quote them, replaced by ``***``."""
    try:
        url = discover().database_url
    except CliError:
        url = None
    secrets = [url] if url else []
    if url:
        from psycopg.conninfo import conninfo_to_dict

        try:
            password = conninfo_to_dict(url).get("password")
        except Exception:  # an unparsable URL: its password is whatever sits before '@'
            password = url.partition("://")[2].rpartition("@")[0].partition(":")[2] or None
        if password:
            secrets += [str(password), quote(str(password), safe="")]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def fail(message: str, code: int = 1) -> None:
    print(f"tidemark: {message}", file=sys.stderr)
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
