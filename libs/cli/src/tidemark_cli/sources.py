"""Every event store of Tidemark: the audit commands read these, and only these.

Each is an eventsourcing application on PostgreSQL: one schema, and in it the table
``<application name>_events`` (eventsourcing's factory names it after the application)
with ``notification_id``, ``originator_id``, ``originator_version``, ``topic`` and
``state``; the state is the event's JSON as eventsourcing's transcoder wrote it, neither
compressed nor encrypted. A ``position`` is a store's ``notification_id``: unique and
increasing within one store, so ``(store, position)`` names one stored event for ever.

This module imports no service: every command of the CLI loads it, and importing the
services costs seconds. The names written here are checked against the services' own
constants by ``libs/cli/tests/test_sources.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EventSource:
    """One event store: the service that owns it, its schema and its application."""

    store: str  # unique name of the store, written in every exported line; = its schema
    service: str  # the owning service, as named in tidemark_contracts.services
    application_path: str  # "<module>:<class>" of its eventsourcing application
    application_name: str  # the application's ``name``, which names its table

    @property
    def schema(self) -> str:
        return self.store

    @property
    def events_table(self) -> str:
        return f"{self.application_name.lower()}_events"

    @property
    def application(self) -> Any:
        """The application class (imported on first use)."""
        module, _, name = self.application_path.partition(":")
        return getattr(importlib.import_module(module), name)

    def open(self, database_url: str) -> Any:
        """The store's application (close it when done); its ``to_envelope`` maps a stored
        event to the contract message its relay publishes, with the topic."""
        return self.application.on_postgres(database_url, self.schema)


SOURCES: tuple[EventSource, ...] = (
    EventSource(
        "gateway_catalog",
        "api-gateway",
        "tidemark_api_gateway.application:CatalogApplication",
        "gateway_catalog",
    ),
    EventSource(
        "scheduler_store",
        "scheduler",
        "tidemark_scheduler.application:SchedulerApplication",
        "scheduler",
    ),
    EventSource(
        "backup_runner",
        "backup-runner",
        "tidemark_backup_runner.application:BackupRunnerApplication",
        "backup_runner",
    ),
    EventSource(
        "restore_runner",
        "restore-runner",
        "tidemark_restore_runner.application:RestoreRunnerApplication",
        "restore_runner",
    ),
    EventSource("alerts", "alerts", "tidemark_alerts.application:AlertsApplication", "alerts"),
    EventSource(
        "alert_webhooks",
        "alerts",
        "tidemark_alerts.webhooks.application:WebhookDeliveryApplication",
        "alert_webhooks",
    ),
)

BY_STORE = {source.store: source for source in SOURCES}
