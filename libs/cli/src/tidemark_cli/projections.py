"""`tidemark projections`: (being built in issue 11)."""

from __future__ import annotations

import typer

app = typer.Typer(help="projections", no_args_is_help=True)
