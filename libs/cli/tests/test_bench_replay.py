"""bench/replay.py at a small size, so the benchmark cannot rot between its real runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_the_replay_bench_runs_at_a_small_size(database_url: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "replay.py"),
            "--events",
            "20000",
            "--rounds",
            "1",
            "--rebuild-events",
            "2000",
        ],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = done.stdout
    assert re.search(
        r"^export: [\d,]+ events/s = \d+\.\d\d x plain SQL read \(target >= 0\.5\)", summary, re.M
    ), summary
    rss = re.search(
        r"^export peak RSS: ([\d.]+) MiB at N/10 events, ([\d.]+) MiB at N=([\d,]+)", summary, re.M
    )
    assert rss, summary
    assert int(rss.group(3).replace(",", "")) >= 20000
    rebuild = re.search(
        r"^rebuild: [\d,]+ events/s = \d+\.\d{4} x plain SQL read \([\d,]+ rows/s\) "
        r"over ([\d,]+) stored events \(target >= 0\.5\)",
        summary,
        re.M,
    )
    assert rebuild, summary
    assert int(rebuild.group(1).replace(",", "")) >= 2000
