"""`tidemark dlq`: (being built in issue 11)."""

from __future__ import annotations

import typer

app = typer.Typer(help="dlq", no_args_is_help=True)
