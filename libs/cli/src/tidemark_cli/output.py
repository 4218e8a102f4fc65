"""How commands print: rich tables and progress for people, ``--json`` for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Results go to stdout; progress, warnings and errors to stderr, so `> file` keeps data only.
# No markup: what is printed comes from servers and users ("[/var/lib/x]", "[type=missing]")
# and must appear as it is, never be read as rich's markup (or fail as bad markup).
stdout = Console(markup=False)
stderr = Console(stderr=True, markup=False)


def print_json(value: Any) -> None:
    """One JSON document on stdout (dates and UUIDs as strings)."""
    sys.stdout.write(json.dumps(value, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    stdout.print(table)
