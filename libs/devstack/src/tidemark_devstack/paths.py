"""Where the repository and its git-ignored runtime state live, and free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

STATE_DIR_ENV = "TIDEMARK_STATE_DIR"

_MARKERS = ("Makefile", ".git")


def _find_root(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if any((candidate / marker).exists() for marker in _MARKERS):
            return candidate
    return None


def repo_root() -> Path:
    """The repository checkout: the nearest directory holding a ``Makefile`` or ``.git``.

    Looked up from this file first (the editable install used in the workspace), then from
    the working directory, because a non-editable install lives in site-packages.
    """
    here = Path(__file__).resolve().parent
    root = _find_root(here) or _find_root(Path.cwd().resolve())
    if root is None:
        raise RuntimeError(
            f"cannot find the repository root (no Makefile or .git above {here} or the "
            f"working directory); set {STATE_DIR_ENV} to choose the state directory"
        )
    return root


def state_dir() -> Path:
    """The runtime state directory: ``$TIDEMARK_STATE_DIR`` or ``<repo>/.state`` (git-ignored)."""
    override = os.environ.get(STATE_DIR_ENV)
    path = Path(override).resolve() if override else repo_root() / ".state"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_bindable(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:port now.

    SO_REUSEADDR is set the way servers set it, so connections lingering in TIME_WAIT
    after a restart do not count as "taken": only a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
