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
from tidemark_platform.vault import KeyRing

from tidemark_devstack._util import dies_with_parent
from tidemark_devstack.paths import free_port, port_is_bindable

ServiceSpec = ServiceDescription  # what the stack starts: a service as the registry describes it


# Services told where local destinations live: the runner writes there, the gateway
# looks there when a destination is registered.
USES_DESTINATION_ROOT = ("api-gateway", "backup-runner", "restore-runner")
USES_FILES_ROOT = ("backup-runner", "restore-runner")

InstanceKey = tuple[str, int]
"""A service's name and instance number (0, 1, ...): one running process."""


@dataclass
class RunningService:
    spec: ServiceSpec
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    instance: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> InstanceKey:
        return self.spec.name, self.instance


def log_name(key: InstanceKey) -> str:
    """``<name>.log`` for instance 0 (as before replicas), ``<name>-<n>.log`` after it."""
    name, instance = key
    return f"{name}.log" if instance == 0 else f"{name}-{instance}.log"


@dataclass
class Stack:
    """Starts, watches and stops the services, ``replicas`` instances of each; instance
    ``n`` of a service logs to ``log_dir/<name>[-<n>].log``. Gateways listen on
    consecutive ports from ``gateway_port``; the other services on free ports. Local
    destinations live under ``destination_root`` (``<root>/<organization>/<path>``)."""

    database_url: str
    kafka_bootstrap: str
    jwt_secret: str
    log_dir: Path
    gateway_port: int = 8000
    extra_env: dict[str, str] = field(default_factory=dict)
    log_format: str = "json"
    replicas: int = 1
    # The keys that seal stored secrets, shared by every service (a new one per stack
    # unless given: a stack's secrets need not outlive it).
    secrets_keys: str = field(default_factory=lambda: KeyRing.generate("k1"))
    destination_root: Path | None = None
    # The runners' root of environments' files directories (full backups):
    # ``<root>/<organization>/<filesPath>``.
    files_root: Path | None = None
    services: dict[InstanceKey, RunningService] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def service(self, name: str, instance: int = 0) -> RunningService:
        return self.services[name, instance]

    def instances(self, name: str) -> list[RunningService]:
        """The service's instances (running or not), by instance number."""
        return [self.services[key] for key in sorted(self.services) if key[0] == name]

    def environment(self, spec: ServiceSpec, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            **self.extra_env,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "TIDEMARK_SECRETS_KEYS": self.secrets_keys,
            f"{spec.settings_prefix}HTTP_PORT": str(port),
            f"{spec.settings_prefix}LOG_FORMAT": self.log_format,
            "PYTHONUNBUFFERED": "1",
        }
        if spec.name == "api-gateway":
            env["TIDEMARK_API_GATEWAY_JWT_SECRET"] = self.jwt_secret
        if self.destination_root is not None and spec.name in USES_DESTINATION_ROOT:
            env[f"{spec.settings_prefix}DESTINATION_ROOT"] = str(self.destination_root)
        if self.files_root is not None and spec.name in USES_FILES_ROOT:
            env[f"{spec.settings_prefix}FILES_ROOT"] = str(self.files_root)
        return env

    def start(self, only: str | None = None, instance: int | None = None) -> None:
        """Start what is not running: every service's instances 0..replicas-1, or only the
        service ``only``, or only instance ``instance`` (which may be beyond replicas)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        numbers = range(self.replicas) if instance is None else [instance]
        for spec in SERVICES:
            if only is not None and spec.name != only:
                continue
            for number in numbers:
                self._start_one(spec, number)

    def _start_one(self, spec: ServiceSpec, instance: int) -> None:
        key = (spec.name, instance)
        previous = self.services.get(key)
        if previous is not None and previous.process.poll() is None:
            return
        port = previous.port if previous is not None else self._first_port(spec, instance)
        log = (self.log_dir / log_name(key)).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=self.environment(spec, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_parent(),  # main thread only: see there
        )
        self.services[key] = RunningService(spec, port, process, log, instance)

    def _first_port(self, spec: ServiceSpec, instance: int) -> int:
        """The port of an instance's first start (a restarted one keeps its own)."""
        if spec.name != "api-gateway":
            return self._unused_port()
        port = self.gateway_port + instance
        if instance > 0 and not port_is_bindable(port):
            # The next port is not ours to count on: the kernel hands ports near a free one
            # to clients' connections too. Any free one serves as well.
            return self._unused_port()
        return port

    def _unused_port(self) -> int:
        # free_port() releases the port it found, so two quick calls can return the same
        # one: never hand a port to a second service of this stack, nor a gateway's.
        gateways = range(self.gateway_port, self.gateway_port + max(self.replicas, 1) + 1)
        taken = {*gateways, *(s.port for s in self.services.values())}
        while (port := free_port()) in taken:
            pass
        return port

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every running instance (and the gateway's view of them all) is ready."""
        deadline = time.monotonic() + timeout
        pending = {k: s for k, s in self.services.items() if s.process.poll() is None}
        last_error = ""
        with httpx.Client(timeout=3.0) as client:
            while pending:
                for key in self.dead():
                    if key not in pending:
                        continue
                    code = self.services[key].process.returncode
                    raise RuntimeError(
                        f"{key[0]} #{key[1]} exited with {code}; see {self.log_dir / log_name(key)}"
                    )
                for key, service in list(pending.items()):
                    name = key[0]
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
                        del pending[key]
                    else:
                        last_error = f"{name}: {response.text[:300]}"
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"not ready after {timeout:.0f}s: {last_error}")
                if pending:
                    time.sleep(0.3)

    def signal(self, name: str, signum: int, instance: int = 0) -> None:
        """Send ``signum`` to one instance (its whole process group) and wait for its end."""
        service = self.services[name, instance]
        os.killpg(service.process.pid, signum)
        service.process.wait(timeout=30)

    def stop(
        self, only: str | None = None, timeout: float = 20.0, instance: int | None = None
    ) -> None:
        targets = [
            s
            for (name, number), s in self.services.items()
            if (only is None or name == only) and (instance is None or number == instance)
        ]
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

    def dead(self) -> list[InstanceKey]:
        return [k for k, s in self.services.items() if s.process.poll() is not None]
