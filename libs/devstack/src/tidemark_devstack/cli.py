"""The ``tidemark-dev`` command: the local Kafka and PostgreSQL, and ``run`` (``make run``)."""

from __future__ import annotations

import argparse
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
            "Ctrl-C or SIGTERM. TIDEMARK_API_GATEWAY_HTTP_PORT (default 8000) and "
            "TIDEMARK_API_GATEWAY_JWT_SECRET (default: one generated and kept in the state "
            "directory) configure the gateway."
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.service == "run":
        return run.main()
    try:
        return _run(args.service, args.action)
    except RuntimeError as exc:
        print(f"tidemark-dev: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
