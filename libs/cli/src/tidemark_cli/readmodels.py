"""Every read model Tidemark keeps from stored events: what ``projections rebuild`` rebuilds.

Each entry names the service that keeps it, the live schema its projection runs in (as the
service's ``main.py`` wires it), the projection, and the tables compared. Its event stores
are the stores of the services that publish the projection's topic; of their events only
those on that topic are applied (what the live consumer receives from Kafka).

Rows a service writes *ahead* of the event that will say the same (the gateway's pending
backup row, a schedule's next revision, an alert marked read...) are not errors: each read
model says which differences are such rows (``ahead``), reported as "not yet recorded".

Not here, because they are not kept from stored events: progress (``backup.progress``,
``restore.progress`` are never stored), heart beats, dead letters, outboxes and relay
positions, work and lease tables (``work``, ``deletions``, ``wal_receivers``), the webhook
deliveries' queue (``alert_webhooks.deliveries``: claims, attempts and due times are the
deliverer's) and the recent changes kept for late registrations (``alert_changes``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidemark_alerts.main import SCHEMA as ALERTS_SCHEMA
from tidemark_alerts.webhooks import SCHEMA as ALERT_WEBHOOKS_SCHEMA
from tidemark_alerts.webhooks.projection import AlertDeliveriesProjection, WebhookRegistrations
from tidemark_api_gateway.alerts_view import AlertsView
from tidemark_api_gateway.projection import COUNT_KEY
from tidemark_api_gateway.projection import BackupsView as GatewayBackupsView
from tidemark_api_gateway.readmodel import SCHEMA as GATEWAY_SCHEMA
from tidemark_api_gateway.restores_view import RestoresView
from tidemark_api_gateway.schedules import SchedulesView
from tidemark_api_gateway.webhooks_view import WebhooksView
from tidemark_backup_runner.main import CATALOG_SCHEMA as BACKUP_RUNNER_CATALOG_SCHEMA
from tidemark_backup_runner.walview import WalSchedulesView
from tidemark_contracts.services import SERVICES
from tidemark_platform.catalog import CatalogView
from tidemark_platform.projection import Projection
from tidemark_restore_runner.main import SCHEMA as RESTORE_RUNNER_SCHEMA
from tidemark_restore_runner.view import BackupEventsView
from tidemark_scheduler.backups_view import BackupsView as SchedulerBackupsView
from tidemark_scheduler.main import SCHEMA as SCHEDULER_SCHEMA

from tidemark_cli.sources import SOURCES, EventSource

Row = Mapping[str, Any]


@dataclass(frozen=True)
class RowDifference:
    """One row that differs: ``live`` or ``rebuilt`` is None when the row is on one side."""

    table: str
    key: dict[str, Any]
    live: Row | None
    rebuilt: Row | None

    @property
    def side(self) -> str:
        if self.rebuilt is None:
            return "live-only"
        if self.live is None:
            return "rebuilt-only"
        return "differs"

    @property
    def columns(self) -> list[str]:
        """The columns whose values differ (every column of a one-sided row)."""
        if self.live is None or self.rebuilt is None:
            return sorted(self.live or self.rebuilt or {})
        live, rebuilt = self.live, self.rebuilt
        return sorted(c for c in {*live, *rebuilt} if live.get(c) != rebuilt.get(c))


Ahead = Callable[[Sequence[RowDifference]], set[int]]
"""Which of a read model's differences are rows written ahead of their event (indexes)."""


def nothing_ahead(differences: Sequence[RowDifference]) -> set[int]:
    return set()


@dataclass(frozen=True)
class ReadModel:
    name: str  # unique across the registry (what --only names)
    service: str
    schema: str  # the live schema
    make: Callable[[], Projection]
    tables: tuple[str, ...] = ()  # compared and swapped; () = the projection's own tables
    ahead: Ahead = field(default=nothing_ahead)

    def projection(self) -> Projection:
        return self.make()

    def compared_tables(self) -> tuple[str, ...]:
        return self.tables or tuple(self.make().tables)

    def stores(self) -> tuple[EventSource, ...]:
        """The event stores whose events feed it: those of the services that publish its
        topic, in SOURCES order."""
        topic = self.make().topic
        publishers = {s.name for s in SERVICES if topic in s.produces}
        return tuple(source for source in SOURCES if source.service in publishers)


