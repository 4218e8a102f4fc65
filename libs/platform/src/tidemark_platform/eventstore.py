"""Event stores: an eventsourcing application on PostgreSQL that records what it consumed.

Every service that turns Kafka messages into events uses a *process recorder*: the
tracking record (topic:partition, offset) is written in the same transaction as the
events, so a redelivered message is recognised and has no second effect. A plain
``Application`` would silently ignore the tracking (see NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import get_topic
from psycopg import Cursor, sql
from psycopg.rows import DictRow

from tidemark_platform.database import creating_tables, ensure_schema, eventstore_env

Fence = Callable[[Cursor[DictRow]], None]
"""A check run inside the transaction that writes events; raising refuses the write."""


class FencedProcessRecorder(PostgresProcessRecorder):
    """A process recorder whose writes can be fenced: ``app.save(*events, fence=check)``
    runs ``check`` in the very transaction that inserts the events, before them.

    A check that locks what it reads (``SELECT ... FOR SHARE``) holds it until the events
    are committed, so whatever would change it (another owner taking the work over)
    waits for the write, or the write sees the change and is refused.
    """

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        fence: Fence | None = kwargs.get("fence")
        if fence is not None:
            fence(curs)
        super()._insert_events(curs, stored_events, **kwargs)


class EventStoreApplication(Application[UUID]):
    """An event-sourced application whose recorder also keeps tracking records."""

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast(ProcessRecorder, self.recorder)

    @classmethod
    def on_postgres(cls, database_url: str, schema: str, **env: str) -> Any:
        recorder = {"PROCESS_RECORDER_TOPIC": get_topic(FencedProcessRecorder)}
        with creating_tables(database_url, schema):
            ensure_schema(database_url, schema)
            return cls(env={**eventstore_env(database_url, schema), **recorder, **env})

    def has_processed(self, tracking: Tracking) -> bool:
        return self.process_recorder.has_tracking_id(
            tracking.application_name, tracking.notification_id
        )

    def tracking_positions(self, suffix: str) -> dict[str, int]:
        """Tracking names ending in ``suffix`` (``"<topic>:<partition>"``) and their
        positions, whichever Kafka cluster they were recorded on."""
        recorder: Any = self.process_recorder
        datastore = getattr(recorder, "datastore", None)
        if datastore is None:  # an in-memory recorder: nothing kept between processes
            return {}
        query = sql.SQL(
            "SELECT application_name, notification_id FROM {}.{} "
            "WHERE application_name = %(suffix)s OR right(application_name, %(length)s) = "
            "%(slashed)s"
        ).format(sql.Identifier(datastore.schema), sql.Identifier(recorder.tracking_table_name))
        params = {"suffix": suffix, "slashed": "/" + suffix, "length": len(suffix) + 1}
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params)
            return {row["application_name"]: row["notification_id"] for row in cursor.fetchall()}

    def save_tracked(self, tracking: Tracking, *aggregates: Any) -> bool:
        """Save the aggregates' new events together with ``tracking``, atomically.

        Returns False, having written nothing, when the position was already recorded or
        an aggregate's event collides with one already stored (a duplicate command).
        """
        processing_event: ProcessingEvent[UUID] = ProcessingEvent(tracking)
        processing_event.collect_events(*aggregates)
        try:
            self._record(processing_event)
        except IntegrityError:
            return False
        return True
