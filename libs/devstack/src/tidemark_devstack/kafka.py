"""A local single-node Apache Kafka (KRaft) broker under a state directory, run from Maven jars."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from tidemark_devstack._util import locked, log_tail, run_checked
from tidemark_devstack.paths import free_port, port_answers, port_is_bindable, repo_root

POM_ENV = "TIDEMARK_KAFKA_POM"
JAVA_ENV = "TIDEMARK_JAVA"
MVN_ENV = "TIDEMARK_MVN"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# Lines the broker logs once it serves clients (the second is what Kafka 4.x prints).
_STARTED_MARKERS = ("Kafka Server started", "started (kafka.server.KafkaRaftServer)")
_HEAP = ["-Xmx512m", "-Xms256m"]

_LOG4J2 = """\
# Written by tidemark_devstack.kafka on every start; edits are overwritten.
status = warn
name = tidemark-local-kafka
# Kafka logs its own orderly shutdown from a JVM hook; log4j's hook would race it and
# drop those lines. The file appender flushes every line, so nothing is lost without it.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-request and state-change chatter drowns what matters in a dev log.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def kafka_pom() -> Path:
    """The Maven project that pins the broker's version and jars."""
    override = os.environ.get(POM_ENV)
    return Path(override) if override else repo_root() / "deploy" / "local" / "kafka" / "pom.xml"


def kafka_version(pom: Path | None = None) -> str:
    """The Kafka version pinned in the pom (its ``kafka.version`` property)."""
    path = pom or kafka_pom()
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", path.read_text())
    if not match:
        raise RuntimeError(f"no <kafka.version> property in {path}")
    return match.group(1)


def _java() -> str:
    override = os.environ.get(JAVA_ENV)
    if override:
        return override
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return "java"