def _backups_ahead(differences: Sequence[RowDifference]) -> set[int]:
    """The gateway writes a backup's pending row with its command, and the ``deleting``
    status with a deletion's: both by the projection's own rule, before the runner records
    the event. The counts these rows moved are ahead too, and only those."""
    ahead: set[int] = set()
    delta: dict[tuple[str, ...], int] = {}
    for i, d in enumerate(differences):
        if d.table != "backups" or d.live is None:
            continue
        pending = d.rebuilt is None and d.live.get("status") == "pending"
        deleting = (
            d.rebuilt is not None
            and d.live.get("status") == "deleting"
            and d.rebuilt.get("status") in ("completed", "failed")
            and d.columns == ["status"]
        )
        if pending or deleting:
            ahead.add(i)
            old = None if d.rebuilt is None else _count_key(d.rebuilt)
            new = _count_key(d.live)
            if old is not None:
                delta[old] = delta.get(old, 0) - 1
            delta[new] = delta.get(new, 0) + 1
    for i, d in enumerate(differences):
        if d.table != "backup_counts":
            continue
        key = _count_key(d.live or d.rebuilt or {})
        live_n = int((d.live or {}).get("n", 0))
        rebuilt_n = int((d.rebuilt or {}).get("n", 0))
        if delta.get(key, 0) != 0 and live_n == rebuilt_n + delta[key]:
            ahead.add(i)
    return ahead


def _count_key(row: Row) -> tuple[str, ...]:
    return tuple(str(row.get(c)) for c in COUNT_KEY)


def _schedules_ahead(differences: Sequence[RowDifference]) -> set[int]:
    """The gateway writes a schedule's next revision with its command, before the
    scheduler records it."""
    return {
        i
        for i, d in enumerate(differences)
        if d.live is not None
        and (d.rebuilt is None or int(d.live["revision"]) > int(d.rebuilt["revision"]))
    }


def _restores_ahead(differences: Sequence[RowDifference]) -> set[int]:
    """The gateway writes a restore's pending row with its command."""
    return {
        i
        for i, d in enumerate(differences)
        if d.rebuilt is None and d.live is not None and d.live.get("status") == "pending"
    }


def _alerts_ahead(differences: Sequence[RowDifference]) -> set[int]:
    """The gateway marks an alert read or dismissed with the command, before the alerts
    service records it: only those times differ, set live and not yet rebuilt."""
    marks = {"read_at", "dismissed_at"}
    return {
        i
        for i, d in enumerate(differences)
        if d.table == "alerts"
        and d.live is not None
        and d.rebuilt is not None
        and d.columns
        and set(d.columns) <= marks
        and all(d.rebuilt.get(c) is None for c in d.columns)
    }


READ_MODELS: tuple[ReadModel, ...] = (
    # The catalog first: its tables are locked first by a swap, as the gateway locks a
    # destination before it writes a backup's row.
    ReadModel("gateway-catalog", "api-gateway", GATEWAY_SCHEMA, CatalogView),
    ReadModel("gateway-webhooks", "api-gateway", GATEWAY_SCHEMA, WebhooksView),
    ReadModel("scheduler-catalog", "scheduler", SCHEDULER_SCHEMA, CatalogView),
    ReadModel("backup-runner-catalog", "backup-runner", BACKUP_RUNNER_CATALOG_SCHEMA, CatalogView),
    ReadModel("alerts-catalog", "alerts", ALERTS_SCHEMA, CatalogView),
    ReadModel("alerts-webhooks", "alerts", ALERT_WEBHOOKS_SCHEMA, WebhookRegistrations),
    ReadModel(
        "gateway-backups", "api-gateway", GATEWAY_SCHEMA, GatewayBackupsView, ahead=_backups_ahead
    ),
    ReadModel(
        "gateway-schedules", "api-gateway", GATEWAY_SCHEMA, SchedulesView, ahead=_schedules_ahead
    ),
    ReadModel(
        "gateway-restores", "api-gateway", GATEWAY_SCHEMA, RestoresView, ahead=_restores_ahead
    ),
    ReadModel("gateway-alerts", "api-gateway", GATEWAY_SCHEMA, AlertsView, ahead=_alerts_ahead),
    ReadModel("scheduler-backups", "scheduler", SCHEDULER_SCHEMA, SchedulerBackupsView),
    ReadModel(
        "backup-runner-wal-schedules",
        "backup-runner",
        BACKUP_RUNNER_CATALOG_SCHEMA,
        WalSchedulesView,
    ),
    ReadModel("restore-runner-backups", "restore-runner", RESTORE_RUNNER_SCHEMA, BackupEventsView),
    # Its ``deliveries`` are the deliverer's queue (see the module docstring): only the
    # alerts' snapshots are compared and swapped.
    ReadModel(
        "alerts-webhook-alerts",
        "alerts",
        ALERT_WEBHOOKS_SCHEMA,
        AlertDeliveriesProjection,
        tables=("alerts",),
    ),
)

BY_NAME = {model.name: model for model in READ_MODELS}


def select(names: Sequence[str] | None) -> tuple[ReadModel, ...]:
    """The read models named (all when none), in registry order; KeyError names an unknown."""
    if not names:
        return READ_MODELS
    for name in names:
        if name not in BY_NAME:
            raise KeyError(name)
    wanted = set(names)
    return tuple(model for model in READ_MODELS if model.name in wanted)
