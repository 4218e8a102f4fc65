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
