"""The service stack gives each service a port of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tidemark_devstack import stack as stack_module
from tidemark_devstack.stack import Stack


def test_services_never_share_a_port_even_when_free_port_repeats_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # free_port() releases what it found, so quick calls can return the same port.
    answers = iter([40001, 40001, 8000, 40001, 40002, 40003, 40002, 40004])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(answers))
    services = Stack("postgresql://x", "127.0.0.1:1", "secret", tmp_path, gateway_port=8000)
    ports = []
    for name in ("scheduler", "backup-runner", "restore-runner", "alerts"):
        port = services._unused_port()
        ports.append(port)
        no_process: Any = None  # only the port matters here
        services.services[name, 0] = stack_module.RunningService(
            stack_module.SERVICES[0], port, no_process, no_process
        )
    assert ports == [40001, 40002, 40003, 40004]


def test_the_gateway_and_the_runner_share_the_destination_root(tmp_path: Path) -> None:
    root = tmp_path / "destinations"
    services = Stack("postgresql://x", "127.0.0.1:1", "s", tmp_path, destination_root=root)
    by_name = {spec.name: spec for spec in stack_module.SERVICES}
    gateway = services.environment(by_name["api-gateway"], 8000)
    runner = services.environment(by_name["backup-runner"], 8102)
    scheduler = services.environment(by_name["scheduler"], 8101)
    assert gateway["TIDEMARK_API_GATEWAY_DESTINATION_ROOT"] == str(root)
    assert runner["TIDEMARK_BACKUP_RUNNER_DESTINATION_ROOT"] == str(root)
    assert not [k for k in scheduler if k.endswith("DESTINATION_ROOT")]


def test_a_service_dies_with_the_process_that_started_it_even_when_that_is_sigkilled(
    tmp_path: Path,
) -> None:
    """CI's hard stop SIGKILLs the test session; the services it started must not outlive
    it (they did: a rerun then ran beside them). The starter here is a real process that
    starts a child the way the stack does, prints the child's pid and is SIGKILLed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    starter = tmp_path / "starter.py"
    starter.write_text(
        "import subprocess, sys, time\n"
        "from tidemark_devstack._util import dies_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "                         start_new_session=True, preexec_fn=dies_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, str(starter)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    os.kill(child, 0)  # running: the state the kill interrupts
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # The orphan is reparented to init (or a subreaper) which reaps it; a zombie
        # still answers kill(0), so look at its state too.
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived the process that started it")
