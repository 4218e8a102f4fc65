"""The store registry names what the services name: schemas, applications, tables."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tidemark_alerts.main import SCHEMA as ALERTS_SCHEMA
from tidemark_alerts.webhooks import SCHEMA as WEBHOOKS_SCHEMA
from tidemark_api_gateway.application import CATALOG_SCHEMA
from tidemark_backup_runner.main import SCHEMA as BACKUP_RUNNER_SCHEMA
from tidemark_cli.sources import SOURCES
from tidemark_contracts.services import SERVICES
from tidemark_restore_runner.main import SCHEMA as RESTORE_RUNNER_SCHEMA
from tidemark_scheduler.main import EVENTSTORE_SCHEMA as SCHEDULER_SCHEMA

UUID = uuid.uuid4()


def test_every_store_is_listed_under_the_schema_its_service_uses() -> None:
    assert [s.store for s in SOURCES] == [
        CATALOG_SCHEMA,
        SCHEDULER_SCHEMA,
        BACKUP_RUNNER_SCHEMA,
        RESTORE_RUNNER_SCHEMA,
        ALERTS_SCHEMA,
        WEBHOOKS_SCHEMA,
    ]
    assert {s.service for s in SOURCES} <= {spec.name for spec in SERVICES}


def test_each_application_and_its_table_name_are_the_real_ones() -> None:
    for source in SOURCES:
        application = source.application
        assert application.__name__ == source.application_path.rpartition(":")[2]
        assert application.name == source.application_name
        assert source.events_table == f"{application.name.lower()}_events"


def test_loading_the_cli_imports_no_service() -> None:
    # Every command pays for what app.py imports: the services' packages cost seconds.
    probe = (
        "import sys, tidemark_cli.app; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('tidemark_')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "['tidemark_cli', 'tidemark_contracts', 'tidemark_platform']"


def test_a_malformed_or_unreachable_database_url_never_prints_its_password() -> None:
    for url in (
        "user:s3cret-pw@localhost/db",  # not a URL at all: libpq quotes it whole
        "postgresql://u:pa%zzs3cret-pw@127.0.0.1:1/db",  # a bad percent escape
        "postgresql://u:s3cret-pw@127.0.0.1:1/db?connect_timeout=2",  # nothing listens
    ):
        done = subprocess.run(
            [sys.executable, "-m", "tidemark_cli", "events", "export", "--aggregate", str(UUID)],
            env={
                **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                "DATABASE_URL": url,
                "TIDEMARK_STATE_DIR": "/nonexistent",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, (url, done.stderr)
        assert "s3cret" not in done.stdout + done.stderr, (url, done.stderr)
        assert done.stderr.startswith("tidemark: database: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
