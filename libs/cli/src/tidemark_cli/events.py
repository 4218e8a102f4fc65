"""`tidemark events export | verify`: every store's events as one hash-chained file, and
the proof that a file is still what was exported (and still what the stores hold).

The format is documented in docs/cli/audit.md; the chain is chain.py's, the queries
audit.py's. ``events republish`` is registered on this app by app.py (republish.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tidemark_cli import audit, chain, output
from tidemark_cli.config import discover
from tidemark_cli.errors import CliError

app = typer.Typer(
    help="The event stores: audit export and verification, re-publication.", no_args_is_help=True
)

USAGE = 2
PROGRESS_STEP = 10_000


def parse_id(value: str | None, flag: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        # Not echoed: whatever was typed there is not ours to repeat into logs.
        raise CliError(f"{flag}: not an id (expected a UUID)", USAGE) from None


def parse_time(value: str | None, flag: str) -> datetime | None:
    """UTC ISO-8601: a date (midnight UTC) or a date and time; no zone means UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{flag}: not an ISO-8601 time (e.g. 2026-11-30 or 2026-11-30T10:00:00Z)", USAGE
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def build_query(
    organization: str | None,
    project: str | None,
    environment: str | None,
    aggregate: str | None,
    since: str | None,
    until: str | None,
) -> audit.Query:
    given: list[tuple[audit.ScopeKind, uuid.UUID]] = []
    for kind, value in (
        ("organization", organization),
        ("project", project),
        ("environment", environment),
        ("aggregate", aggregate),
    ):
        parsed = parse_id(value, f"--{kind}")
        if parsed is not None:
            given.append((kind, parsed))  # type: ignore[arg-type]
    if len(given) > 1:
        raise CliError(
            "give at most one of --organization, --project, --environment, --aggregate", USAGE
        )
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if start is not None and end is not None and start > end:
        raise CliError("--since is after --until", USAGE)
    scope = audit.Scope(*given[0]) if given else None
    return audit.Query(scope, start, end)


@contextlib.contextmanager
def _destination(path: Path | None) -> Iterator[BinaryIO]:
    """stdout, or a temporary file beside ``path`` renamed to it only once complete: an
    export that fails leaves no half-written file behind."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = path.expanduser()
    try:
        handle, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        with os.fdopen(handle, "wb", buffering=1 << 20) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _with_progress(bodies: Iterable[bytes], progress: Progress, total: int) -> Iterator[bytes]:
    task = progress.add_task("exporting", total=total)
    for done, body in enumerate(bodies, start=1):
        yield body
        if done % PROGRESS_STEP == 0:
            progress.update(task, completed=done)
    progress.update(task, completed=total)


@app.command("export")
def export(
    organization: Annotated[
        str | None, typer.Option(help="the organization's history (id)")
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="the project's and its environments' history (id)")
    ] = None,
    environment: Annotated[str | None, typer.Option(help="the environment's history (id)")] = None,
    aggregate: Annotated[str | None, typer.Option(help="one aggregate's events (id)")] = None,
    since: Annotated[
        str | None, typer.Option(help="events recorded at or after this UTC time")
    ] = None,
    until: Annotated[str | None, typer.Option(help="events recorded before this UTC time")] = None,
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")
    ] = None,
) -> None:
    """Export events of every store in one global order as hash-chained JSON lines."""
    query = build_query(organization, project, environment, aggregate, since, until)
    database_url = discover().need_database()
    show_progress = output_file is not None and sys.stderr.isatty()
    exported_at = audit.iso(datetime.now(UTC))
    with _destination(output_file) as out, audit.connect(database_url) as conn:
        statement, params, sources = audit.export_query(conn, query)
        total = 0
        if show_progress:
            row = conn.execute(audit.count_query(statement), params).fetchone()
            total = int(row[0]) if row else 0
        writer = chain.ChainWriter(out)
        writer.header(exported_at, query.filters(), [s.store for s in sources])
        bodies: Iterable[bytes] = audit.stream_bodies(conn, statement, params)
        if show_progress:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=output.stderr,
                transient=True,
            ) as progress:
                writer.events_from(_with_progress(bodies, progress, total))
        else:
            writer.events_from(bodies)
        writer.trailer()
    if output_file is not None:
        output.stderr.print(f"exported {writer.events} events to {output_file}")


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="an export of `tidemark events export`")],
    against_store: Annotated[
        bool, typer.Option("--against-store", help="also compare every event with its store")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the result as JSON")] = False,
) -> None:
    """Check an export's hash chain (and with --against-store, the stores as they are now)."""
    try:
        with file.open("rb") as data:
            verdict = chain.verify(data)
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
    result: dict[str, Any] = verdict.as_json()
    if verdict.ok and against_store:
        with audit.connect(discover().need_database()) as conn:
            difference = audit.compare_with_store(conn, verdict.event_lines)
        result["againstStore"] = True
        if difference is not None:
            result = {
                "ok": False,
                "problem": "differs from the store",
                "line": difference.line,
                "detail": difference.detail,
                "lines": verdict.lines,
            }
    if as_json:
        output.print_json(result)
    elif result["ok"]:
        store = " and matches the stores" if against_store else ""
        output.stdout.print(
            f"intact{store}: {result['events']} events ({result['lines']} lines)", highlight=False
        )
    else:
        raise CliError(f"{file}: line {result['line']} {result['problem']}: {result['detail']}")
    if not result["ok"]:
        raise typer.Exit(1)
