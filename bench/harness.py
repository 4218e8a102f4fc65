"""What every benchmark script shares: its error, its progress notes and how it runs.

Imported by the scripts beside it (``python bench/<name>.py`` puts this folder first on
``sys.path``). A benchmark's summary lines go to stdout, its progress notes to stderr."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from tidemark_devstack.kafka import LocalKafka
from tidemark_devstack.postgres import LocalPostgres

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


@contextlib.contextmanager
def cleanup_step(what: str) -> Iterator[None]:
    """A cleanup step that fails is noted, and the others still run."""
    try:
        yield
    except Exception as exc:
        note(f"cleanup: {what} failed: {exc!r}")


def deferred(stack: contextlib.ExitStack, what: str, action: Callable[[], object]) -> None:
    """Run ``action`` when ``stack`` closes, noting it (and its failure)."""

    def run() -> None:
        note(f"cleanup: {what}")
        with cleanup_step(what):
            action()

    stack.callback(run)


def postgres(root: Path, cleanup: contextlib.ExitStack) -> tuple[str, LocalPostgres | None]:
    """$DATABASE_URL, else a local cluster under ``root`` (stopped by ``cleanup``)."""
    admin_url = os.environ.get("DATABASE_URL")
    if admin_url:
        note("PostgreSQL: DATABASE_URL from the environment")
        return admin_url, None
    local_pg = LocalPostgres(root / "postgres")
    note(f"PostgreSQL: starting a local cluster in {local_pg.base_dir}")
    admin_url = local_pg.start()
    deferred(cleanup, "stop the local PostgreSQL", local_pg.stop)
    return admin_url, local_pg


def kafka(root: Path, cleanup: contextlib.ExitStack) -> tuple[str, LocalKafka | None]:
    """$KAFKA_BOOTSTRAP_SERVERS, else a local broker under ``root`` (stopped by ``cleanup``)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        note(f"Kafka: {bootstrap} from the environment")
        return bootstrap, None
    local_kafka = LocalKafka(root / "kafka")
    note(f"Kafka: starting a local broker in {local_kafka.base_dir}")
    bootstrap = local_kafka.start()
    deferred(cleanup, "stop the local Kafka", local_kafka.stop)
    return bootstrap, local_kafka
