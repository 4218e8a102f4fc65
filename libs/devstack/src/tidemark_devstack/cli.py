"""The ``tidemark-dev`` command: the local Kafka and PostgreSQL, ``run`` (``make run``), and
``dlq`` (list and re-drive parked messages)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence

from tidemark_devstack import run
from tidemark_devstack.kafka import LocalKafka
from tidemark_devstack.paths import state_dir
from tidemark_devstack.postgres import LocalPostgres

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DATABASE_ENV = "DATABASE_URL"
# Exit status of "status" for a stopped server (the LSB "program is not running" code,
# as pg_ctl uses), so scripts can test it.
EXIT_NOT_RUNNING = 3


class _Service:
    """What the CLI needs of one local server, whatever it is."""

    def __init__(
        self,
        env_var: str,
        start: Callable[[], str],
        stop: Callable[[], None],
        running: Callable[[], str | None],
    ) -> None:
        self.env_var = env_var
        self.start = start
        self.stop = stop
        self.running = running


def _kafka() -> _Service:
    kafka = LocalKafka(state_dir() / "kafka")
    return _Service(KAFKA_ENV, kafka.start, kafka.stop, kafka.running_bootstrap)


def _postgres() -> _Service:
    postgres = LocalPostgres(state_dir() / "postgres")
    return _Service(DATABASE_ENV, postgres.start, postgres.stop, postgres.running_url)


_SERVICES: dict[str, Callable[[], _Service]] = {"kafka": _kafka, "postgres": _postgres}


def _run(name: str, action: str) -> int:
    service = _SERVICES[name]()
    if action == "start":
        preset = os.environ.get(service.env_var)
        if preset:
            # stdout keeps the KEY=VALUE shape (for eval or env files); the note goes to stderr.
            print(f"{service.env_var} is already set; not starting a local {name}", file=sys.stderr)
            print(f"{service.env_var}={preset}")
            return 0
        print(f"{service.env_var}={service.start()}")
        return 0
    if action == "stop":
        service.stop()
        print(f"local {name} stopped", file=sys.stderr)
        return 0
    value = service.running()
    if value is None:
        print(f"local {name}: stopped")
        return EXIT_NOT_RUNNING
    print(f"local {name}: running {service.env_var}={value}")
    return 0


def _kafka_bootstrap() -> str:
    """$KAFKA_BOOTSTRAP_SERVERS, else the local Kafka when it runs."""
    preset = os.environ.get(KAFKA_ENV)
    if preset:
        return preset
    running = LocalKafka(state_dir() / "kafka").running_bootstrap()
    if running is None:
        raise RuntimeError(f"{KAFKA_ENV} is not set and the local Kafka is not running")
    return running


def _dlq(args: argparse.Namespace) -> int:
    from tidemark_platform import dead_letters

    bootstrap = _kafka_bootstrap()
    if args.action == "list":
        topics = (
            [dead_letters.dlq_name(args.topic)]
            if args.topic
            else asyncio.run(dead_letters.dead_letter_topics(bootstrap))
        )
        for topic in topics:
            for record in asyncio.run(dead_letters.list_parked(bootstrap, topic)):
                print(json.dumps(record.summary(), separators=(",", ":")))
        return 0
    if not args.all and not args.offset:
        print("tidemark-dev: dlq redrive needs --offset N (repeatable) or --all", file=sys.stderr)
        return 2
    topic = dead_letters.dlq_name(args.topic)
    offsets = None if args.all else args.offset
    redriven = asyncio.run(dead_letters.redrive(bootstrap, topic, offsets))
    for record in redriven:
        print(
            f"re-drove {topic} offset {record.offset} to {record.original_topic}",
            file=sys.stderr,
        )
    print(f"{len(redriven)} record(s) re-driven from {topic}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidemark-dev",
        description=(
            "Local Kafka (KRaft) and PostgreSQL for Tidemark development, kept under "
            "<repo>/.state (or $TIDEMARK_STATE_DIR)."
        ),
    )
    services = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name in _SERVICES:
        sub = services.add_parser(name, help=f"manage the local {name}")
        sub.add_argument("action", choices=["start", "stop", "status"])
    services.add_parser(
        "run",
        help="run everything with a demo organization until Ctrl-C (make run)",
        description=(
            "Start PostgreSQL and Kafka (local ones unless DATABASE_URL / "
            "KAFKA_BOOTSTRAP_SERVERS are set), a demo database, every service and a demo "
            "project; print a development token and example requests; stop it all on "
            "Ctrl-C or SIGTERM. TIDEMARK_HTTP_PORT (default 8000) and "
            "TIDEMARK_JWT_SECRET (default: one generated and kept in the state "
            "directory) configure the gateway."
        ),
    )
    dlq = services.add_parser(
        "dlq",
        help="list and re-drive parked (dead-letter) messages",
        description=(
            "Messages that could never be handled are parked on <topic>.dlq with the "
            "reason in their headers. 'list' prints one JSON line per parked record "
            "(reason, error, service, attempts, original topic/partition/offset, and "
            "whether it was re-driven; never the value). 'redrive' publishes records "
            "back to their original topic with their original key, value and headers, "
            "and records that it did: re-driving the same records again does nothing. "
            "Kafka is $KAFKA_BOOTSTRAP_SERVERS, else the local one."
        ),
    )
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the parked records as JSON lines")
    listing.add_argument("--topic", help="a topic (or its .dlq); default: every dlq topic")
    redrive = actions.add_parser("redrive", help="publish parked records back")
    redrive.add_argument("--topic", required=True, help="the topic (or its .dlq)")
    which = redrive.add_mutually_exclusive_group()
    which.add_argument(
        "--offset", type=int, action="append", help="the dlq offset to re-drive (repeatable)"
    )
    which.add_argument("--all", action="store_true", help="every record not re-driven yet")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.service == "run":
        return run.main()
    try:
        if args.service == "dlq":
            return _dlq(args)
        return _run(args.service, args.action)
    except (RuntimeError, LookupError, ValueError) as exc:
        print(f"tidemark-dev: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
