"""Where the CLI finds the system: a real deployment's environment, or ``make run``'s stack.

A deployment is named by environment variables; when none of the four below is set, the
CLI uses the local stack's ``run.json`` that ``make run`` writes in its state directory
(``$TIDEMARK_STATE_DIR/run.json``, else the first ``.state/run.json`` in the current
directory or one of its parents). Never a mix of the two: a token given for a deployment
is never sent to a local stack's API, nor a deployment's events to a local Kafka.

=========================  ===========================  ======================================
setting                    environment variable         run.json key
=========================  ===========================  ======================================
database (event stores)    ``DATABASE_URL``             ``databaseUrl``
Kafka                      ``KAFKA_BOOTSTRAP_SERVERS``  ``kafkaBootstrapServers``
HTTP API                   ``TIDEMARK_API_URL``         ``gatewayUrl``
bearer token               ``TIDEMARK_TOKEN``           ``token``
=========================  ===========================  ======================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidemark_cli.errors import CliError

DATABASE_ENV = "DATABASE_URL"
KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
API_URL_ENV = "TIDEMARK_API_URL"
TOKEN_ENV = "TIDEMARK_TOKEN"  # noqa: S105 (a variable name)
STATE_DIR_ENV = "TIDEMARK_STATE_DIR"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class Target:
    """What the CLI talks to. ``None``: not configured anywhere."""

    database_url: str | None = None
    kafka_bootstrap: str | None = None
    api_url: str | None = None
    token: str | None = None
    run_file: Path | None = None  # the run.json read, if any

    def _missing(self, what: str, variable: str) -> CliError:
        where = f" and {self.run_file} has none" if self.run_file else " and no `make run` is found"
        return CliError(f"no {what}: {variable} is not set{where}")

    def need_database(self) -> str:
        if not self.database_url:
            raise self._missing("database", DATABASE_ENV)
        return self.database_url

    def need_kafka(self) -> str:
        if not self.kafka_bootstrap:
            raise self._missing("Kafka", KAFKA_ENV)
        return self.kafka_bootstrap

    def need_api(self) -> tuple[str, str]:
        """The API's base URL and the bearer token."""
        if not self.api_url:
            raise self._missing("API URL", API_URL_ENV)
        if not self.token:
            raise self._missing("token", TOKEN_ENV)
        return self.api_url.rstrip("/"), self.token


def find_run_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    """``$TIDEMARK_STATE_DIR/run.json``, else ``.state/run.json`` here or in a parent."""
    state_dir = env.get(STATE_DIR_ENV)
    if state_dir:
        path = Path(state_dir) / RUN_FILE
        return path if path.is_file() else None
    for directory in (cwd, *cwd.parents):
        path = directory / ".state" / RUN_FILE
        if path.is_file():
            return path
    return None


def _read_run_file(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(loaded, dict):
        raise CliError(f"cannot read {path}: not a JSON object")
    return loaded


def discover(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Target:
    """The target from the environment, or else from ``make run``'s run.json."""
    env = os.environ if env is None else env
    deployment = any(env.get(v) for v in (DATABASE_ENV, KAFKA_ENV, API_URL_ENV, TOKEN_ENV))
    run_file = None if deployment else find_run_file(env, cwd or Path.cwd())
    manifest = _read_run_file(run_file) if run_file else {}

    def pick(variable: str, key: str) -> str | None:
        value = env.get(variable) or manifest.get(key)
        return str(value) if value else None

    return Target(
        database_url=pick(DATABASE_ENV, "databaseUrl"),
        kafka_bootstrap=pick(KAFKA_ENV, "kafkaBootstrapServers"),
        api_url=pick(API_URL_ENV, "gatewayUrl"),
        token=pick(TOKEN_ENV, "token"),
        run_file=run_file,
    )
