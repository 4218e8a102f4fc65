"""`tidemark restore BACKUP --target ENV [--at TIME]`: request a restore through the HTTP API
and follow it to its end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import typer

from tidemark_cli import output
from tidemark_cli.api import connect
from tidemark_cli.backups import exit_with
from tidemark_cli.errors import CliError
from tidemark_cli.follow import follow_stream, view_for

TargetType = Literal["same", "other", "new"]


def parse_utc(value: str) -> datetime:
    """An ISO-8601 time as UTC: ``2026-11-30``, ``2026-11-30T10:00:00Z``, or with an
    offset (converted); without a zone it is read as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter("not an ISO-8601 time (e.g. 2026-11-30T10:00:00Z)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def restore(
    backup_id: Annotated[uuid.UUID, typer.Argument(help="the backup to restore")],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="the environment to restore into (its id); with --type new, the new "
            "environment's name",
        ),
    ],
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="point in time (UTC ISO-8601) inside the environment's PITR coverage"
        ),
    ] = None,
    target_type: Annotated[
        TargetType | None,
        typer.Option(
            "--type",
            help="same (the backup's own environment), other, or new; default: same when "
            "the target is the backup's environment, else other",
        ),
    ] = None,
    safety_backup: Annotated[
        bool,
        typer.Option(
            "--safety-backup/--no-safety-backup",
            help="back up the target before it is overwritten (default: yes)",
        ),
    ] = True,
    no_follow: Annotated[
        bool, typer.Option("--no-follow", help="only request it; do not wait for its end")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Restore a backup into an environment, then follow it.

    Exit 0 when it completed, 1 when it failed.
    """
    pitr = utc_text(parse_utc(at)) if at is not None else None
    with connect() as api:
        body: dict[str, Any] = {"createSafetyBackup": safety_backup}
        if target_type == "new":
            body.update(targetType="new", newEnvironmentName=target)
        else:
            try:
                target_id = str(uuid.UUID(target))
            except ValueError:
                raise CliError("--target: not an environment id (a UUID)", code=2) from None
            backup = api.get(f"/backups/{backup_id}")
            own = backup["environmentId"] == target_id
            if target_type is None:
                target_type = "same" if own else "other"
            elif own != (target_type == "same"):
                # Never overwrite an environment the command did not name.
                raise CliError(
                    "--type same restores into the backup's own environment, which --target is not"
                    if target_type == "same"
                    else "--type other needs a --target other than the backup's environment",
                    code=2,
                )
            body["targetType"] = target_type
            if target_type == "other":
                body["targetEnvironmentId"] = target_id
        if pitr is not None:
            body["pitrTimestamp"] = pitr
        accepted = api.post(f"/backups/{backup_id}/restore", body)
        restore_id = accepted["id"]
        if as_json:
            if no_follow:
                output.print_json(accepted)
                return
            output.print_json({"id": None, "event": "accepted", "data": accepted})
        else:
            output.stdout.print(
                f"restore {restore_id} accepted ({accepted['status']})", highlight=False
            )
            if no_follow:
                return
        view = view_for(f"restore {restore_id}", as_json)
        # The stream is the backup's latest restore: this one, unless another was requested
        # of the same backup since.
        outcome = follow_stream(api, f"/backups/{backup_id}/restore/progress", view)
        if outcome.resource.get("id") != restore_id:
            raise CliError(
                f"another restore of backup {backup_id} started meanwhile; restore "
                f"{restore_id} is at GET /api/v1/restores/{restore_id}"
            )
        exit_with(outcome, "restore")
