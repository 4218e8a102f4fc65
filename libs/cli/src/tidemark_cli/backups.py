"""`tidemark backups list | show | trigger | delete | follow`: backups through the HTTP API."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import typer

from tidemark_cli import output
from tidemark_cli.api import Api, connect
from tidemark_cli.errors import CliError
from tidemark_cli.follow import Outcome, follow_stream, human_bytes, view_for

app = typer.Typer(help="Backups: list, show, trigger, delete, follow.", no_args_is_help=True)

BackupType = Literal["db", "full"]
BackupStatus = Literal["pending", "running", "completed", "failed", "deleting", "deleted"]
PAGE = 100  # the API's largest page

Json = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
BackupId = Annotated[uuid.UUID, typer.Argument(help="the backup's id")]


@app.command("list")
def list_backups(
    environment: Annotated[
        uuid.UUID | None, typer.Option("--environment", "-e", help="this environment's only")
    ] = None,
    project: Annotated[
        uuid.UUID | None, typer.Option("--project", "-p", help="this project's only")
    ] = None,
    status: Annotated[BackupStatus | None, typer.Option(help="only in this status")] = None,
    backup_type: Annotated[
        BackupType | None, typer.Option("--type", help="only of this type")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=PAGE, help="at most this many")] = 20,
    as_json: Json = False,
) -> None:
    """Backups, newest first.

    An environment's, a project's, or (by default) those of every project of the
    organization.
    """
    if environment is not None and project is not None:
        raise CliError("give --environment or --project, not both", code=2)
    with connect() as api:
        if environment is not None:
            page = api.get(
                f"/environments/{environment}/backups",
                {"status": status, "type": backup_type, "limit": limit},
            )
            items, total = page["items"], page["total"]
        else:
            projects = [str(project)] if project else [p["id"] for p in _all(api, "/projects")]
            items = []
            for project_id in projects:
                found = _all(api, f"/projects/{project_id}/backups", {"status": status})
                # The project list has no type filter: it is applied here, page by page.
                matching = (b for b in found if backup_type is None or b["type"] == backup_type)
                items.extend(_first(matching, limit))
            items.sort(key=lambda b: (b["createdAt"], b["id"]), reverse=True)
            items, total = items[:limit], None
    if as_json:
        output.print_json({"items": items, "total": total})
        return
    output.print_table(
        ("id", "environment", "type", "status", "size", "started", "completed"),
        (
            (
                b["id"],
                (b.get("environment") or {}).get("name") or b["environmentId"],
                b["type"],
                b["status"],
                human_bytes(b.get("sizeBytes")),
                b.get("startedAt"),
                b.get("completedAt"),
            )
            for b in items
        ),
        title=f"{len(items)} backups" + (f" of {total}" if total is not None else ""),
    )


def _all(api: Api, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of a list endpoint, fetched a page at a time as they are read."""
    offset = 0
    while True:
        page = api.get(path, {**(params or {}), "limit": PAGE, "offset": offset})
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return


def _first(items: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    taken = []
    for item in items:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


@app.command()
def show(backup_id: BackupId, as_json: Json = False) -> None:
    """One backup, with its destinations."""
    with connect() as api:
        backup = api.get(f"/backups/{backup_id}")
    if as_json:
        output.print_json(backup)
        return
    print_backup(backup)


def print_backup(backup: dict[str, Any]) -> None:
    fields = (
        "id",
        "environmentId",
        "projectId",
        "type",
        "trigger",
        "label",
        "status",
        "sizeBytes",
        "checksum",
        "compression",
        "createdAt",
        "startedAt",
        "completedAt",
        "durationMs",
        "error",
        "walStartLsn",
        "walEndLsn",
    )
    output.print_table(
        ("field", "value"),
        ((name, backup.get(name)) for name in fields if backup.get(name) is not None),
        title=f"backup {backup['id']}",
    )
    destinations = backup.get("destinations") or []
    if destinations:
        output.print_table(
            ("destination", "type", "status", "location", "size", "uploaded"),
            (
                (
                    d.get("name"),
                    d.get("type"),
                    d.get("status"),
                    d.get("location"),
                    human_bytes(d.get("sizeBytes")),
                    d.get("uploadedAt"),
                )
                for d in destinations
            ),
            title="destinations",
        )


@app.command()
def trigger(
    environment: Annotated[
        uuid.UUID, typer.Option("--environment", "-e", help="the environment to back up")
    ],
    backup_type: Annotated[BackupType, typer.Option("--type", help="db or full")] = "db",
    label: Annotated[str | None, typer.Option(help="a label for the backup")] = None,
    destinations: Annotated[
        list[uuid.UUID] | None,
        typer.Option(
            "--destination",
            help="where to store it (repeatable); default: the schedule's destinations, "
            "else the organization's default ones",
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="follow it to its end")] = False,
    as_json: Json = False,
) -> None:
    """Request a manual backup (202: accepted, pending); with --follow, wait for its end."""
    body: dict[str, Any] = {"type": backup_type}
    if label is not None:
        body["label"] = label
    if destinations:
        body["destinationIds"] = [str(d) for d in destinations]
    with connect() as api:
        backup = api.post(f"/environments/{environment}/backups", body)
        if as_json:
            # With --follow these are JSON lines: the accepted backup, then its events.
            output.print_json(
                {"id": None, "event": "accepted", "data": backup} if follow else backup
            )
        else:
            output.stdout.print(
                f"backup {backup['id']} accepted ({backup['status']})", highlight=False
            )
        if follow:
            exit_with(follow_backup(api, backup["id"], as_json))


@app.command()
def delete(
    backup_id: BackupId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    as_json: Json = False,
) -> None:
    """Delete a backup: it turns `deleting` and is removed from every destination."""
    with connect() as api:
        if not yes:
            if not sys.stdin.isatty():
                raise CliError("not deleting without --yes: stdin is not a terminal", code=2)
            backup = api.get(f"/backups/{backup_id}")
            question = (
                f"Delete backup {backup['id']} ({backup['type']}, {backup['status']}, "
                f"created {backup['createdAt']}) from every destination?"
            )
            if not typer.confirm(question, err=True):
                raise CliError("not deleted")
        backup = api.delete(f"/backups/{backup_id}")
    if as_json:
        output.print_json(backup)
    else:
        output.stdout.print(f"backup {backup['id']} {backup['status']}", highlight=False)


@app.command("follow")
def follow_command(backup_id: BackupId, as_json: Json = False) -> None:
    """Follow a backup's progress to its end.

    Exit 0 when it completed, 1 when it failed (also when it had ended before).
    """
    with connect() as api:
        exit_with(follow_backup(api, str(backup_id), as_json))


def follow_backup(api: Api, backup_id: str, as_json: bool) -> Outcome:
    view = view_for(f"backup {backup_id}", as_json)
    return follow_stream(api, f"/backups/{backup_id}/progress", view)


def exit_with(outcome: Outcome, what: str = "backup") -> None:
    """Exit 0 when ``outcome`` completed; else the error line and exit 1."""
    resource = outcome.resource
    if outcome.succeeded:
        return
    error = " ".join(str(resource.get("error") or "no reason given").split())
    raise CliError(f"{what} {resource.get('id')} {resource.get('status', 'failed')}: {error}")
