"""What every benchmark script shares: its error, its progress notes and how it runs.

Imported by the scripts beside it (``python bench/<name>.py`` puts this folder first on
``sys.path``). A benchmark's summary lines go to stdout, its progress notes to stderr."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Callable

_T0 = time.monotonic()


class BenchError(Exception):
    """Something went wrong that makes the measurement meaningless."""


def note(message: str) -> None:
    """Progress, on stderr; the summary lines go to stdout."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def terminate(signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C: the cleanup runs either way."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(
    prefix: str,
    bench: Callable[[argparse.Namespace, contextlib.ExitStack], None],
    args: argparse.Namespace,
) -> int:
    """Run ``bench`` with a cleanup stack it registers on; the exit status: 0, 1 (an
    error, printed as a summary line) or 130 (interrupted)."""
    signal.signal(signal.SIGTERM, terminate)
    cleanup = contextlib.ExitStack()
    status = 0
    try:
        bench(args, cleanup)
    except KeyboardInterrupt:
        note("interrupted")
        status = 130
    except Exception as exc:
        if not isinstance(exc, BenchError):
            traceback.print_exc()
        print(f"{prefix} ERROR {exc}", flush=True)
        status = 1
    finally:
        # Cleanup must finish even when Ctrl-C is pressed again: every step has a timeout.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup.close()
    return status
