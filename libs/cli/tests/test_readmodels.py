"""The read-model registry and the rebuild's pure parts: which differences are rows written
ahead of their event, how a difference is shown, and the order events are replayed in."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from tidemark_api_gateway.application import CatalogApplication
from tidemark_api_gateway.domain import Project
from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_cli.readmodels import (
    BY_NAME,
    READ_MODELS,
    RowDifference,
    select,
)
from tidemark_cli.rebuild import StoreReader, difference_json, merged
from tidemark_cli.sources import BY_STORE
from tidemark_contracts.services import SERVICES
from tidemark_devstack.e2e import backup_request

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
ORG, PROJECT, ENV = (str(uuid.uuid4()) for _ in range(3))


def backup_row(status: str, **changes: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()),
        "organization_id": ORG,
        "project_id": PROJECT,
        "environment_id": ENV,
        "type": "db",
        "status": status,
        "label": None,
        "error": None,
    }
    return {**row, **changes}


def count_row(status: str, n: int) -> dict[str, Any]:
    return {
        "organization_id": ORG,
        "project_id": PROJECT,
        "environment_id": ENV,
        "status": status,
        "type": "db",
        "n": n,
    }


def count_key(status: str) -> dict[str, Any]:
    return {k: v for k, v in count_row(status, 0).items() if k != "n"}


def test_every_projection_a_service_runs_is_in_the_registry() -> None:
    """A view wired in a service (``ProjectionRunner(..., View(...))``, or the catalog that
    ``follow_catalog`` runs) but missing here would never be rebuilt."""
    wired: set[str] = set()
    for path in [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/platform/src/**/*.py")]:
        text = path.read_text()
        wired.update(re.findall(r"Runner\(\s*[\w.]+,\s*[\w.]+,\s*(\w+)\(", text))
    registered = {type(m.projection()).__name__ for m in READ_MODELS}
    assert {"BackupsView", "CatalogView", "WalSchedulesView", "BackupEventsView"} <= wired
    assert wired <= registered, wired - registered


def test_every_service_that_follows_the_catalog_has_its_catalog_view_registered() -> None:
    follows = {
        path.parts[path.parts.index("services") + 1]
        for path in ROOT.glob("services/*/src/**/main.py")
        if "follow_catalog(" in path.read_text()
    }
    registered = {m.service for m in READ_MODELS if m.name.endswith("-catalog")}
    # The gateway runs its catalog view itself (a ProjectionRunner of its own).
    assert follows | {"api-gateway"} == registered


def test_names_are_unique_and_each_read_model_is_fed_by_the_stores_publishing_its_topic() -> None:
    assert len(BY_NAME) == len(READ_MODELS)
    for model in READ_MODELS:
        stores = model.stores()
        assert stores, model.name
        topic = model.projection().topic
        for source in stores:
            (service,) = [s for s in SERVICES if s.name == source.service]
            assert topic in service.produces
            assert BY_STORE[source.store] is source
    assert [s.store for s in BY_NAME["gateway-alerts"].stores()] == ["alerts", "alert_webhooks"]
    # The webhook deliveries' queue is the deliverer's: never compared, never swapped.
    assert BY_NAME["alerts-webhook-alerts"].compared_tables() == ("alerts",)


def test_select_keeps_the_registry_order_and_refuses_an_unknown_name() -> None:
    chosen = select(["gateway-backups", "gateway-catalog"])
    assert [m.name for m in chosen] == ["gateway-catalog", "gateway-backups"]
    assert select(None) == READ_MODELS
    with pytest.raises(KeyError):
        select(["gateway-catalog", "nope"])


def test_a_row_on_one_side_lists_every_column_and_a_changed_row_only_the_changed() -> None:
    live = backup_row("failed", size_bytes=1)
    rebuilt = {**live, "status": "completed", "size_bytes": 12}
    changed = RowDifference("backups", {"id": live["id"]}, live, rebuilt)
    assert changed.side == "differs"
    assert changed.columns == ["size_bytes", "status"]
    only_live = RowDifference("backups", {"id": live["id"]}, live, None)
    assert only_live.side == "live-only"
    assert only_live.columns == sorted(live)
    assert RowDifference("backups", {}, None, rebuilt).side == "rebuilt-only"


def test_a_difference_never_shows_a_config_or_a_secret_reference() -> None:
    live = {"id": "d", "config": {"path": "/a"}, "name": "x", "signing_secret_ref": "secret:a"}
    rebuilt = {"id": "d", "config": {"path": "/b"}, "name": "y", "signing_secret_ref": "secret:b"}
    shown = difference_json(RowDifference("destinations", {"id": "d"}, live, rebuilt))
    assert shown["columns"] == ["config", "name", "signing_secret_ref"]
    assert shown["live"] == {
        "config": "<withheld>",
        "name": "x",
        "signing_secret_ref": "<withheld>",
    }
    assert "/a" not in str(shown)
    assert "secret:b" not in str(shown)


def test_a_pending_backup_row_and_its_count_are_not_yet_recorded() -> None:
    ahead = BY_NAME["gateway-backups"].ahead
    pending = backup_row("pending")
    differences = [
        RowDifference("backups", {"id": pending["id"]}, pending, None),
        RowDifference("backup_counts", count_key("pending"), count_row("pending", 1), None),
    ]
    assert ahead(differences) == {0, 1}


def test_a_deleting_status_written_ahead_moves_its_counts_and_nothing_else_is_ahead() -> None:
    ahead = BY_NAME["gateway-backups"].ahead
    completed = backup_row("completed")
    deleting = {**completed, "status": "deleting"}
    tampered = backup_row("completed", label="tampered")
    differences = [
        RowDifference("backups", {"id": completed["id"]}, deleting, completed),
        RowDifference(
            "backup_counts",
            count_key("completed"),
            count_row("completed", 4),
            count_row("completed", 5),
        ),
        RowDifference("backup_counts", count_key("deleting"), count_row("deleting", 1), None),
        RowDifference("backups", {"id": tampered["id"]}, tampered, {**tampered, "label": None}),
    ]
    assert ahead(differences) == {0, 1, 2}


def test_rows_and_counts_not_explained_by_a_row_ahead_are_differences() -> None:
    ahead = BY_NAME["gateway-backups"].ahead
    completed = backup_row("completed")
    pending = backup_row("pending")
    differences = [
        # A row whose status went back to pending is no pending request: it exists rebuilt.
        RowDifference(
            "backups", {"id": completed["id"]}, {**completed, "status": "pending"}, completed
        ),
        # A deleting row that differs in more than its status is a real difference.
        RowDifference(
            "backups",
            {"id": pending["id"]},
            {**completed, "status": "deleting", "error": "x"},
            completed,
        ),
        # Counts off by more than the rows ahead explain.
        RowDifference(
            "backup_counts", count_key("failed"), count_row("failed", 3), count_row("failed", 1)
        ),
    ]
    assert ahead(differences) == set()


def test_a_schedules_next_revision_an_alert_marked_read_and_a_pending_restore_are_ahead() -> None:
    schedule = {"environment_id": ENV, "revision": 2, "settings": {}}
    assert BY_NAME["gateway-schedules"].ahead(
        [
            RowDifference("schedules", {}, schedule, {**schedule, "revision": 1}),
            RowDifference("schedules", {}, schedule, None),
            RowDifference("schedules", {}, {**schedule, "revision": 1}, schedule),
            RowDifference("schedules", {}, None, schedule),
        ]
    ) == {0, 1}
    alert = {"id": "a", "read_at": None, "dismissed_at": None, "occurrences": 1}
    assert BY_NAME["gateway-alerts"].ahead(
        [
            RowDifference("alerts", {}, {**alert, "read_at": "2026-11-01T00:00:00+00:00"}, alert),
            RowDifference("alerts", {}, {**alert, "occurrences": 2}, alert),
            RowDifference(
                "alerts",
                {},
                {**alert, "read_at": "2026-11-01T00:00:00+00:00"},
                {**alert, "read_at": "2026-10-01T00:00:00+00:00"},
            ),
        ]
    ) == {0}
    restore = {"id": "r", "status": "pending"}
    assert BY_NAME["gateway-restores"].ahead(
        [
            RowDifference("restores", {}, restore, None),
            RowDifference("restores", {}, {**restore, "status": "running"}, None),
        ]
    ) == {0}
    assert (
        BY_NAME["scheduler-backups"].ahead(
            [RowDifference("backups", {}, backup_row("pending"), None)]
        )
        == set()
    )


def test_events_are_merged_across_stores_in_the_order_they_happened_each_store_in_its_own() -> None:
    catalog = CatalogApplication()
    runner = BackupRunnerApplication()
    expected: list[str] = []
    for i in range(3):
        catalog.register(
            Project(
                project_id=uuid.uuid4(),
                organization_id=uuid.uuid4(),
                name=f"p{i}",
                registered_at=T0,
            )
        )
        expected.append("catalog.ProjectRegistered")
        runner.request_backup(backup_request(), Tracking("backup.commands:0", i + 1))
        expected.append("backup.BackupRequested")
    readers = [
        StoreReader(BY_STORE["gateway_catalog"], 0, catalog),
        StoreReader(BY_STORE["backup_runner"], 2, runner),
    ]
    order = [envelope.message_type for _, envelope in merged(readers)]
    assert [t for t in order if t == "catalog.ProjectRegistered"] == [
        "catalog.ProjectRegistered"
    ] * 3
    assert order == expected
    assert [r.position for r in readers] == [
        catalog.recorder.max_notification_id(),
        runner.recorder.max_notification_id(),
    ]
    # Read again from where it stopped: nothing new, then only what came since.
    assert list(merged(readers)) == []
    runner.request_backup(backup_request(), Tracking("backup.commands:0", 9))
    assert [e.message_type for _, e in merged(readers)] == ["backup.BackupRequested"]
