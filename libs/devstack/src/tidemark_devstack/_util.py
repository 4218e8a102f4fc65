"""Small helpers shared by the local servers: log tails and checked subprocess runs."""

from __future__ import annotations

import fcntl
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (two starters of one server take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that it is missing (for error messages)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            # Logs can be large; the tail is all an error message needs.
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    timeout: float | None = None,
    start_new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command, raising RuntimeError with its output when it fails."""
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=start_new_session,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {timeout}s: {' '.join(argv)}") from exc
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n"
            f"stdout:\n{result.stdout.strip()}\nstderr:\n{result.stderr.strip()}"
        )
    return result
