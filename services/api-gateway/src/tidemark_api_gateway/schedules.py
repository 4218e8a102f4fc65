"""The schedules read model: one row per environment's schedule, kept from the scheduler's
``ScheduleConfigured`` events on ``schedule.events``.

The gateway writes the row ahead of the event, in the transaction of the PUT that
enqueues ``ConfigureSchedule`` (with this projection's own rule, unversioned, as the
pending backup row is written); the scheduler's event of that revision later writes the
same row again. A row holds only what the event carries, and an event older than the row
(a lower ``revision``) changes nothing, so replaying the events rebuilds the table.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from tidemark_contracts import SCHEDULE_EVENTS, Envelope, Message, Topic
from tidemark_contracts.schedule import ScheduleConfigured, ScheduleSettings
from tidemark_platform.database import Connection

Row = dict[str, Any]

COLUMNS = (
    "schedule_id",
    "organization_id",
    "project_id",
    "revision",
    "settings",
    "requested_by",
    "created_at",
    "updated_at",
)


def configured_row(row: Row | None, event: ScheduleConfigured) -> Row | None:
    """The schedule's row after ``event``; None when it changes nothing (the row holds a
    later revision: a PUT's row ahead of an older revision's event, or a redelivery)."""
    if row is not None and row["revision"] > event.revision:
        return None
    return {
        "environment_id": event.environment_id,
        "schedule_id": event.schedule_id,
        "organization_id": event.organization_id,
        "project_id": event.project_id,
        "revision": event.revision,
        "settings": event.settings.model_dump(mode="json", by_alias=True),
        "requested_by": event.requested_by,
        "created_at": event.created_at,
        "updated_at": event.updated_at,
    }


def settings_of(row: Row) -> ScheduleSettings:
    return ScheduleSettings.model_validate(row["settings"])


class SchedulesView:
    """The schedules read model as a platform projection of ``schedule.events``."""

    name = "gateway-schedules"
    topic: Topic = SCHEDULE_EVENTS
    tables: tuple[str, ...] = ("schedules",)
    # The Schedule aggregate's versions are shared with the commands it issues, which its
    # relay sends to backup.commands: on schedule.events they have gaps, so the platform's
    # "next version" guard would wait forever. ``revision`` orders what this view keeps.
    version_guard = False

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.schedules (
    environment_id uuid PRIMARY KEY,
    schedule_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL,
    revision integer NOT NULL,
    settings jsonb NOT NULL,
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- A destination's removal asks which of the organization's schedules name it.
CREATE INDEX IF NOT EXISTS schedules_by_organization ON {schema}.schedules (organization_id);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if not isinstance(message, ScheduleConfigured):
            return  # fired, missed, expired: the backups view and the alerts tell those
        cursor = await conn.execute(
            f"SELECT revision FROM {schema}.schedules WHERE environment_id = %s FOR UPDATE",
            (message.environment_id,),
        )
        new = configured_row(await cursor.fetchone(), message)
        if new is None:
            return
        values = [Jsonb(new[c]) if c == "settings" else new[c] for c in COLUMNS]
        await conn.execute(
            f"INSERT INTO {schema}.schedules (environment_id, {', '.join(COLUMNS)}) "
            f"VALUES (%s, {', '.join(['%s'] * len(COLUMNS))}) "
            "ON CONFLICT (environment_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS),
            [new["environment_id"], *values],
        )
