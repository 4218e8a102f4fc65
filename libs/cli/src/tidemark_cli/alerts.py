"""`tidemark alerts [count | read ID | dismiss ID]`: the organization's alerts through the
HTTP API (``tidemark alerts`` alone lists them)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from tidemark_cli import output
from tidemark_cli.api import connect

app = typer.Typer(
    help="Alerts: list them (the default), count, mark read, dismiss.",
    invoke_without_command=True,
    no_args_is_help=False,
)

Json = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
AlertId = Annotated[uuid.UUID, typer.Argument(help="the alert's id")]
MAX_LIMIT = 100


@app.callback()
def list_alerts(
    ctx: typer.Context,
    include_dismissed: Annotated[
        bool, typer.Option("--include-dismissed", help="also the dismissed ones")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="at most this many")] = 50,
    as_json: Json = False,
) -> None:
    """The organization's alerts, newest first (undismissed ones unless told)."""
    if ctx.invoked_subcommand is not None:
        return
    with connect() as api:
        page = api.get(
            "/backups/alerts",
            {"include_dismissed": str(include_dismissed).lower(), "limit": limit},
        )
    if as_json:
        output.print_json(page)
        return
    output.print_table(
        ("id", "severity", "kind", "title", "seen", "last seen", "read", "dismissed", "resolved"),
        (
            (
                a["id"],
                a["severity"],
                a["kind"],
                a["title"],
                a.get("occurrences"),
                a.get("lastSeenAt"),
                _mark(a.get("readAt")),
                _mark(a.get("dismissedAt")),
                _mark(a.get("resolvedAt")),
            )
            for a in page["items"]
        ),
        title=f"{len(page['items'])} alerts of {page['total']}",
    )


def _mark(at: str | None) -> str:
    return "yes" if at else ""


@app.command()
def count(as_json: Json = False) -> None:
    """How many alerts are unread and undismissed (and unread, and undismissed)."""
    with connect() as api:
        counts = api.get("/backups/alerts/count")
    if as_json:
        output.print_json(counts)
        return
    output.stdout.print(
        f"{counts['count']} new (unread and undismissed); "
        f"{counts['unread']} unread, {counts['undismissed']} undismissed",
        highlight=False,
    )


@app.command()
def read(alert_id: AlertId, as_json: Json = False) -> None:
    """Mark an alert read (it stays in the list until dismissed)."""
    _show(_post(f"/backups/alerts/{alert_id}/read"), as_json, "read")


@app.command()
def dismiss(alert_id: AlertId, as_json: Json = False) -> None:
    """Dismiss an alert (it leaves the default list)."""
    _show(_post(f"/backups/alerts/{alert_id}/dismiss"), as_json, "dismissed")


def _post(path: str) -> dict[str, Any]:
    with connect() as api:
        alert: dict[str, Any] = api.post(path)
    return alert


def _show(alert: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        output.print_json(alert)
    else:
        output.stdout.print(f"alert {alert['id']} {what}: {alert['title']}", highlight=False)
