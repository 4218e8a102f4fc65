"""Event stores on a real PostgreSQL: instances of a service can start at the same moment."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from tidemark_platform.eventstore import EventStoreApplication

pytestmark = pytest.mark.integration


class StartingTogether(EventStoreApplication):
    name = "starting_together"


def test_instances_creating_the_same_event_store_at_once_all_start(
    create_database: Callable[..., str],
) -> None:
    # A fresh database and schema, as on the first start of a deployment with replicas.
    url = create_database("es")
    with ThreadPoolExecutor(max_workers=6) as pool:
        apps = list(pool.map(lambda _: StartingTogether.on_postgres(url, "fresh"), range(6)))
    try:
        assert len(apps) == 6
    finally:
        for app in apps:
            app.close()
