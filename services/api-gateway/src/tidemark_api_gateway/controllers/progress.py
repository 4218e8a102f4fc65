"""Live progress of one backup over Server-Sent Events (design in ``progress.py``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import ServerSentEvent

from tidemark_api_gateway import queries
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import answers
from tidemark_api_gateway.problems import PROBLEM_JSON, Problem, ProblemDetail, not_found
from tidemark_api_gateway.progress import ProgressHub
from tidemark_api_gateway.readmodel import Pool
from tidemark_api_gateway.schemas import BackupOut

LAST_EVENT_ID = "Last-Event-ID"


def parse_last_event_id(value: str | None) -> int | None:
    """The id a reconnecting client names, or None for a new stream. An id this API never
    sends (not a number of at most 18 digits) also starts a new stream, with the current
    state first, as a server may ignore an id it does not know."""
    text = (value or "").strip()
    if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _answers() -> dict[int, ResponseSpec]:
    return {
        **answers(404),
        503: ResponseSpec(
            data_container=ProblemDetail,
            media_type=PROBLEM_JSON,
            description="Service Unavailable: this gateway is not following progress yet "
            "(Kafka unreachable); retry",
            generate_examples=False,
        ),
    }


class ProgressController(Controller):
    tags = ["backups"]

    @get(
        "/backups/{backup_id:uuid}/progress",
        responses=_answers(),
        media_type="text/event-stream",
        description=(
            "Server-Sent Events: the current state (a `progress` event), then live "
            "`progress` events `{backupId, status, phase, percent, bytesDone, bytesTotal, "
            "message, at}`, then `completed` or `failed` with the final Backup, and the "
            "stream ends. A backup already terminal (also `deleting`/`deleted`) gets its "
            "terminal event at once. Ids increase; `Last-Event-ID` resumes on any gateway "
            "without repeats or gaps; a client too far behind (or when the missed events "
            "cannot be read) gets the current state first instead, as a new stream does. "
            "A `: ping` comment at least every 15 s."
        ),
    )
    async def backup_progress(
        self,
        principal: Principal,
        backup_id: uuid.UUID,
        pool: Pool,
        progress: ProgressHub,
        last_event_id: Annotated[
            str | None,
            Parameter(
                header=LAST_EVENT_ID,
                required=False,
                description="the last event id received, to resume after it (an id this "
                "API never sent starts a new stream)",
            ),
        ] = None,
    ) -> ServerSentEvent:
        row = await queries.backup(pool, principal.organization_id, backup_id)
        if row is None:
            raise not_found("backup")
        resume_from = parse_last_event_id(last_event_id)
        if not progress.connected.is_set():
            raise Problem(503, "live progress is not available yet; retry")
        organization_id = principal.organization_id

        async def read_state() -> dict[str, Any] | None:
            found = await queries.backup(pool, organization_id, backup_id)
            if found is None:
                return None
            state: dict[str, Any] = BackupOut.model_validate(found).model_dump(
                mode="json", by_alias=True
            )
            return state

        return ServerSentEvent(
            progress.stream(backup_id, row["environment_id"], read_state, resume_from)
        )
