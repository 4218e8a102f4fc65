"""How a backup's failures read, and what of an invalid request can still be recorded.

Whether an error is worth retrying is the platform's to say (``tidemark_platform.failures``):
the runner retries the transient ones, a bounded number of times, and ends the backup
``failed`` at once on any other. No reason here repeats a rejected value or a secret:
reasons become events, kept forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from tidemark_contracts.backup import BackupRequested, DestinationRef
from tidemark_platform.dead_letters import describe_error
from tidemark_platform.failures import is_transient

from tidemark_backup_runner.pgtools import DumpError
from tidemark_backup_runner.secrets import SecretError


def failure_reason(exc: BaseException) -> str:
    """Why a backup failed (or an attempt was cut off), in words fit for an event."""
    if isinstance(exc, DumpError | SecretError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"the backup's request is invalid: {describe_error(exc)}"
    if is_transient(exc):
        return f"the runner's database or Kafka was unreachable ({type(exc).__name__})"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"storing the artifact failed: {exc.strerror or exc}{where}"
    return f"internal error: {type(exc).__name__}"


def readable_request(payload: Mapping[str, Any]) -> BackupRequested | None:
    """What a ``RequestBackup`` that failed validation must still say for its refusal to
    be recorded as a backup that ``failed``: whose it is and what it asked for, as the
    ``BackupRequested`` it would have become; None when that cannot all be read (such a
    command is parked instead). The database and the destinations' configurations are
    never kept: they are what is most often invalid, and may hold what must not be stored
    (a secret where a reference belongs). Destinations that cannot be read even as
    references are left out."""
    raw = payload.get("destinations")
    destinations = []
    for item in raw if isinstance(raw, list) else []:
        try:
            destinations.append(DestinationRef.model_validate(item))
        except ValidationError:
            continue
    try:
        return BackupRequested.model_validate({**payload, "destinations": destinations})
    except ValidationError:
        return None
