"""`tidemark projections`: the read models rebuilt from the event stores, compared, swapped."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

from tidemark_cli.config import discover
from tidemark_cli.output import print_json, print_table, stderr

if TYPE_CHECKING:
    from tidemark_cli.rebuild import RebuildReport

# The registry imports every service's projections: loaded by these commands only, so the
# CLI's other commands do not wait for it.

app = typer.Typer(help="Read models kept from events.", no_args_is_help=True)


@app.command("list")
def list_read_models(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Every read model kept from stored events: its service, live schema, stores, tables."""
    from tidemark_cli.readmodels import READ_MODELS

    rows = [
        {
            "name": m.name,
            "service": m.service,
            "schema": m.schema,
            "stores": [s.store for s in m.stores()],
            "tables": list(m.compared_tables()),
        }
        for m in READ_MODELS
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        ("read model", "service", "schema", "stores", "tables"),
        (
            (r["name"], r["service"], r["schema"], ", ".join(r["stores"]), ", ".join(r["tables"]))
            for r in rows
        ),
        title="read models",
    )


@app.command("rebuild")
def rebuild(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Rebuild only this read model (repeatable; see `list`)."),
    ] = None,
    swap: Annotated[
        bool,
        typer.Option("--swap", help="Repair the live tables with the rebuilt rows, atomically."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Rebuild read models from the event stores and compare them with the live ones.

    Exit 0 when every read model equals its rebuild (or --swap repaired it), 1 when a
    difference was found. Rows written ahead of their event are listed as not yet recorded
    and are no difference."""
    from tidemark_cli.rebuild import rebuild_read_models

    database_url = discover().need_database()

    def progress(n: int) -> None:
        if stderr.is_terminal and n % 50_000 == 0:
            stderr.print(f"{n} events applied", highlight=False)

    report = asyncio.run(rebuild_read_models(database_url, only, swap=swap, progress=progress))
    if as_json:
        print_json(report.to_json())
    else:
        _print(report)
    if not report.repaired:
        raise typer.Exit(1)


def _print(report: RebuildReport) -> None:
    from tidemark_cli.rebuild import difference_json

    print_table(
        ("read model", "service", "schema", "result", "not yet recorded"),
        (
            (
                m.model.name,
                m.model.service,
                m.model.schema,
                _result(m.equal, m.swapped, len(m.differences), m.missing_tables),
                len(m.not_yet_recorded) or "",
            )
            for m in report.models
        ),
        title="read models rebuilt from the event stores",
    )
    for title, ahead in (
        ("differences", False),
        ("not yet recorded (written ahead of their event)", True),
    ):
        rows = [
            (m.model.name, d["table"], d["side"], json.dumps(d["key"]), ", ".join(d["columns"]))
            for m in report.models
            for d in map(difference_json, m.not_yet_recorded if ahead else m.differences)
        ]
        if rows:
            print_table(("read model", "table", "side", "key", "columns"), rows, title=title)
    stderr.print(
        f"{report.events_read} events in {report.seconds:.1f} s "
        f"({report.events_per_second:.0f} events/s)",
        highlight=False,
    )


def _result(equal: bool, swapped: bool, n: int, missing: list[str]) -> str:
    if missing:
        return f"live tables missing: {', '.join(missing)}"
    if equal:
        return "equal"
    rows = f"{n} different row{'' if n == 1 else 's'}"
    return f"{rows}, swapped" if swapped else rows
