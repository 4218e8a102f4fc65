"""``make run`` with replicas: N instances of every service, listed in ``.state/run.json``."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tidemark_contracts.services import SERVICES
from tidemark_devstack import run as run_module
from tidemark_devstack import stack as stack_module
from tidemark_devstack.paths import free_port, port_is_bindable
from tidemark_devstack.stack import Stack

REPLICAS = 2


def test_gateways_take_consecutive_ports_from_the_configured_one() -> None:
    assert run_module.gateway_ports(8000, 3) == [8000, 8001, 8002]
    with pytest.raises(run_module.RunError, match="past 65535"):
        run_module.gateway_ports(65535, 2)


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_a_replica_count_that_is_not_a_positive_number_is_refused(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(run_module.REPLICAS_ENV, raw)
    with pytest.raises(run_module.RunError, match=run_module.REPLICAS_ENV):
        run_module._replicas()


def test_other_services_never_get_a_port_a_replica_gateway_will_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answers = iter([8001, 8000, 40001])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(answers))
    services = Stack("postgresql://x", "127.0.0.1:1", "s", tmp_path, gateway_port=8000, replicas=2)
    assert services._unused_port() == 40001


def test_a_replica_gateway_whose_next_port_is_taken_gets_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        first = holder.getsockname()[1] - 1  # the second gateway's port is held
        services = Stack("postgresql://x", "127.0.0.1:1", "s", tmp_path, gateway_port=first)
        gateway = next(spec for spec in SERVICES if spec.name == "api-gateway")
        assert services._first_port(gateway, 0) == first
        second = services._first_port(gateway, 1)
        assert second != first + 1
        assert port_is_bindable(second)


CLI_SETTINGS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "TIDEMARK_API_URL", "TIDEMARK_TOKEN")


def wait_for_run_file(path: Path, state: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        if path.exists():
            manifest: dict[str, Any] = json.loads(path.read_text())
            if manifest["state"] == state:
                return manifest
        assert process.poll() is None, f"make run exited with {process.returncode}"
        assert time.monotonic() < deadline, f"run.json never said {state!r}"
        time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
def test_make_run_with_two_replicas_lists_ten_instances_and_marks_them_stopped_on_exit(
    database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Both gateways' ports must be free, not only the first one free_port() found.
    first_port = free_port()
    while not all(port_is_bindable(first_port + n) for n in range(REPLICAS)):
        first_port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIDEMARK_STATE_DIR": str(tmp_path),
        run_module.REPLICAS_ENV: str(REPLICAS),
        run_module.HTTP_PORT_ENV: str(first_port),
    }
    command = [str(Path(sys.executable).parent / "tidemark-dev"), "run"]
    output = (tmp_path / "make-run.out").open("wb")
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    run_file = tmp_path / run_module.RUN_FILE
    try:
        manifest = wait_for_run_file(run_file, "running", process)
        instances = manifest["instances"]
        assert len(instances) == REPLICAS * len(SERVICES) == 10
        assert sorted((i["service"], i["instance"]) for i in instances) == sorted(
            (spec.name, n) for spec in SERVICES for n in range(REPLICAS)
        )
        gateways = sorted(i["httpPort"] for i in instances if i["service"] == "api-gateway")
        assert gateways == [first_port, first_port + 1]
        assert len({i["httpPort"] for i in instances}) == 10, "every instance its own port"
        for instance in instances:
            assert instance["running"]
            assert alive(instance["pid"])
            health = httpx.get(f"http://127.0.0.1:{instance['httpPort']}/health", timeout=5)
            assert health.json()["service"] == instance["service"]
        # The printed schedule examples work as printed (with the printed token).
        printed = (tmp_path / "make-run.out").read_text().splitlines()
        [export] = [line for line in printed if line.startswith("export TIDEMARK_TOKEN=")]
        examples = [line for line in printed if line.startswith("curl") and "/schedule" in line]
        assert len(examples) == 2, printed
        # And the alerts and webhook examples, in the order printed (secret, then webhook).
        examples += [
            line
            for line in printed
            if line.startswith("curl")
            and any(p in line for p in ("/alerts", "/secrets", "/webhooks"))
        ]
        assert len(examples) == 2 + 5, printed
        for example in examples:
            script = f"{export}\n{example.replace('curl -sS', 'curl -sS --fail-with-body', 1)}"
            done = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, (example, done.stdout, done.stderr)
            assert json.loads(done.stdout), done.stdout
        # The operator CLI examples, as printed, with nothing in the environment to find
        # the stack but the state directory: run.json (owner-only) says where it all is.
        assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
        assert json.loads(run_file.read_text())["token"] == export.split("'")[1]
        cli = [line for line in printed if line.startswith("uv run tidemark ")]
        assert len(cli) == 3, printed
        bare = {k: v for k, v in os.environ.items() if k not in CLI_SETTINGS}
        for line in cli:
            argv = [sys.executable, "-m", "tidemark_cli", *shlex.split(line)[3:]]
            done = subprocess.run(
                argv,
                env={**bare, "TIDEMARK_STATE_DIR": str(tmp_path)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert done.stdout.startswith("intact: "), done.stdout
    finally:
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=120)
        finally:
            output.close()
    assert status == 0, (tmp_path / "make-run.out").read_text()[-3000:]
    stopped = json.loads(run_file.read_text())
    assert stopped["state"] == "stopped"
    assert [i["running"] for i in stopped["instances"]] == [False] * 10
    assert not [i for i in stopped["instances"] if alive(i["pid"])]
