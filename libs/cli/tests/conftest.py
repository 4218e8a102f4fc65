"""Fixtures of the CLI's tests: real event stores in a fresh database, a real history in
them (written by the services' own applications), and the CLI run as a process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench"


def _load_replay() -> ModuleType:
    """bench/replay.py, whose ``drive_history`` is the history the benchmark copies: the
    tests check the export on the very events the benchmark measures."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # replay.py imports its neighbour harness.py
    spec = importlib.util.spec_from_file_location("tidemark_bench_replay", BENCH / "replay.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def replay() -> ModuleType:
    return _load_replay()


@dataclass
class Stores:
    url: str
    apps: dict[str, Any]
    replay: ModuleType

    def history(self, organization_id: uuid.UUID | None = None, **kwargs: Any) -> dict[str, Any]:
        """An organization's history (bench/replay.py ``drive_history``): ids by role."""
        made: dict[str, Any] = self.replay.drive_history(
            self.apps, organization_id or uuid.uuid4(), **kwargs
        )
        return made


@pytest.fixture
def stores(create_database: Callable[..., str], replay: ModuleType) -> Iterator[Stores]:
    """Every store of ``SOURCES`` in a fresh database, opened by its own application."""
    url = create_database("audit")
    apps = replay.open_stores(url)
    try:
        yield Stores(url, apps, replay)
    finally:
        for app in apps.values():
            app.close()


@dataclass
class Ran:
    code: int
    stdout: bytes
    stderr: str


def run_cli(*args: str, database_url: str | None, **kwargs: Any) -> Ran:
    """``python -m tidemark_cli ARGS`` with only ``database_url`` configured."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["TIDEMARK_STATE_DIR"] = "/nonexistent"  # never a make-run stack of this machine
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "tidemark_cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        timeout=240,
        check=False,
        **kwargs,
    )
    return Ran(done.returncode, done.stdout, (done.stderr or b"").decode())


@pytest.fixture
def cli() -> Callable[..., Ran]:
    return run_cli
