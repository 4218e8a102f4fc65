"""`tidemark dlq list | redrive`: the records parked on dead-letter topics, on Kafka directly.

A record that could never be handled is parked on ``<topic>.dlq`` with the reason in its
headers (``tidemark_platform.dead_letters``). ``list`` shows every parked record without
its value (a value may hold what must not be shown) and whether it was re-driven;
``redrive`` publishes records back to their original topic, each at most once ever (the
redrive group's commit records what was re-driven), so running it twice does nothing the
second time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
)
from tidemark_contracts.topics import DLQ_SUFFIX
from tidemark_platform import dead_letters

from tidemark_cli import config, output
from tidemark_cli.errors import CliError
from tidemark_cli.republish import quiet_kafka_logs

app = typer.Typer(
    help="Parked (dead-letter) messages: list them, re-drive them to their topic.",
    no_args_is_help=True,
)

ERROR_CHARS = 80
"""How much of a parked record's error a table row shows (``--json`` has all of it)."""

RETRY_SECONDS = 20.0
"""How long Kafka's passing answers are waited out (a fresh cluster has no group
coordinator until its offsets topic exists: the redrive group is often its first group)."""

T = TypeVar("T")


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            return await call()
        except (
            GroupCoordinatorNotAvailableError,
            CoordinatorLoadInProgressError,
            NotCoordinatorForGroupError,
        ):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


async def _dead_letter_topics(bootstrap: str) -> list[str]:
    """The dead-letter topics on Kafka (through the admin client, which a failed start
    leaves closed, unlike ``dead_letters.dead_letter_topics``'s consumer)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="tidemark-dlq", request_timeout_ms=15_000
    )
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(n for n in names if n.endswith(DLQ_SUFFIX))


async def _existing_dlq(bootstrap: str, topic: str) -> str:
    """``topic``'s dead-letter topic (``topic`` may name either), if Kafka has it."""
    name = dead_letters.dlq_name(topic)
    existing = await _dead_letter_topics(bootstrap)
    if name not in existing:
        # The name typed is not repeated; the ones that exist are.
        known = ", ".join(existing) if existing else "none"
        raise CliError(f"no such dead-letter topic on Kafka (there are: {known})")
    return name


async def _list(bootstrap: str, topic: str | None) -> list[dead_letters.ParkedRecord]:
    topics = (
        [await _existing_dlq(bootstrap, topic)] if topic else await _dead_letter_topics(bootstrap)
    )
    records: list[dead_letters.ParkedRecord] = []
    for name in topics:
        records.extend(
            await _retrying(functools.partial(dead_letters.list_parked, bootstrap, name))
        )
    return records


@app.command("list")
def list_(
    topic: Annotated[
        str | None,
        typer.Option(help="one topic (or its .dlq); default: every dead-letter topic"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array")] = False,
) -> None:
    """List parked records: where they came from, why, and whether they were re-driven."""
    bootstrap = config.discover().need_kafka()
    quiet_kafka_logs()
    records = asyncio.run(_list(bootstrap, topic))
    if as_json:
        output.print_json([record.summary() for record in records])
        return
    output.print_table(
        (
            "dlq topic",
            "offset",
            "re-driven",
            "original topic",
            "reason",
            "service",
            "parked at",
            "error",
        ),
        (
            (
                s["dlqTopic"],
                s["offset"],
                "yes" if s["redriven"] else "no",
                s["originalTopic"],
                s["reason"],
                s["service"],
                s["parkedAt"],
                _short(s["error"]),
            )
            for s in (record.summary() for record in records)
        ),
        title=f"{len(records)} parked record(s)",
    )


def _short(error: Any) -> str:
    text = "" if error is None else str(error)
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


async def _redrive(
    bootstrap: str, topic: str, offsets: list[int] | None
) -> tuple[str, list[dead_letters.ParkedRecord]]:
    name = await _existing_dlq(bootstrap, topic)
    try:
        return name, await _retrying(
            functools.partial(dead_letters.redrive, bootstrap, name, offsets)
        )
    except (LookupError, ValueError) as exc:
        # Their messages name the topic and offsets, never a record's content.
        raise CliError(str(exc)) from None


@app.command("redrive")
def redrive(
    topic: Annotated[str, typer.Argument(help="the topic (or its .dlq)", show_default=False)],
    offset: Annotated[
        list[int] | None,
        typer.Option(
            "--offset",
            help="re-drive only this dead-letter offset (repeatable); default: every record "
            "not re-driven before",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Publish parked records back to their original topic (each at most once, ever)."""
    if offset is not None and any(o < 0 for o in offset):
        raise CliError("--offset: offsets are 0 or more", code=2)
    bootstrap = config.discover().need_kafka()
    quiet_kafka_logs()
    name, redriven = asyncio.run(_redrive(bootstrap, topic, offset or None))
    if as_json:
        output.print_json(
            {
                "dlqTopic": name,
                "redriven": len(redriven),
                "records": [
                    {"offset": r.offset, "originalTopic": r.original_topic} for r in redriven
                ],
            }
        )
        return
    for record in redriven:
        output.stderr.print(f"re-drove {name} offset {record.offset} to {record.original_topic}")
    output.stdout.print(f"{len(redriven)} record(s) re-driven from {name}")
