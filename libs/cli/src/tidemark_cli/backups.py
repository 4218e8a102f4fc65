"""`tidemark backups`: (being built in issue 11)."""

from __future__ import annotations

import typer

app = typer.Typer(help="backups", no_args_is_help=True)
