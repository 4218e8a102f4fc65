"""The target's managed cluster as the restore drives it: ``pg_ctl`` and ``psql`` from
its bin directory, run as the data directory's owner (postgres refuses to run as root),
with a clean environment (the runner's libpq variables and secrets stay out).

The server is started again the way it last was: ``postmaster.opts`` (written by the
postmaster at every start) holds its options (socket directory, ``-c`` settings); only
the data directory and the port are the restore's (``-p`` the cluster's registered port).
Queries go over the Unix socket the running server names in ``postmaster.pid``, as the
owner's own role (the bootstrap superuser initdb names after the OS user).
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# postmaster.pid: line 4 is the port, line 5 the first socket directory.
_PID_PORT_LINE = 3
_PID_SOCKET_LINE = 4


class ServerError(Exception):
    """A server step failed; the message never holds a secret (the tools' stderr is
    kept out of it, their exit status is in)."""


def server_options(data_directory: Path, port: int) -> str:
    """The options the cluster last started with (``postmaster.opts``), without its data
    directory and port, plus ``-p port``: what ``pg_ctl -o`` takes (a shell string)."""
    try:
        recorded = (data_directory / "postmaster.opts").read_text()
        words = shlex.split(recorded)[1:]
    except (OSError, ValueError):
        words = []
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("-D", "-p"):
            skip = True
            continue
        if word.startswith(("--port=", "-p")) or word.startswith("-D"):
            continue
        kept.append(word)
    kept += ["-p", str(port)]
    return " ".join(shlex.quote(word) for word in kept)


@dataclass(frozen=True)
class Server:
    data_directory: Path
    bin_directory: Path
    port: int
    uid: int
    gid: int
    log_file: Path
    options: str

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return "postgres"

    def _environment(self) -> dict[str, str]:
        try:
            home = pwd.getpwuid(self.uid).pw_dir
        except KeyError:
            home = "/"
        return {"PATH": "/usr/bin:/bin", "HOME": home, "LC_ALL": "C", "LANG": "C"}

    def _run(
        self, argv: list[str], timeout: float, *, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        switch = os.geteuid() == 0 and self.uid != 0
        return subprocess.run(
            argv,
            user=self.uid if switch else None,
            group=self.gid if switch else None,
            extra_groups=[] if switch else None,
            env=self._environment(),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            check=False,
            # A Ctrl-C or SIGKILL meant for the runner never reaches the server.
            start_new_session=True,
        )

    def _tool(self, name: str) -> str:
        return str(self.bin_directory / name)

    def running(self) -> bool:
        """Whether a postmaster runs in the data directory (pg_ctl status)."""
        if not (self.data_directory / "postmaster.pid").exists():
            return False
        result = self._run([self._tool("pg_ctl"), "status", "-D", str(self.data_directory)], 30)
        return result.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_directory / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None

    def start(self, *, wait_seconds: float | None) -> None:
        """Start the server with its options; ``wait_seconds`` None: return as soon as
        the postmaster is launched (the caller polls), else wait for connections."""
        argv = [
            self._tool("pg_ctl"),
            "start",
            "-D",
            str(self.data_directory),
            "-l",
            str(self.log_file),
            "-o",
            self.options,
        ]
        argv += ["-W"] if wait_seconds is None else ["-w", "-t", str(int(wait_seconds))]
        result = self._run(argv, (wait_seconds or 60) + 60)
        if result.returncode != 0:
            raise ServerError(f"pg_ctl start exited with {result.returncode}")

    def stop(self, mode: str, timeout: float = 300) -> None:
        """Stop the server (``fast`` or ``immediate``); a server that is not running is
        stopped already."""
        if not self.running():
            return
        result = self._run(
            [
                self._tool("pg_ctl"),
                "stop",
                "-D",
                str(self.data_directory),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout + 30,
        )
        if result.returncode != 0 and self.running():
            raise ServerError(f"pg_ctl stop -m {mode} exited with {result.returncode}")

    def _socket(self) -> tuple[str, int] | None:
        try:
            lines = (self.data_directory / "postmaster.pid").read_text().splitlines()
            port = int(lines[_PID_PORT_LINE])
            socket = lines[_PID_SOCKET_LINE].strip() or "127.0.0.1"
        except (OSError, IndexError, ValueError):
            return None
        return socket, port

    def query(self, *statements: str, timeout: float = 30) -> str | None:
        """The value the last statement answers (each runs on its own, as ``psql -c``
        does), or None when the server cannot answer (not up yet, gone, refusing
        connections) or a statement fails."""
        where = self._socket()
        if where is None:
            return None
        host, port = where
        try:
            result = self._run(
                [
                    self._tool("psql"),
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-w",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    host,
                    "-p",
                    str(port),
                    "-U",
                    self.user,
                    "-d",
                    "template1",
                    *[word for statement in statements for word in ("-c", statement)],
                ],
                timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        if result.returncode != 0:
            return None
        return result.stdout.strip()

    def wait_until_answering(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.query("SELECT 1") == "1":
                return True
            if not self.running():
                return False
            time.sleep(0.2)
        return False
