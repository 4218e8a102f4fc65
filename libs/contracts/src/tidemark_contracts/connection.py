"""What a database target's fields may hold, so each reaches libpq as itself and nothing more.

libpq reads more into a value than its name says: a ``dbname`` (or, through pg_dump's
``--dbname``, any value handed on as one) that contains ``=`` or starts with
``postgres://`` is a whole connection string, whose ``host=``, ``user=``, ``service=``,
``passfile=`` or ``sslkey=`` override the fields beside it; a ``host`` that starts with
``/`` (or ``@``) is a Unix-socket directory on the runner's machine, and ``h1,h2`` is a list
of hosts. The gateway refuses such values with 422; the backup-runner refuses them again
before it connects, since a command can reach Kafka without the gateway. The reasons never
repeat the value (errors become events, kept forever).
"""

from __future__ import annotations

import ipaddress
import re

# A DNS name: dot-separated labels of letters, digits, '-' and '_' (container and compose
# names use it), neither starting nor ending with '-'; at most 253 characters.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# What an IPv6 literal is made of; ipaddress decides whether it is one.
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?")
# For documentation (an OpenAPI ``pattern``): what ``host_problem`` can accept.
HOST_PATTERN = (
    rf"^(?:{_LABEL}(?:\.{_LABEL})*\.?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?)$"
)
NAME_PATTERN = r"^(?![Pp][Oo][Ss][Tt][Gg][Rr][Ee][Ss](?:[Qq][Ll])?://)[^=\x00-\x1f\x7f]+$"

URI_PREFIXES = ("postgresql://", "postgres://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def host_problem(host: str) -> str | None:
    """Why ``host`` is no DNS name or IP address literal, or None when it is one."""
    reason = "must be a DNS name or an IP address (no socket directory, '/', '@', ',' or spaces)"
    if not host or len(host) > 253:
        return reason
    if DNS_NAME.fullmatch(host):
        return None
    if _IPV6_CHARS.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return reason
        return None
    return reason


def name_problem(name: str) -> str | None:
    """Why ``name`` (a database or role name) would not reach libpq as a plain name."""
    if not name:
        return "must not be empty"
    if _CONTROL.search(name):
        return "must not contain control characters"
    if "=" in name:
        return "must not contain '=' (libpq would read it as connection settings)"
    if name.lower().startswith(URI_PREFIXES):
        return "must not be a connection URI"
    return None


def connection_problems(host: str, port: int, dbname: str, user: str) -> dict[str, str]:
    """Each field that cannot be used, with why; empty when all can."""
    problems = {
        "host": host_problem(host),
        "port": None if 1 <= port <= 65535 else "must be between 1 and 65535",
        "dbname": name_problem(dbname),
        "user": name_problem(user),
    }
    return {field: reason for field, reason in problems.items() if reason is not None}
