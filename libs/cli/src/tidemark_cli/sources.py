"""Every event store of Tidemark: the audit commands read these, and only these.

Each is an eventsourcing application on PostgreSQL (one schema, table ``stored_events``
with ``notification_id``, ``originator_id``, ``originator_version``, ``topic``, ``state``;
the state is the event's JSON as eventsourcing's transcoder wrote it, neither compressed
nor encrypted). A ``position`` is a store's ``notification_id``: unique and increasing
within one store, so ``(store, position)`` names one stored event for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidemark_alerts.application import AlertsApplication
from tidemark_alerts.main import SCHEMA as ALERTS_SCHEMA
from tidemark_alerts.webhooks import SCHEMA as WEBHOOKS_SCHEMA
from tidemark_alerts.webhooks.application import WebhookDeliveryApplication
from tidemark_api_gateway.application import CATALOG_SCHEMA, CatalogApplication
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.main import SCHEMA as BACKUP_RUNNER_SCHEMA
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_restore_runner.application import RestoreRunnerApplication
from tidemark_restore_runner.main import SCHEMA as RESTORE_RUNNER_SCHEMA
from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.main import EVENTSTORE_SCHEMA as SCHEDULER_SCHEMA

EVENTS_TABLE = "stored_events"


@dataclass(frozen=True)
class EventSource:
    """One event store: the service that owns it, its schema and its application."""

    store: str  # unique name of the store, written in every exported line; = its schema
    service: str  # the owning service, as named in tidemark_contracts.services
    application: type[EventStoreApplication]

    @property
    def schema(self) -> str:
        return self.store

    def open(self, database_url: str) -> Any:
        """The store's application (close it when done); its ``to_envelope`` maps a stored
        event to the contract message its relay publishes, with the topic."""
        return self.application.on_postgres(database_url, self.schema)


SOURCES: tuple[EventSource, ...] = (
    EventSource(CATALOG_SCHEMA, "api-gateway", CatalogApplication),
    EventSource(SCHEDULER_SCHEMA, "scheduler", SchedulerApplication),
    EventSource(BACKUP_RUNNER_SCHEMA, "backup-runner", BackupRunnerApplication),
    EventSource(RESTORE_RUNNER_SCHEMA, "restore-runner", RestoreRunnerApplication),
    EventSource(ALERTS_SCHEMA, "alerts", AlertsApplication),
    EventSource(WEBHOOKS_SCHEMA, "alerts", WebhookDeliveryApplication),
)

BY_STORE = {source.store: source for source in SOURCES}