def _random_cluster_id() -> str:
    # Kafka's Uuid string form: unpadded URL-safe base64 of 16 random bytes; Kafka itself
    # re-draws ids starting with "-" because they read as command-line options.
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def metadata_broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Send a Metadata (v4) request and return how many brokers the cluster reports.

    A broker that answers this with itself listed serves producers and consumers; a bare
    TCP accept comes earlier. v4 because Kafka 4 dropped Metadata v0-v3 (KIP-896).
    """
    client_id = b"tidemark-devstack"
    correlation_id = 0x7D5
    api_key_metadata, api_version = 3, 4
    request = (
        struct.pack(">hhih", api_key_metadata, api_version, correlation_id, len(client_id))
        + client_id
        # topics = null (all topics), allow_auto_topic_creation = false
        + struct.pack(">i?", -1, False)
    )
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    answered_id, _throttle_ms, brokers = struct.unpack_from(">iii", payload, 0)
    if answered_id != correlation_id:
        raise ConnectionError(f"metadata response for correlation id {answered_id}")
    return int(brokers)


def _pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our own exited child; otherwise it lingers as a zombie that
        # os.kill(pid, 0) still reports as present.
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class LocalKafka:
    """One KRaft broker+controller node kept in ``base_dir``; ``start()`` is idempotent.

    Layout of ``base_dir``: ``server.properties``, ``log4j2.properties``, ``ports.json``
    (broker and controller ports, chosen once and reused), ``cluster.id``, ``data/``
    (the log directory, formatted once), ``logs/server.log`` (the broker's log),
    ``kafka.out`` (JVM stdout/stderr) and ``kafka.pid``. The jars are shared by every
    base dir with the same parent: ``base_dir/../kafka-dist/<version>/libs``.
    """

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self._requested_port = port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- layout ----------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "logs" / "server.log"

    @property
    def out_file(self) -> Path:
        return self.base_dir / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.base_dir / "log4j2.properties"

    # -- installation ----------------------------------------------------------------------

    def ensure_installed(self) -> Path:
        """Copy the broker's runtime jars from Maven (once per version) and return their dir."""
        pom = kafka_pom()
        version = kafka_version(pom)
        libs = self.base_dir.parent / "kafka-dist" / version / "libs"
        if any(libs.glob(f"kafka_*-{version}.jar")):
            return libs
        libs.parent.mkdir(parents=True, exist_ok=True)
        with locked(libs.parent / ".lock"):
            if any(libs.glob(f"kafka_*-{version}.jar")):
                return libs
            # Download into a scratch dir and rename at the end: an interrupted copy
            # never looks like a complete installation.
            with tempfile.TemporaryDirectory(dir=libs.parent, prefix=".download-") as scratch:
                work = Path(scratch)
                # A copy of the pom, so Maven's target/ does not land in the source tree.
                shutil.copy2(pom, work / "pom.xml")
                run_checked(
                    [
                        os.environ.get(MVN_ENV, "mvn"),
                        "-q",
                        "-B",
                        "-f",
                        str(work / "pom.xml"),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={work / 'libs'}",
                        "-DincludeScope=runtime",
                    ],
                    what="Maven copy of the Kafka jars",
                    cwd=work,
                    timeout=900,
                )
                if not any((work / "libs").glob(f"kafka_*-{version}.jar")):
                    raise RuntimeError(f"Maven ran but no kafka_*-{version}.jar in {work}/libs")
                if libs.exists():
                    shutil.rmtree(libs)
                (work / "libs").rename(libs)
        return libs

    # -- configuration ---------------------------------------------------------------------

    def _ports(self) -> tuple[int, int]:
        """(broker, controller) ports: the remembered ones while free, else new ones."""
        path = self.base_dir / "ports.json"
        remembered: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        if self._requested_port is not None and not port_is_bindable(self._requested_port):
            raise RuntimeError(f"port {self._requested_port} on 127.0.0.1 is already in use")
        broker = self._requested_port or remembered.get("broker")
        if broker is None or (broker != self._requested_port and not port_is_bindable(broker)):
            broker = free_port()
        controller = remembered.get("controller")
        if controller is None or controller == broker or not port_is_bindable(controller):
            controller = free_port()
            while controller == broker:
                controller = free_port()
        if remembered != {"broker": broker, "controller": controller}:
            path.write_text(json.dumps({"broker": broker, "controller": controller}) + "\n")
        return broker, controller

    def _remembered_broker_port(self) -> int | None:
        if self._requested_port is not None:
            return self._requested_port
        path = self.base_dir / "ports.json"
        if not path.exists():
            return None
        port = json.loads(path.read_text()).get("broker")
        return int(port) if port is not None else None

    def _write_config(self, broker: int, controller: int) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # Fewer internal partitions than the default 50: the first consumer group and
            # the first idempotent producer come up faster on a laptop-sized node.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        lines = ["# Written by tidemark_devstack.kafka on every start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in settings.items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.log4j_file.write_text(_LOG4J2.format(log_file=self.log_file))

    def _java_argv(self, libs: Path, main_class: str, *args: str) -> list[str]:
        return [
            _java(),
            *_HEAP,
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def _format_once(self, libs: Path) -> None:
        # meta.properties is what the format step writes and what the broker checks.
        if (self.data_dir / "meta.properties").exists():
            return
        id_file = self.base_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_random_cluster_id() + "\n")
        run_checked(
            self._java_argv(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                id_file.read_text().strip(),
                "-c",
                str(self.config_file),
                "--ignore-formatted",
            ),
            what="Kafka storage format",
            cwd=self.base_dir,
            timeout=120,
        )

    # -- process ---------------------------------------------------------------------------

    def _pid(self) -> int | None:
        """The broker's pid from the pid file when that process still runs, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        # A recycled pid belongs to some other program: not our broker.
        if b"kafka.Kafka" not in cmdline or str(self.config_file).encode() not in cmdline:
            return None
        return pid

    def _started_logged(self) -> bool:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return False
        return any(marker in text for marker in _STARTED_MARKERS)

    def _serving(self, port: int) -> bool:
        if not port_answers(port):
            return False
        try:
            return metadata_broker_count("127.0.0.1", port) >= 1
        except (OSError, struct.error):
            return False

    def _failure(self, message: str) -> RuntimeError:
        # The cause is usually an ERROR line followed by many lines of orderly shutdown,
        # so the errors are quoted on their own before the tail.
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        errors = [line for line in lines if " ERROR " in line or " FATAL " in line][-10:]
        return RuntimeError(
            f"{message}\n--- errors in {self.log_file} ---\n"
            + "\n".join(errors)
            + f"\n--- {self.log_file} (tail) ---\n{log_tail(self.log_file)}"
            f"\n--- {self.out_file} (tail) ---\n{log_tail(self.out_file, 20)}"
        )

    def _wait_ready(self, pid: int, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise self._failure(f"Kafka (pid {pid}) exited during startup")
            if self._started_logged() and self._serving(port):
                return
            time.sleep(0.25)
        raise self._failure(f"Kafka did not start within {timeout:.0f}s on 127.0.0.1:{port}")

    def is_running(self) -> bool:
        """Whether our broker process is alive and answers on its port."""
        port = self._remembered_broker_port()
        return self._pid() is not None and port is not None and port_answers(port)

    def running_bootstrap(self) -> str | None:
        """``127.0.0.1:PORT`` when the broker runs, else None (never starts it)."""
        port = self._remembered_broker_port()
        if self._pid() is not None and port is not None and port_answers(port):
            return f"127.0.0.1:{port}"
        return None

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start (or reuse) the broker, wait until it serves metadata, return its bootstrap."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.base_dir / ".lock"):
            return self._start(timeout)

    def _start(self, timeout: float) -> str:
        pid = self._pid()
        port = self._remembered_broker_port()
        if pid is not None and port is not None:
            # Alive already: ready, or still starting from an earlier call.
            self._wait_ready(pid, port, timeout)
            return f"127.0.0.1:{port}"

        libs = self.ensure_installed()
        broker, controller = self._ports()
        self._write_config(broker, controller)
        self._format_once(libs)

        # Keep the previous run's logs one generation back; the readiness check reads
        # only this run's log.
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.log_file, self.out_file):
            if path.exists():
                path.replace(path.with_name(path.name + ".prev"))
        with self.out_file.open("wb") as out:
            self._proc = subprocess.Popen(
                self._java_argv(libs, "kafka.Kafka", str(self.config_file)),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: stop() signals the whole group, and a Ctrl-C
                # aimed at the caller (a test run, a shell) does not reach the broker.
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(self._proc.pid, broker, timeout)
        except BaseException:
            self._terminate(self._proc.pid)
            raise
        return f"127.0.0.1:{broker}"

    def _terminate(self, pid: int) -> None:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return
        # Never signal our own group (if the broker somehow shares it): only the pid then.
        own = group == os.getpgrp()

        def send(sig: signal.Signals) -> None:
            try:
                if own:
                    os.kill(pid, sig)
                else:
                    os.killpg(group, sig)
            except ProcessLookupError:
                pass

        send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.1)
        send(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the broker's process group, SIGKILL after 30 s; no-op when not running."""
        if not self.base_dir.exists():
            return
        with locked(self.base_dir / ".lock"):
            pid = self._pid()
            if pid is not None:
                self._terminate(pid)
            self.pid_file.unlink(missing_ok=True)
            self._proc = None
