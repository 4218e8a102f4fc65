"""Every Tidemark service as a child process: for ``make run`` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from tidemark_contracts.services import SERVICES, ServiceDescription

from tidemark_devstack.paths import free_port

ServiceSpec = ServiceDescription  # what the stack starts: a service as the registry describes it


@dataclass
class RunningService:
    spec: ServiceSpec
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Starts, watches and stops the services; each logs to ``log_dir/<name>.log``."""

    database_url: str
    kafka_bootstrap: str
    jwt_secret: str
    log_dir: Path
    gateway_port: int = 8000
    extra_env: dict[str, str] = field(default_factory=dict)
    log_format: str = "json"
    services: dict[str, RunningService] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def environment(self, spec: ServiceSpec, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            **self.extra_env,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            f"{spec.settings_prefix}HTTP_PORT": str(port),
            f"{spec.settings_prefix}LOG_FORMAT": self.log_format,
            "PYTHONUNBUFFERED": "1",
        }
        if spec.name == "api-gateway":
            env["TIDEMARK_API_GATEWAY_JWT_SECRET"] = self.jwt_secret
        return env

    def start(self, only: str | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in SERVICES:
            if only is not None and spec.name != only:
                continue
            previous = self.services.get(spec.name)
            if previous is not None and previous.process.poll() is None:
                continue
            if spec.name == "api-gateway":
                port = self.gateway_port
            elif previous is not None:
                port = previous.port
            else:
                port = self._unused_port()
            log = (self.log_dir / f"{spec.name}.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=self.environment(spec, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.services[spec.name] = RunningService(spec, port, process, log)

    def _unused_port(self) -> int:
        # free_port() releases the port it found, so two quick calls can return the
        # same one: never hand a port to a second service of this stack.
        taken = {self.gateway_port, *(s.port for s in self.services.values())}
        while (port := free_port()) in taken:
            pass
        return port

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every service (and the gateway's view of them all) is ready."""
        deadline = time.monotonic() + timeout
        pending = dict(self.services)
        last_error = ""
        with httpx.Client(timeout=3.0) as client:
            while pending:
                for name in self.dead():
                    code = self.services[name].process.returncode
                    raise RuntimeError(
                        f"{name} exited with {code}; see {self.log_dir / (name + '.log')}"
                    )
                for name, service in list(pending.items()):
                    try:
                        response = client.get(f"{service.url}/ready")
                    except httpx.HTTPError as exc:
                        last_error = f"{name}: {exc!r}"
                        continue
                    if response.status_code == 200:
                        # The answer must come from this service, not whoever has the port.
                        answered = response.json().get("service")
                        if answered != name:
                            raise RuntimeError(f"port {service.port} of {name} is {answered}'s")
                        del pending[name]
                    else:
                        last_error = f"{name}: {response.text[:300]}"
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"not ready after {timeout:.0f}s: {last_error}")
                if pending:
                    time.sleep(0.3)

    def signal(self, name: str, signum: int) -> None:
        service = self.services[name]
        os.killpg(service.process.pid, signum)
        service.process.wait(timeout=30)

    def stop(self, only: str | None = None, timeout: float = 20.0) -> None:
        targets = [s for n, s in self.services.items() if only is None or n == only]
        for service in targets:
            if service.process.poll() is None:
                os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in targets:
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
            service.log.close()

    def dead(self) -> list[str]:
        return [n for n, s in self.services.items() if s.process.poll() is not None]
