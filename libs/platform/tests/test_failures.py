"""Which errors are transient (retried) and which permanent (the work ends at once)."""

from __future__ import annotations

import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NotLeaderForPartitionError
from eventsourcing.persistence import IntegrityError, OperationalError, ProgrammingError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ValidationError
from tidemark_platform.failures import is_transient


def validation_error() -> ValidationError:
    class Port(BaseModel):
        port: int

    try:
        Port.model_validate({"port": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validated")


def wrapped(error: Exception, outer: Exception) -> Exception:
    try:
        try:
            raise error
        except Exception as inner:
            raise outer from inner
    except Exception as exc:
        return exc
    raise AssertionError("not raised")


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("the connection is lost"),
        OperationalError("server closed the connection"),
        PoolTimeout("couldn't get a connection after 30 sec"),
        KafkaConnectionError("no broker"),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),  # aiokafka marks it retriable
        TimeoutError(),
        ConnectionRefusedError(111, "Connection refused"),
        # eventsourcing's generic wrapper of an unreachable server is read through its cause
        wrapped(psycopg.OperationalError("down"), RuntimeError("save failed")),
    ],
    ids=repr,
)
def test_an_unreachable_or_slow_database_or_kafka_is_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        validation_error(),
        IntegrityError("duplicate key"),
        ProgrammingError("relation does not exist"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        KeyError("backup"),
        PermissionError(13, "Permission denied"),
        RuntimeError("a bug"),
        wrapped(ValueError("bad"), RuntimeError("failed")),
    ],
    ids=repr,
)
def test_bad_data_refusals_and_bugs_are_permanent(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_transient(first)
