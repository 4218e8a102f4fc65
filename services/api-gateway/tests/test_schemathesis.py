"""Schemathesis over the served OpenAPI document: no request it allows answers 500, and
every answer is one the document promises (all checks; examples, coverage, fuzzing and
stateful phases; authenticated as one organization with both scopes).

Fuzzed environments name arbitrary database hosts, so the gateway runs alone, in its own
process, on a database of its own, with a Kafka address that refuses every connection
(a socket this test holds bound and never listens on): the gateway accepts commands into
its outbox as it does during a Kafka outage, no relay can publish them, no runner can
consume them, and no host a fuzzed request names is ever contacted.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tidemark_devstack.e2e import make_token
from tidemark_devstack.paths import free_port
from tidemark_devstack.postgres import create_database_at, drop_database_at
from tidemark_platform.vault import KeyRing

pytestmark = pytest.mark.integration

JWT_SECRET = "schemathesis-secret-that-is-long-enough-0123456789"
# Test cases per operation and phase. 2 cores shared with other work: the whole run
# (14 operations, four phases, ~1150 requests) took 20 s on idle cores and about three
# minutes while the other suites ran.
MAX_EXAMPLES = 25
SEED = 20261129
RUN_TIMEOUT = 600
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def refused_kafka() -> Iterator[str]:
    """A loopback address where nothing listens, and nothing else can while we hold it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def lone_gateway(
    database_url: str, refused_kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway alone on a fresh database; its URL once ``/health`` answers."""
    name = f"schemathesis_{secrets.token_hex(4)}"
    gateway_database = create_database_at(database_url, name)
    port = free_port()
    log_path = tmp_path_factory.mktemp("lone-gateway") / "api-gateway.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TIDEMARK_", "PG")) and key != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env.update(
        {
            "DATABASE_URL": gateway_database,
            "KAFKA_BOOTSTRAP_SERVERS": refused_kafka,
            "TIDEMARK_API_GATEWAY_HTTP_PORT": str(port),
            "TIDEMARK_API_GATEWAY_JWT_SECRET": JWT_SECRET,
            "TIDEMARK_SECRETS_KEYS": KeyRing.generate("k1"),
            "TIDEMARK_API_GATEWAY_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidemark_api_gateway.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drop_database_at(database_url, name)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {log_path.read_text()[-3000:]}")
            try:
                response = client.get(f"{url}/health")
                if response.status_code == 200 and response.json()["service"] == "api-gateway":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"the gateway did not answer /health: {log_path.read_text()[-3000:]}")


def test_schemathesis_finds_no_failure(lone_gateway: str, tmp_path: Path) -> None:
    token = make_token(
        uuid.uuid4(), secret=JWT_SECRET, scope="backups:read backups:write", expires_in=3600
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(CONFIG),
            "run",
            f"{lone_gateway}/schema/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {token}",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output[-4000:])  # the summary, shown with -rA
    assert result.returncode == 0, output[-20000:]
    # Exit 0 is also what a run that tested nothing says: every served operation was tested.
    document = httpx.get(f"{lone_gateway}/schema/openapi.json").json()
    served = sum(
        method in ("get", "put", "post", "delete", "patch")
        for item in document["paths"].values()
        for method in item
    )
    assert f"Selected: {served}/{served}" in output, output[-5000:]
    assert f"Tested: {served}" in output, output[-5000:]
