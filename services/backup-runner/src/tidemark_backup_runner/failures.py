"""How a backup's failures read, and what of an invalid request can still be recorded.

Whether an error is worth retrying is the platform's to say (``tidemark_platform.failures``):
the runner retries the transient ones, a bounded number of times, and ends the backup
``failed`` at once on any other. No reason here repeats a rejected value or a secret:
reasons become events, kept forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from tidemark_contracts.backup import BackupTrigger, BackupType, DestinationRef
from tidemark_contracts.base import UtcDatetime, WireModel
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


class RefusedRequest(WireModel):
    """What a ``RequestBackup`` that failed validation must still say for its refusal to
    be recorded as a backup that ``failed``: whose it is and what it asked for. The
    database and the destinations' configurations are never kept: they are what is most
    often invalid, and may hold what must not be stored (a secret where a reference
    belongs)."""

    backup_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    trigger: BackupTrigger
    label: str | None = None
    requested_by: str
    requested_at: UtcDatetime
    destinations: list[DestinationRef]


def readable_request(payload: Mapping[str, Any]) -> RefusedRequest | None:
    """The parts of an invalid request's ``payload`` that identify the backup; None when
    they cannot all be read (such a command is parked instead). Destinations that cannot
    be read even as references are left out."""
    raw = payload.get("destinations")
    destinations = []
    for item in raw if isinstance(raw, list) else []:
        try:
            destinations.append(DestinationRef.model_validate(item))
        except ValidationError:
            continue
    try:
        return RefusedRequest.model_validate({**payload, "destinations": destinations})
    except ValidationError:
        return None
