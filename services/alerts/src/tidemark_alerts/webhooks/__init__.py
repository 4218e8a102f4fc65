"""Placeholder of the webhooks part (another engineer's; the merge takes theirs): the
alerts core wires ``install_webhooks`` in main.py and this does nothing until then."""

from __future__ import annotations

from typing import Any


def install_webhooks(runtime: Any, settings: Any, broker: Any) -> None:
    return None
